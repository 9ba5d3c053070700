"""Readiness of the pod as a whole, not of one worker: marks in the shared folder.

The kubelet's readiness probe reaches one worker; Knative then sends traffic to every
worker. So a worker answers "ready" only when no first-generation worker is still
loading its model. The master marks every first-generation worker as loading before the
first fork (so no worker can look before its siblings exist), each worker removes its mark
once its model has loaded, and the master removes a dead worker's mark. A worker that
replaces a dead one gets no mark: it does not listen before its model has loaded
(func/server/worker.py), so it never holds the pod back.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

_LOADING = "loading"


def _mark(shared_dir: str, age: int) -> Path:
    return Path(shared_dir) / _LOADING / str(age)


def expect(shared_dir: str, ages: Iterable[int]) -> None:
    """Mark the workers of these ages as loading (the master, before the first fork)."""
    (Path(shared_dir) / _LOADING).mkdir(exist_ok=True)
    for age in ages:
        _mark(shared_dir, age).touch()


def loaded(shared_dir: str, age: int) -> None:
    """The worker of this age can predict, or is gone (its mark no longer counts)."""
    _mark(shared_dir, age).unlink(missing_ok=True)


def all_loaded(shared_dir: str) -> bool:
    """True when no first-generation worker is still loading its model."""
    try:
        return not any((Path(shared_dir) / _LOADING).iterdir())
    except FileNotFoundError:
        return True
