"""Large arrays between the pool's processes go through files that both sides map, never
through the pipes.

Pickling a 40 MB model into a pipe copies it four times (pickle buffer, pipe, unpickle
buffer, array) per site and per direction, and the parent then holds every reply that
arrives before its turn in request order. Here a message is still pickled, but each large
array in it is written once to a file in the fleet's private directory and pickled as a
small handle; the receiver maps the file copy-on-write (``mmap.ACCESS_COPY``), so reading
costs no copy and an accidental in-place write stays private to the receiver:

- the parent writes the global model once per phase, however many sites and workers read
  it; every worker maps the same page-cache pages;
- a worker writes each update once; the parent maps it when the reply arrives and unlinks
  the file at once, so the update lives exactly as long as the reply object. A reply that
  arrived early waits as an untouched mapping: its pages sit in the kernel's page cache
  (written back to disk under memory pressure), not in any process's memory, until the
  aggregator reads it in its turn. This is what keeps a round's memory independent of the
  number of sites in it.

The files are plain data between processes of one run on one machine, in a directory only
this user can read (``tempfile.mkdtemp``); nothing here ever comes from the network.
The directory follows ``TMPDIR``: where that is a RAM-backed tmpfs, replies waiting for
their turn are held in RAM by the kernel instead of the page cache of a disk.
"""

from __future__ import annotations

import io
import itertools
import mmap
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Arrays below this many bytes are cheaper to pickle inline than to map.
THRESHOLD = 1 << 20

# (path, dtype string, shape, whether the receiver owns and deletes the file)
Handle = tuple[str, str, tuple[int, ...], bool]
Put = Callable[[np.ndarray], Handle]


def attach(
    path: str, dtype: str, shape: tuple[int, ...], owned: bool, read_only: bool = False
) -> np.ndarray:
    """The array behind a handle, mapped copy-on-write (or read-only); an owned file is
    unlinked at once (the mapping keeps its pages until the array is freed)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if size != expected:
            raise ValueError(f"bulk file {path} holds {size} bytes, {expected} expected")
        access = mmap.ACCESS_READ if read_only else mmap.ACCESS_COPY
        mapped = mmap.mmap(f.fileno(), 0, access=access)
    if owned:
        os.unlink(path)
    return np.frombuffer(mapped, dtype=np.dtype(dtype)).reshape(shape)


def _bulky(obj: object) -> bool:
    return (
        type(obj) is np.ndarray
        and obj.nbytes >= THRESHOLD
        and obj.dtype.kind in "biufc"
        and not obj.dtype.fields
    )


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, put: Put) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._put = put

    def reducer_override(self, obj: Any) -> Any:
        if _bulky(obj):
            return attach, self._put(obj)
        return NotImplemented


def dumps(obj: Any, put: Put) -> bytes:
    """Pickle ``obj`` with every large plain array in it replaced by ``put(array)``."""
    buf = io.BytesIO()
    _Pickler(buf, put).dump(obj)
    return buf.getvalue()


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def write_array(path: Path, array: np.ndarray) -> None:
    with open(path, "xb") as f:
        f.write(np.ascontiguousarray(array).data)


class ReplyWriter:
    """A worker's side: each large array of a reply becomes a file the parent will own."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._names = itertools.count()

    def put(self, array: np.ndarray) -> Handle:
        path = self._dir / f"reply-{os.getpid()}-{next(self._names)}.bin"
        write_array(path, array)
        return str(path), array.dtype.str, tuple(array.shape), True


class Broadcast:
    """The parent's side for one phase: each distinct large array is written once, however
    many messages (sites) and batches (workers) carry it; ``close`` removes the files, which
    workers that still map them keep reading until they let go."""

    def __init__(self, directory: Path, tag: int, shared: SharedModel | None = None) -> None:
        self._dir = directory
        self._tag = tag
        self._written: dict[int, tuple[np.ndarray, Handle]] = {}
        self._shared = shared

    def put(self, array: np.ndarray) -> Handle:
        if self._shared is not None and array is self._shared.array:
            return self._shared.handle  # already in a file: nothing to write
        known = self._written.get(id(array))
        if known is not None:
            return known[1]
        path = self._dir / f"phase-{self._tag}-{len(self._written)}.bin"
        write_array(path, array)
        handle: Handle = (str(path), array.dtype.str, tuple(array.shape), False)
        self._written[id(array)] = (array, handle)  # the array is kept so its id stays unique
        return handle

    def dumps(self, obj: Any) -> bytes:
        return dumps(obj, self.put)

    def close(self) -> None:
        for _, (path, *_rest) in self._written.values():
            Path(path).unlink(missing_ok=True)
        self._written.clear()


class SharedModel:
    """The global model kept in a file that the parent maps read-only and every worker
    maps too: one copy in the page cache for all of them, and no copy written per phase."""

    def __init__(self, directory: Path, number: int, weights: np.ndarray) -> None:
        path = directory / f"model-{number}.bin"
        write_array(path, weights)
        self.handle: Handle = (str(path), weights.dtype.str, tuple(weights.shape), False)
        self.array = attach(*self.handle, read_only=True)

    def release(self) -> None:
        """Remove the file; whoever still maps it (the last round's state) keeps reading."""
        Path(self.handle[0]).unlink(missing_ok=True)
