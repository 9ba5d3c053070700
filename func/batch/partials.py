"""The temporary file a batch job writes before renaming it over its output.

Each attempt writes `.<output name>.<event digest>.<random>.partial` beside the output.
Knative may deliver one event twice at once (a retry while the first attempt still
runs, perhaps on another pod), so a job removes only partial files whose attempt is
gone, whichever event or output they belong to:

- on local and mounted filesystems an attempt holds an exclusive flock on its file
  until it has renamed it; the kernel drops the lock when the process dies, so an
  unlocked partial file belongs to a dead attempt and goes at once;
- object stores have no locks: there a partial file goes once nothing has written to
  it for STALE_AFTER_S.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import time
import uuid
from collections.abc import Iterator
from typing import Any

SUFFIX = ".partial"
# `.<name>.<16 hex digits of the event id's digest>.<8 random hex digits>.partial`
_PATTERN = ".*." + "?" * 16 + "." + "?" * 8 + SUFFIX
# A running attempt writes its file at least once per chunk (seconds apart), and Knative
# cuts a request after at most max-revision-timeout-seconds (600 s by default).
STALE_AFTER_S = 15 * 60


@contextlib.contextmanager
def partial_file(fs: Any, out_path: str, job_id: str) -> Iterator[str]:
    """A fresh partial file name beside `out_path`, this attempt's until the block ends;
    abandoned ones in the folder are removed first, and this one too if the block fails."""
    parent, name = posixpath.split(out_path)
    remove_abandoned(fs, parent)
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:16]
    path = f"{parent}/.{name}.{digest}.{uuid.uuid4().hex[:8]}{SUFFIX}"
    lock = _create_locked(path) if _local(fs) else None
    try:
        yield path
    except BaseException:
        if fs.exists(path):
            fs.rm(path)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def remove_abandoned(fs: Any, folder: str) -> None:
    for path in fs.glob(f"{folder}/{_PATTERN}"):
        if _abandoned(fs, path):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path)


def _create_locked(path: str) -> int:
    """Create `path` already locked: the file is made and locked under a name the
    cleanup does not match, then renamed, so no job ever sees it unlocked."""
    staging = path.removesuffix(SUFFIX) + ".new"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(staging, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    return fd


def _local(fs: Any) -> bool:
    """fsspec's local filesystem (checked by protocol: importing fsspec costs cold start)."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol


def _abandoned(fs: Any, path: str) -> bool:
    if _local(fs):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False  # renamed into place by its attempt since the glob
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return True
    try:
        return time.time() - fs.modified(path).timestamp() > STALE_AFTER_S
    except (NotImplementedError, OSError):
        return False
