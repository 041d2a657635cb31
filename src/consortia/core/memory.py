"""Memory of a process: its peak, for the run summary, and how its allocator reuses it.

The kernel keeps each process's high-water mark of resident memory (``VmHWM``), so the
peak is exact however short it was, with no sampling thread. It is RSS: pages shared
between the server and its site workers (the model file they all map) count in each.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

MIB = 1 << 20


def peak_rss_bytes(pid: int | None = None) -> int | None:
    """The peak resident set of ``pid`` (default: this process); None where unknown."""
    if pid is None and sys.platform != "linux":
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB else
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused once freed: gRPC's and the
# codec's per-message buffers (a few MiB each) and anything else short of a large model.
HEAP_BLOCK_LIMIT = 32 << 20
# Free memory at the top of a heap that is kept rather than given back to the kernel.
KEPT_FREE_BYTES = 256 << 20
_MALLOC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of returning it to the kernel.

    Why: a gRPC round moves models in messages of a few MiB, and each one passes through
    fresh buffers (gRPC's receive buffer, the codec's frame). By default glibc gives
    freed memory at the top of a heap back to the kernel beyond a small threshold, and
    memory taken back from the kernel arrives as new pages that the kernel zeroes on
    first touch: that zeroing was about a sixth of all CPU in a round of ten sites,
    besides training's own (profiled with perf). Raising glibc's two thresholds keeps
    those buffers in the heap, at the price of up to ``KEPT_FREE_BYTES`` of free memory
    a heap may hold on to.

    Called by ``consortia server`` and ``consortia client`` (processes that exist for
    the federation), never on import. Does nothing, and returns False, on another C
    library (no ``mallopt``) or when the user chose thresholds through glibc's own
    environment variables (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
    ``GLIBC_TUNABLES``).
    """
    if not sys.platform.startswith("linux") or any(v in os.environ for v in _MALLOC_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT) and mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_BYTES)
    )
