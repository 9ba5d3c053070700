"""The folder the worker processes of one server share.

gunicorn forks several workers; what must be true of the pod as a whole (metrics summed
over workers, drift counts, readiness of every worker) lives in files under one folder
that the master creates, empty, before the first fork. Workers find it through
`Settings.shared_dir`; a process that serves alone (tests, the functions-framework
target) has none and keeps such state in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# prometheus-client's multiprocess mode reads this variable when it is first imported,
# so it must be set before any worker imports it.
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
