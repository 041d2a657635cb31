"""Large arrays between the pool's processes go through files that both sides map, never
through the pipes.

Pickling a 40 MB model into a pipe copies it four times (pickle buffer, pipe, unpickle
buffer, array) per site and per direction, and the parent then holds every reply that
arrives before its turn in request order. Here a message is still pickled, but each large
array in it is written once to a file in the fleet's private directory and pickled as a
small handle (pickle's persistent ids); the receiver maps the file copy-on-write, so
reading costs no copy and an accidental in-place write stays private to the receiver:

- the parent keeps the global model in a file it maps read-only (``SharedModel``), and
  every worker maps the same page-cache pages: one copy for all of them, none per phase;
- a worker writes each update once, into one of a few reply files of its own that it
  reuses (``ReplySlots``): overwriting a file's pages costs a memory copy, whereas a new
  file costs a page allocation per 4 KiB, several times more. The parent maps the reply
  when it arrives and frees the slot when the last array using it is gone, so a reply
  lives exactly as long as the reply object. When all of a worker's slots are taken
  (replies waiting for their turn), it writes a new file that the parent unlinks on
  arrival: such a reply waits as an untouched mapping whose pages sit in the kernel's
  page cache of the temp directory's disk (written back and dropped under memory
  pressure), in no process's memory, until the aggregator reads it in its turn. This is
  what keeps a round's memory independent of the number of sites in it.

The files are plain data between processes of one run on one machine, in a directory only
this user can read (``tempfile.mkdtemp``, which follows ``TMPDIR``); nothing here ever
comes from the network.
"""

from __future__ import annotations

import io
import itertools
import mmap
import os
import pickle
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from consortia.core.spec import byte_view

# Arrays below this many bytes are cheaper to pickle inline than to map.
THRESHOLD = 1 << 20

# (path, dtype string, shape, kind): kind is "mapped" (left in place), "owned" (the
# receiver unlinks it) or "slot:<slots name>:<index>" (a reused reply file).
Handle = tuple[str, str, tuple[int, ...], str]
Put = Callable[[np.ndarray], Handle]


def _bulky(obj: object) -> bool:
    return (
        type(obj) is np.ndarray
        and obj.nbytes >= THRESHOLD
        and obj.dtype.kind in "biufc"
        and not obj.dtype.fields
    )


def _map(
    path: str, dtype: str, shape: tuple[int, ...], access: int
) -> tuple[mmap.mmap, np.ndarray]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if size != expected:
            raise ValueError(f"bulk file {path} holds {size} bytes, {expected} expected")
        mapped = mmap.mmap(f.fileno(), 0, access=access)
    return mapped, np.frombuffer(mapped, dtype=np.dtype(dtype)).reshape(shape)


def write_array(path: Path, array: np.ndarray) -> None:
    """Write ``array``'s bytes over ``path`` from offset 0: an existing file's pages are
    reused (no allocation), and the file is cut to the array's size."""
    data = byte_view(np.ascontiguousarray(array))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, put: Put) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._put = put

    def persistent_id(self, obj: Any) -> Handle | None:
        return self._put(obj) if _bulky(obj) else None


def dumps(obj: Any, put: Put) -> bytes:
    """Pickle ``obj`` with every large plain array in it replaced by ``put(array)``."""
    buf = io.BytesIO()
    _Pickler(buf, put).dump(obj)
    return buf.getvalue()


class ReplySlots:
    """A worker's few reusable reply files and, in memory shared with the parent (made
    before the worker is forked), which of them are taken. The worker takes a free slot;
    the parent frees it once nothing maps it any more."""

    def __init__(self, directory: Path, name: str, count: int = 3) -> None:
        self.name = name
        self.paths = [directory / f"slot-{name}-{i}.bin" for i in range(count)]
        # anonymous and shared: inherited by the fork (one byte more: mmap needs a size)
        self._taken = mmap.mmap(-1, count + 1)

    def take(self) -> int | None:
        for i in range(len(self.paths)):
            if self._taken[i] == 0:
                self._taken[i] = 1
                return i
        return None

    def release(self, index: int) -> None:
        self._taken[index] = 0


class Reader:
    """Unpickles messages, mapping each large array's file: the parent's reader knows the
    workers' reply slots, so that a slot is freed when its array is gone."""

    def __init__(self, slots: Mapping[str, ReplySlots] | None = None) -> None:
        self._slots = slots if slots is not None else {}

    def loads(self, data: bytes) -> Any:
        unpickler = pickle.Unpickler(io.BytesIO(data))
        unpickler.persistent_load = self._attach  # type: ignore[method-assign]
        return unpickler.load()

    def _attach(self, handle: Handle) -> np.ndarray:
        path, dtype, shape, kind = handle
        mapped, array = _map(path, dtype, tuple(shape), mmap.ACCESS_COPY)
        if kind == "owned":
            os.unlink(path)
        elif kind.startswith("slot:"):
            _, name, index = kind.split(":")
            weakref.finalize(mapped, self._slots[name].release, int(index))
        return array


class ReplyWriter:
    """A worker's side: each large array of a reply goes into a free slot, else into a new
    file that the parent will own."""

    def __init__(self, directory: Path, slots: ReplySlots) -> None:
        self._dir = directory
        self._slots = slots
        self._names = itertools.count()

    def put(self, array: np.ndarray) -> Handle:
        index = self._slots.take()
        if index is None:
            path = self._dir / f"reply-{os.getpid()}-{next(self._names)}.bin"
            kind = "owned"
        else:
            path = self._slots.paths[index]
            kind = f"slot:{self._slots.name}:{index}"
        write_array(path, array)
        return str(path), array.dtype.str, tuple(array.shape), kind


class SharedModel:
    """The global model in a file that the parent maps read-only and every worker maps
    too: one copy in the page cache for all of them, and none written per phase. The
    file is reused for a later model once the parent's last array of this one is gone."""

    def __init__(self, path: Path, mapped: mmap.mmap, array: np.ndarray) -> None:
        self.path = path
        self.handle: Handle = (str(path), array.dtype.str, tuple(array.shape), "mapped")
        self._array = weakref.ref(array)  # weak: the run's state decides how long it lives
        self._mapped = weakref.finalize(mapped, lambda: None)  # alive while anything maps it

    @classmethod
    def write(cls, path: Path, weights: np.ndarray) -> tuple[SharedModel, np.ndarray]:
        write_array(path, weights)
        mapped, array = _map(str(path), weights.dtype.str, weights.shape, mmap.ACCESS_READ)
        return cls(path, mapped, array), array

    def holds(self, array: object) -> bool:
        return array is self._array()

    @property
    def in_use(self) -> bool:
        return self._mapped.alive


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
        if self._shared is not None and self._shared.holds(array):
            return self._shared.handle  # already in a file: nothing to write
        known = self._written.get(id(array))
        if known is not None:
            return known[1]
        path = self._dir / f"phase-{self._tag}-{len(self._written)}.bin"
        write_array(path, array)
        handle: Handle = (str(path), array.dtype.str, tuple(array.shape), "mapped")
        self._written[id(array)] = (array, handle)  # the array is kept so its id stays unique
        return handle

    def dumps(self, obj: Any) -> bytes:
        return dumps(obj, self.put)

    def close(self) -> None:
        for _, (path, *_rest) in self._written.values():
            Path(path).unlink(missing_ok=True)
        self._written.clear()
