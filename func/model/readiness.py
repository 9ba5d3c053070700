"""Readiness of the pod as a whole, not of one worker: marks in the shared folder.

The kubelet's readiness probe reaches one worker; Knative then sends traffic to every
worker. So a worker answers "ready" only when no first-generation worker is still
loading its model. The master marks every first-generation worker as loading before the
first fork (so no worker can look before its siblings exist), each worker removes its mark
once its model has loaded, and the master removes a dead worker's mark. A worker that
replaces a dead one gets no mark: it does not listen before its model has loaded
(func/server/worker.py), so it never holds the pod back.

The pod serves one model: the first worker to load pins its file's digest here, and a
worker that loads other bytes (the file was replaced while the pod ran, then a worker
died and its replacement read the new file) does not serve them (func/server/worker.py stops
the pod, which restarts on one model).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_LOADING = "loading"
_MODEL_PIN = "model.sha256"


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


def pin_model(shared_dir: str, sha256: str) -> str:
    """The digest of the model the pod serves: `sha256` if no worker pinned one before,
    else the one pinned first."""
    pin = Path(shared_dir) / _MODEL_PIN
    draft = pin.with_name(f"{_MODEL_PIN}.{os.getpid()}")
    draft.write_text(sha256)
    try:
        os.link(draft, pin)  # atomic, and refuses to replace: the first pin stays
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return pin.read_text()
