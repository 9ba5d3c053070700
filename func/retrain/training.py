"""What the retraining job does with data: read it, split it, train on it, score on it.

Used by the job only (func/retrain/job.py); scikit-learn is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.runtime import Model
from ..model.source import first_line
from . import dataset

DEFAULT_TRAINER = "func.retrain.training:default_trainer"
# Fewer held-out rows than this cannot tell two models apart: one row is already 5% of
# the accuracy.
MIN_HOLDOUT_ROWS = 20
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")


class BadInput(Exception):
    """Input that fails the same way on every retry: the Job should not retry it."""


class Unreachable(Exception):
    """A store, registry or sink did not answer: a retry may succeed."""


@dataclass(frozen=True)
class Dataset:
    uri: str
    sha256: str
    x: np.ndarray
    y: np.ndarray
    # a prediction log's labelled rows: more arrive as feedback does, so too few is "later"
    growing: bool = False

    @property
    def rows(self) -> int:
        return len(self.y)


def read_dataset(uri: str, features: tuple[str, ...], target: str, since: str | None = None) -> Dataset:
    """Rows of `features` (in that order) and the `target` column from a CSV or Parquet URI,
    or a prediction log's labelled rows (its `label`, predictions from `since` on)."""
    import fsspec
    import pyarrow as pa

    if dataset.is_log(uri):
        return _from_log(uri, features, since)
    try:
        with fsspec.open(uri, "rb") as fh:
            raw = fh.read()
    except ImportError as exc:
        raise BadInput(f"TRAIN_DATA_URI={uri}: no fsspec backend for this scheme ({exc})") from None
    except Exception as exc:  # not found, no permission, network: the data pipeline may yet deliver
        raise Unreachable(f"TRAIN_DATA_URI={uri}: cannot read it ({first_line(exc)})") from None
    name = uri.lower().split("?")[0]
    try:
        if name.endswith(PARQUET_SUFFIXES):
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(raw))
        elif name.endswith(CSV_SUFFIXES):
            import pyarrow.csv as pcsv

            compression = "gzip" if name.endswith(".gz") else None
            table = pcsv.read_csv(pa.input_stream(io.BytesIO(raw), compression=compression))
        else:
            raise BadInput(f"TRAIN_DATA_URI={uri}: unknown format; name the file .csv, .csv.gz or .parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInput(f"TRAIN_DATA_URI={uri}: not a readable table ({first_line(exc)})") from None
    return _dataset(uri, hashlib.sha256(raw).hexdigest(), table, features, target)


def _from_log(uri: str, features: tuple[str, ...], since: str | None) -> Dataset:
    """The log's labelled rows (func/retrain/dataset.py), as TRAIN_DATA_URI names them."""
    from datetime import UTC, datetime

    import pyarrow as pa

    try:
        table, _ = dataset.join(uri, dataset.parse_time(since, datetime.now(UTC), "TRAIN_DATA_SINCE"))
    except dataset.EmptyWindow as exc:  # predictions or their labels are still to come: retry later
        raise Unreachable(f"TRAIN_DATA_URI={uri}: {exc}") from None
    except dataset.DatasetError as exc:
        raise BadInput(f"TRAIN_DATA_URI={uri}: {exc}") from None
    except Exception as exc:  # the store did not answer: the pipeline may yet deliver
        raise Unreachable(f"TRAIN_DATA_URI={uri}: cannot read the prediction log ({first_line(exc)})") from None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    found = _dataset(uri, hashlib.sha256(sink.getvalue()).hexdigest(), table, features, dataset.LABEL)
    return dataclasses.replace(found, growing=True)


def _dataset(uri: str, sha256: str, table: Any, features: tuple[str, ...], target: str) -> Dataset:
    columns = table.column_names
    if target not in columns:
        raise BadInput(f"TRAIN_DATA_URI={uri}: no target column {target!r} (columns: {', '.join(columns)})")
    missing = [f for f in features if f not in columns]
    if missing:
        raise BadInput(f"TRAIN_DATA_URI={uri}: the model's feature columns {', '.join(missing)} are missing")
    x = np.empty((table.num_rows, len(features)), dtype=np.float64)
    for j, feature in enumerate(features):
        x[:, j] = _numeric(table.column(feature), uri, feature)
    y_column = table.column(target)
    if y_column.null_count:
        raise BadInput(f"TRAIN_DATA_URI={uri}: column {target!r} has {y_column.null_count} empty values")
    return Dataset(uri, sha256, x, y_column.to_numpy(zero_copy_only=False))


def _numeric(column: Any, uri: str, name: str) -> np.ndarray:
    import pyarrow as pa

    if column.null_count:
        raise BadInput(f"TRAIN_DATA_URI={uri}: column {name!r} has {column.null_count} empty values")
    try:
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise BadInput(f"TRAIN_DATA_URI={uri}: column {name!r} is not numeric ({column.type})") from None
    if not np.isfinite(values).all():
        raise BadInput(f"TRAIN_DATA_URI={uri}: column {name!r} holds NaN or infinite values")
    return values


def split(data: Dataset, holdout: float, classifier: bool) -> tuple[np.ndarray, ...]:
    """(x_train, x_test, y_train, y_test): a seeded split, stratified for classifiers."""
    from sklearn.model_selection import train_test_split

    n_test = math.ceil(data.rows * holdout)
    if n_test < MIN_HOLDOUT_ROWS or data.rows - n_test < MIN_HOLDOUT_ROWS:
        need = f"a held-out split of {holdout:g} needs at least {MIN_HOLDOUT_ROWS} rows on each side"
        if data.growing:  # labels are still arriving: the Job's retry finds more
            raise Unreachable(f"TRAIN_DATA_URI={data.uri}: {data.rows} labelled rows so far; {need}")
        raise BadInput(f"TRAIN_DATA_URI={data.uri}: {data.rows} rows are too few: {need}")
    try:
        return tuple(
            train_test_split(data.x, data.y, test_size=n_test, random_state=0, stratify=data.y if classifier else None)
        )
    except ValueError as exc:
        raise BadInput(f"TRAIN_DATA_URI={data.uri}: no held-out split possible ({first_line(exc)})") from None


def load_trainer(spec: str) -> Callable[[np.ndarray, np.ndarray], Any]:
    """The function TRAINER=`module:function` names."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise BadInput(f"TRAINER={spec!r}: expected module:function, e.g. {DEFAULT_TRAINER}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing
        raise BadInput(f"TRAINER={spec}: cannot import {module_name} ({first_line(exc)})") from None
    trainer = getattr(module, function_name, None)
    if not callable(trainer):
        raise BadInput(f"TRAINER={spec}: {module_name} has no function {function_name!r}")
    return trainer


def train(spec: str, x: np.ndarray, y: np.ndarray) -> Any:
    """Call the trainer on the training split; check it returned a fitted estimator."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    trainer = load_trainer(spec)
    try:
        estimator = trainer(x, y)
    except Exception as exc:
        raise BadInput(f"TRAINER={spec}: failed ({type(exc).__name__}: {first_line(exc)})") from None
    if not hasattr(estimator, "predict") or not hasattr(estimator, "fit"):
        raise BadInput(f"TRAINER={spec}: returned {type(estimator).__name__}, not a scikit-learn estimator")
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise BadInput(f"TRAINER={spec}: returned an unfitted {type(estimator).__name__}; call fit first") from None
    return estimator


def default_trainer(x: np.ndarray, y: np.ndarray) -> Any:
    """The pipeline scripts/train.py uses for the default model."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1).fit(x, y)


# What RETRAIN_METRIC may name, per task; the first is the default. Accuracy by default:
# it scores the labels users get, where ROC AUC scores only the ranking and rejected a
# candidate with accuracy 0.947 against the served model's 0.368 for 0.970 vs 0.983 AUC.
CLASSIFIER_METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss")
REGRESSOR_METRICS = ("rmse", "mae", "r2")
METRICS = CLASSIFIER_METRICS + REGRESSOR_METRICS
# Losses and errors: lower is better, and the tolerance is a fraction of the current
# value (their scale is the data's); for the scores it is absolute points.
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})


def choose_metric(model: Model, metric: str | None) -> str:
    """RETRAIN_METRIC, checked against the model's task; the task's default when unset."""
    allowed = CLASSIFIER_METRICS if model.card.is_classifier else REGRESSOR_METRICS
    if metric is None:
        return allowed[0]
    if metric not in allowed:
        task = "classifier" if model.card.is_classifier else "regressor"
        raise BadInput(f"RETRAIN_METRIC={metric}: {model.card.name} is a {task}; choose one of {', '.join(allowed)}")
    return metric


def score(model: Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The model's metrics on held-out rows, computed on what the serving runtime answers:
    every metric of its task that the rows allow (ROC AUC and log loss need
    probabilities, ROC AUC every class among the rows)."""
    from sklearn import metrics

    out = model.predict(np.ascontiguousarray(x, dtype=np.float32))
    if not model.card.is_classifier:
        return {
            "rmse": float(math.sqrt(metrics.mean_squared_error(y, out.labels))),
            "mae": float(metrics.mean_absolute_error(y, out.labels)),
            "r2": float(metrics.r2_score(y, out.labels)),
        }
    truth, labels = np.asarray(y).astype(str), np.asarray(out.labels).astype(str)
    classes = [str(c) for c in model.card.class_labels]
    binary = len(classes) == 2
    found = {
        "accuracy": float(np.mean(labels == truth)),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(truth, labels)),
        "f1": float(
            metrics.f1_score(truth, labels, pos_label=classes[1])
            if binary
            else metrics.f1_score(truth, labels, average="macro")
        ),
    }
    if out.probabilities is None:
        return found
    # float32 sums: a row's probabilities may add up to 1.0000001; log_loss refuses those
    probabilities = np.clip(np.asarray(out.probabilities, dtype=np.float64), 0.0, 1.0)
    probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    found["log_loss"] = float(metrics.log_loss(truth, probabilities, labels=classes))
    if set(truth) == set(classes):
        found["roc_auc"] = float(
            metrics.roc_auc_score(truth == classes[1], probabilities[:, 1])
            if binary
            else metrics.roc_auc_score(truth, probabilities, multi_class="ovr", labels=classes)
        )
    return found


def not_worse(metric: str, candidate: float, current: float, tolerance: float) -> bool:
    """Higher is better for the scores (tolerance in absolute points); lower for losses
    and errors (tolerance as a fraction of the current value)."""
    if metric in LOWER_IS_BETTER:
        return candidate <= current * (1 + tolerance)
    return candidate >= current - tolerance
