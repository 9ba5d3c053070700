"""The file operations a batch job makes, on local paths, without fsspec.

Importing fsspec (and the asyncio it imports) cost a fresh worker 0.03 s of its first
job; a job on a mounted volume, the usual case, needs only the standard library. The
methods are named as fsspec's filesystems name them, and fsspec still opens every other
scheme (func/batch/job.py, _filesystem).
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import IO


class LocalFiles:
    protocol = ("file", "local")

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def open(self, path: str, mode: str) -> IO[bytes]:
        return open(path, mode)

    def mv(self, source: str, target: str) -> None:
        shutil.move(source, target)

    def rm(self, path: str) -> None:
        os.remove(path)

    def glob(self, pattern: str) -> list[str]:
        return glob.glob(pattern)
