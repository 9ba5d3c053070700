"""Batch jobs as a broker sends them: input tables written to files, warmstart.batch.v1 events posted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent


def table(x: np.ndarray, names: list[str], n: int, shuffle_columns: bool = True) -> pa.Table:
    """n rows with an id column and the feature columns in a shuffled order."""
    order = list(np.random.default_rng(1).permutation(len(names))) if shuffle_columns else list(range(len(names)))
    columns = {"patient_id": [f"p{i}" for i in range(n)]}
    rows = x[np.arange(n) % len(x)]
    for j in order:
        columns[names[j]] = rows[:, j]
    return pa.table(columns)


def write(path: Path, tab: pa.Table) -> Path:
    if path.suffix == ".csv":
        pacsv.write_csv(tab, path)
    elif path.suffix == ".parquet":
        pq.write_table(tab, path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in tab.to_pylist()))
    return path


def batch_event(data: dict, event_id: str = "job-1") -> CloudEvent:
    return CloudEvent({"type": "warmstart.batch.v1", "source": "/tests", "id": event_id, "subject": "nightly"}, data)


def send(url: str, event: CloudEvent, structured: bool = False, timeout: float = 120) -> requests.Response:
    headers, body = (to_structured if structured else to_binary)(event)
    return requests.post(url + "/", data=body, headers=headers, timeout=timeout)
