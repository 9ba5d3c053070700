"""A file written whole or not at all: the one way warmstart writes a model, a card or a manifest.

Shared by the model cache (func/model_source.py), the retraining store (func/publish.py),
the scripts that train and export models, and the rollout's manifest file. Imports
nothing of ours, so any wing and the rollout image may use it.
"""

from __future__ import annotations

import atexit
import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PART_SUFFIX = ".part"


def part_name(path: Path) -> str:
    """The prefix of the temporary names `atomic_file(path)` writes under, beside `path`."""
    return f".{path.name}."


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write `path` through the yielded file: it is flushed to disk and renamed over `path`
    when the block ends, and removed instead if the block raises, or if the process
    exits first (SIGTERM stops a gunicorn worker while its loader thread fetches).

    The file gets the mode `open()` would give it, 0666 less the umask (0644 by
    default): tempfile.mkstemp's 0600 made a model written by root (an image build)
    unreadable by the non-root user that serves it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{part_name(path)}{secrets.token_hex(4)}{PART_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    remove = functools.partial(tmp.unlink, missing_ok=True)
    atexit.register(remove)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        atexit.unregister(remove)
        remove()


def write_atomically(path: Path, data: bytes) -> None:
    """`data` as the whole of `path` (see atomic_file)."""
    with atomic_file(path) as fh:
        fh.write(data)
