"""The folder the worker processes of one server share.

gunicorn forks several workers; what must be true of the pod as a whole (metrics summed
over workers, drift counts, readiness of every worker) lives in files under one folder
that the master creates, empty, before the first fork. Workers find it through
`Settings.shared_dir`; a process that serves alone (tests, the functions-framework
target) has none and keeps such state in memory.

Workers write their counts through memory maps (func/tallies.py, prometheus-client's
files). A page of a mapped file gets its storage when it is first written, and on a full
file system (the folder is an in-memory emptyDir on a pod) that write is a SIGBUS that
kills the worker, and its replacement, and the next. So such files are allocated when they
are made (`allocate`): a full folder is then an error the worker can report.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# prometheus-client's multiprocess mode reads this variable when it is first imported,
# so it must be set before any worker imports it.
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"
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
    (func/metrics.py merge_dead), so a reader sees those counts once, never twice or not
    at all. Shared holders may nest (Linux grants a shared flock while an exclusive one
    waits). A process that serves alone has nothing to lock."""
    if folder is None:
        yield
        return
    fd = os.open(Path(folder) / _COUNTS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # and with it the lock


def create(base: str | None = None) -> Path:
    """A new, empty folder for one server's shared state (under `base`, or the system's
    temporary folder), with its Prometheus subfolder exported for the workers."""
    root = Path(tempfile.mkdtemp(prefix="warmstart-", dir=base))
    prometheus = root / "prometheus"
    prometheus.mkdir()
    os.environ[PROMETHEUS_ENV] = str(prometheus)
    return root


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
