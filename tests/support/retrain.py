"""What the retraining tests share: the drift event a JobSink mounts, shifted data, files of rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tests.support.server import DEFAULT_MODEL

DRIFT_ID = "drift-7f3a"


# Every feature doubled: the served forest's thresholds no longer fit, a new one does
# (measured: held-out ROC AUC 0.84 for the served model, 0.97 retrained).
SHIFT = 2.0


def drift_event(path: Path, event_id: str = DRIFT_ID) -> Path:
    """A warmstart.drift.detected.v1 event as the serving pod sends it, in structured mode
    (as the JobSink writes it to K_EVENT_PATH)."""
    event = {
        "specversion": "1.0",
        "id": event_id,
        "type": "warmstart.drift.detected.v1",
        "source": "/warmstart/warmstart",
        "datacontenttype": "application/json",
        "data": {
            "model": {"name": "breast-cancer-rf", "version": "1", "sha256": sha256(DEFAULT_MODEL)},
            "revision": "warmstart-00001",
            "window": {"index": 3, "rows": 1000, "size": 1000},
            "threshold": 0.2,
            "psi": {"mean radius": 1.9, "worst area": 2.4},
            "top_features": [{"feature": "worst area", "psi": 2.4}, {"feature": "mean radius", "psi": 1.9}],
            "prediction_psi": 0.61,
            "out_of_range_rate": 0.31,
            "status": "drift",
        },
    }
    path.write_text(json.dumps(event))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, names: list[str], target: str = "target") -> Path:
    rows = [",".join(f'"{n}"' for n in [*names, target])]
    rows += [",".join([*(repr(float(v)) for v in row), str(int(label))]) for row, label in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")
    return path
