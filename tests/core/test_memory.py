import os
import subprocess
import sys
import textwrap

import pytest

from consortia.core.memory import keep_freed_memory

# Runs in a fresh interpreter: the allocator's settings are process-wide, and glibc's
# ``mallinfo2`` says where a block came from (``hblkhd``: bytes in mmapped blocks) and
# what the heap keeps (``arena``: bytes of heap, in use or free).
_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from consortia.core.memory import keep_freed_memory

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    SIZE = 8 << 20

    def probe():
        start = libc.mallinfo2().arena
        blocks = [libc.malloc(SIZE) for _ in range(3)]
        mapped = libc.mallinfo2().hblkhd
        for block in reversed(blocks):
            libc.free(block)
        return mapped >= SIZE, libc.mallinfo2().arena - start >= 2 * SIZE

    before = probe()
    tuned = keep_freed_memory()
    print(before, tuned, probe())
    """
)


def _probe(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="glibc's allocator settings exist only on glibc",
)


@glibc_only
def test_freed_blocks_stay_in_the_heap_once_tuned():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    # Untuned, 8 MiB blocks are mapped from the kernel and their memory goes back on free;
    # tuned, they come from the heap, which keeps them for the next ones.
    assert _probe(env) == "(True, False) True (False, True)"


@glibc_only
def test_a_users_own_glibc_settings_win():
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="131072")
    assert _probe(env) == "(True, False) False (True, False)"


def test_returns_false_where_nothing_changed(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
