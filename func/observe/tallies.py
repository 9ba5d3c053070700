"""Counts shared by every worker of a server: one float64 vector per worker process, in
a file of the shared folder, summed over all the workers' files when read.

This is prometheus-client's multiprocess design (a file per process, summed at scrape)
with a fixed layout instead of one keyed value per series. It is what the per-request
series and the drift counts use because it is cheap enough to run on every request:
prometheus-client takes a lock, a getpid() and a struct write per value, 1.1 us per
counter increment and 2.1 us per histogram observation here, 15 us for the dozen values
a prediction request moves; a slot of a memoryview costs about 0.05 us.

A worker's counts outlive it (what it served was served); `live()` sums only the
files of processes still running, for gauges such as requests in flight. When a worker
dies, the master adds its files into one file per vector (`<name>-dead.f64`,
`merge_dead`), so a pod that lost many workers reads as few files as one that lost none.
A process that serves alone (no shared folder) keeps its vector in memory.

These files, and prometheus-client's, are written through memory maps. A page of a
mapped file gets its storage when it is first written, and on a full file system (the
shared folder is an in-memory emptyDir on a pod) that write is a SIGBUS that kills the
worker, and its replacement, and the next. So such files are allocated when they are
made (`allocate`): a full folder is then an error the worker can report.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_COUNTS_LOCK = "counts.lock"


class NoRoom(Exception):
    """The shared folder has no room for a file a worker must write."""


def allocate(path: Path, size: int) -> None:
    """Make `path` a file of `size` bytes with its storage allocated (zeros; a file there
    already keeps its bytes), so writing it through a memory map cannot fault; NoRoom if
    the file system is full."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        os.unlink(path)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise NoRoom(
            f"no room for {size:,} bytes of {path.name} in the shared folder {path.parent} ({exc.strerror}); "
            "give SHARED_DIR's volume more room (knative/base/service.yaml sizes /tmp)"
        ) from None
    finally:
        os.close(fd)


@contextmanager
def counts_locked(folder: str | Path | None, exclusive: bool = False) -> Iterator[None]:
    """Hold the folder's lock on the workers' count files: shared to read them (a scrape,
    a drift window), exclusive for the master to fold a dead worker's files into one
    (func/observe/metrics.py merge_dead), so a reader sees those counts once, never twice
    or not at all. Shared holders may nest (Linux grants a shared flock while an
    exclusive one waits). A process that serves alone has nothing to lock."""
    if folder is None:
        yield
        return
    fd = os.open(Path(folder) / _COUNTS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # and with it the lock


class Tallies:
    def __init__(self, folder: str | Path | None, name: str, size: int) -> None:
        self.name, self.size = name, size
        self.lock = threading.Lock()
        self._folder = Path(folder) if folder else None
        if self._folder is None:
            self.array = np.zeros(size)
        else:
            path = self._folder / f"{name}-{os.getpid()}.f64"
            allocate(path, size * 8)  # NoRoom on a full folder, not a SIGBUS later
            with path.open("r+b") as fh:
                self._map = mmap.mmap(fh.fileno(), size * 8)
            self.array = np.frombuffer(self._map, dtype=np.float64)
        # Single slots through a memoryview: ten times cheaper than NumPy's scalar indexing.
        self.slots = memoryview(self.array).cast("B").cast("d")

    def _files(self) -> list[Path]:
        assert self._folder is not None
        return sorted(self._folder.glob(f"{self.name}-*.f64"))

    def total(self) -> np.ndarray:
        """Every worker's counts added up, dead workers' included."""
        if self._folder is None:
            return self.array.copy()
        total = np.zeros(self.size)
        with counts_locked(self._folder):
            for path in self._files():
                total += _read(path, self.size)
        return total

    def live(self) -> np.ndarray:
        """The counts of workers still running, added up."""
        if self._folder is None:
            return self.array.copy()
        total = np.zeros(self.size)
        with counts_locked(self._folder):
            for path in self._files():
                pid = path.stem.rsplit("-", 1)[1]
                if pid != DEAD and _alive(int(pid)):
                    total += _read(path, self.size)
        return total


DEAD = "dead"


def merge_dead(folder: Path, pid: int) -> None:
    """Add the vectors of the dead worker `pid` into their `<name>-dead.f64` and remove
    them (in the master, under counts_locked(exclusive=True)). NoRoom leaves them as they
    are, still counted."""
    for path in folder.glob(f"*-{pid}.f64"):
        name = path.stem.rsplit("-", 1)[0]
        counts = np.fromfile(path, dtype=np.float64)
        dead = folder / f"{name}-{DEAD}.f64"
        if dead.exists():
            earlier = np.fromfile(dead, dtype=np.float64)
            if len(earlier) != len(counts):
                continue  # not the same vector: leave both to be read as they are
            counts += earlier
        draft = dead.with_suffix(".draft")
        allocate(draft, counts.nbytes)
        with draft.open("r+b") as fh:
            fh.write(counts.tobytes())
        draft.replace(dead)
        path.unlink()


def _read(path: Path, size: int) -> np.ndarray:
    data = np.fromfile(path, dtype=np.float64)
    return data if len(data) == size else np.zeros(size)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
