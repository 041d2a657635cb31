"""Peak memory of a process, for the run summary.

The kernel keeps each process's high-water mark of resident memory (``VmHWM``), so the
peak is exact however short it was, with no sampling thread. It is RSS: pages shared
between the server and its site workers (the model file they all map) count in each.
"""

from __future__ import annotations

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
