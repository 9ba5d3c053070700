"""The fresh training set: the prediction log joined with the feedback, over a time window.

`python -m func.dataset --log PREFIX --output URI [--since 7d] [--until ISO-TIME]`

A labelled row is a logged prediction (its time inside the window) that has a label:
its features (a column per feature name), `label`, `id`, `time`, `revision`,
`model_version` and the `prediction` the model gave, so the set also says how each
revision did. Labels may arrive at any time after the prediction (the window is on the
prediction's time, not the label's), at any pod, in any order, and more than once: the
latest label of a row wins (by the time it arrived; two that arrived in the same
instant, by part and position). A row is keyed by its request id and row number, so
`<id>` and `<id>/0` label the same one-row request. A prediction id a client reused
names its latest prediction.

Written through fsspec as Parquet or CSV (from the extension), under a temporary name
first, so the retraining job (`TRAIN_DATA_URI`) never reads half a file. The retraining
job can also name the log itself as `TRAIN_DATA_URI`: it joins it the same way
(with TRAIN_DATA_SINCE as the window) and trains on `label`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
LABEL = "label"
KEY = ("request_id", "row")
KEPT = ("id", "time", "revision", "model_version", "prediction")
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class DatasetError(Exception):
    """The log or the window cannot give a dataset; the message says why."""


class EmptyWindow(DatasetError):
    """No prediction, or no label, in the window yet: a later join may find some."""


def parse_time(text: str | None, now: datetime, name: str) -> datetime | None:
    """An ISO 8601 time (UTC unless it says otherwise) or a span back from now (30m, 24h, 7d)."""
    if not text:
        return None
    span = _SPAN.match(text.strip())
    if span:
        return now - timedelta(**{_UNITS[span.group(2)]: float(span.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DatasetError(f"{name}={text!r}: expected an ISO 8601 time or a span like 30m, 24h, 7d") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_log(uri: str) -> bool:
    """Whether `uri` is a prediction log's prefix (it holds a `predictions` folder)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(uri)
        return fs.isdir(f"{root.rstrip('/')}/{PREDICTIONS}")
    except Exception:  # a file's URI, an unreachable store: not a log, read_dataset says why
        return False


def _parts(fs: Any, root: str, kind: str) -> list[Any]:
    """The complete parts of one kind, in name order, as pyarrow dataset fragments."""
    import pyarrow.dataset as ds

    folder = f"{root}/{kind}"
    if not fs.isdir(folder):
        return []
    dataset = ds.dataset(folder, filesystem=fs, format="parquet", ignore_prefixes=["_", "."])
    return sorted(dataset.get_fragments(), key=lambda fragment: fragment.path)


def _latest(table: Any, order: list[str]) -> Any:
    """One row per key, the last by `order`."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table
    keys = [(name, "ascending") for name in (*KEY, *order)]
    table = table.take(pc.sort_indices(table, sort_keys=keys))
    request_ids = table.column("request_id").to_numpy(zero_copy_only=False)
    rows = table.column("row").to_numpy()
    last = np.ones(table.num_rows, dtype=bool)
    last[:-1] = (request_ids[1:] != request_ids[:-1]) | (rows[1:] != rows[:-1])
    return table.filter(last)


def join(uri: str, since: datetime | None = None, until: datetime | None = None) -> tuple[Any, dict[str, int]]:
    """(the labelled rows, counts of what was read) of the log under `uri`."""
    import fsspec
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    prediction_parts = _parts(fs, root, PREDICTIONS)
    if not prediction_parts:
        raise DatasetError(f"{uri}: no prediction log here (no parts under {PREDICTIONS}/); is PREDICTION_LOG set?")
    window = None
    if since is not None:
        window = ds.field("time") >= pa.scalar(since, pa.timestamp("us", tz="UTC"))
    if until is not None:
        before = ds.field("time") < pa.scalar(until, pa.timestamp("us", tz="UTC"))
        window = before if window is None else window & before
    tables = []
    for part in prediction_parts:
        table = part.to_table(filter=window, columns=[*KEY, *KEPT, "features"])
        if table.num_rows:
            tables.append(table)
    if not tables:
        raise EmptyWindow(f"{uri}: no predictions logged in the window")
    predictions = _latest(pa.concat_tables(tables, promote_options="permissive"), ["time"])
    labels = []
    for number, part in enumerate(_parts(fs, root, FEEDBACK)):
        table = part.to_table(columns=[*KEY, LABEL, "time"]).rename_columns([*KEY, LABEL, "label_time"])
        labels.append(
            table.append_column("part", pa.array(np.full(table.num_rows, number))).append_column(
                "position", pa.array(np.arange(table.num_rows))
            )
        )
    feedback = pa.concat_tables(labels) if labels else None
    received = feedback.num_rows if feedback is not None else 0
    if feedback is None or received == 0:
        raise EmptyWindow(f"{uri}: no feedback logged yet (labels come from POST /feedback or warmstart.feedback.v1)")
    latest = _latest(feedback, ["label_time", "part", "position"]).select([*KEY, LABEL])
    features = predictions.column("features")
    names = [field.name for field in features.type]
    clash = [name for name in names if name in (LABEL, *KEPT)]
    if clash:
        raise DatasetError(f"{uri}: feature(s) {', '.join(clash)} share a name with the dataset's own columns")
    flat = predictions.drop_columns(["features"])
    for name, column in zip(names, features.flatten()):
        flat = flat.append_column(name, column)
    joined = flat.join(latest, keys=list(KEY), join_type="inner")
    joined = joined.take(pc.sort_indices(joined, sort_keys=[("time", "ascending"), ("id", "ascending")]))
    joined = joined.select([*names, LABEL, *KEPT])
    counts = {
        "predictions": predictions.num_rows,
        "labels": received,
        "labelled_rows": latest.num_rows,
        "rows": joined.num_rows,
    }
    return joined, counts


def write(table: Any, uri: str) -> None:
    """Write the dataset as Parquet or CSV (by extension), under a temporary name first."""
    import fsspec
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    name = uri.lower()
    if not name.endswith((".parquet", ".pq", ".csv")):
        raise DatasetError(f"--output {uri}: name the file .parquet or .csv")
    fs, path = fsspec.core.url_to_fs(uri)
    folder, _, base = path.rpartition("/")
    temporary = f"{folder}/_{base}.{os.getpid()}.tmp" if folder else f"_{base}.{os.getpid()}.tmp"
    if folder:
        fs.makedirs(folder, exist_ok=True)
    with fs.open(temporary, "wb") as fh:
        if name.endswith(".csv"):
            pacsv.write_csv(table, fh)
        else:
            pq.write_table(table, fh)
    fs.mv(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m func.dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log", default=os.environ.get("PREDICTION_LOG"), help="the prediction log's URI prefix (env PREDICTION_LOG)"
    )
    parser.add_argument("--output", required=True, help="where to write the labelled rows: a .parquet or .csv URI")
    parser.add_argument("--since", help="predictions from this time on: ISO 8601, or a span back from now (7d, 24h)")
    parser.add_argument("--until", help="predictions before this time: ISO 8601, or a span back from now")
    args = parser.parse_args(argv)
    if not args.log:
        parser.error("the prediction log is required: --log or PREDICTION_LOG")
    now = datetime.now(UTC)
    try:
        table, counts = join(args.log, parse_time(args.since, now, "--since"), parse_time(args.until, now, "--until"))
        write(table, args.output)
    except DatasetError as exc:
        print(f"func.dataset: {exc}", file=sys.stderr)
        return 2
    print(
        f"{counts['rows']} labelled rows -> {args.output} ({counts['predictions']} predictions in the window, "
        f"{counts['labels']} labels received for {counts['labelled_rows']} rows)"
    )
    return 0
