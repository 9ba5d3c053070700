"""The model card: what the model is, its features, and its reference statistics.

ONNX models carry the card as JSON in their own `metadata_props` (key `warmstart.card`);
joblib and skops models carry it in a JSON file beside them (`model.card.json` for
`model.joblib`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CARD_METADATA_KEY = "warmstart.card"
# Ten quantile bins per feature are the usual choice for the population stability index:
# fine enough to see a shift, coarse enough that a 1,000-row window fills every bin.
REFERENCE_BINS = 10


class CardError(ValueError):
    """A model card is missing a field or holds a value of the wrong kind."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    task: str  # "classification" or "regression"
    feature_names: tuple[str, ...]
    class_labels: tuple[Any, ...] = ()
    reference: dict[str, dict[str, Any]] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    created: str = ""
    # where a retrained model came from: parent version and digest, triggering event, data
    lineage: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    # What the model answered on its training data, for prediction drift: the share of
    # each class (in class_labels order), or a regressor's quantile bins like a feature's.
    prediction_reference: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every card is checked where it is made (from JSON, from a model, or with
        MODEL_NAME/MODEL_VERSION in place of its own): what it holds reaches headers,
        URLs, metrics and drift, where a bad value broke every request."""
        check_identity(self.name, "name")
        check_identity(self.version, "version")
        _check_class_labels(self.class_labels)
        for name, stats in self.reference.items():
            _check_statistics(stats, f"reference[{name!r}]")
        _check_prediction_reference(self)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_names"] = list(self.feature_names)
        data["class_labels"] = list(self.class_labels)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model card") -> ModelCard:
        """Build a card from its JSON form; `where` names the source in error messages."""
        if not isinstance(data, dict):
            raise CardError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for key in ("name", "version", "task", "feature_names"):
            if key not in data:
                raise CardError(f"{where}: missing field {key!r}")
        task = data["task"]
        if task not in ("classification", "regression"):
            raise CardError(f"{where}: task must be 'classification' or 'regression', got {task!r}")
        names = data["feature_names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise CardError(f"{where}: feature_names must be a non-empty list of strings")
        if len(set(names)) != len(names):
            raise CardError(f"{where}: feature_names has duplicates")
        if not isinstance(data.get("class_labels") or [], list):
            raise CardError(f"{where}: class_labels must be a list, got {type(data['class_labels']).__name__}")
        for key in ("reference", "prediction_reference"):
            if not isinstance(data.get(key) or {}, dict):
                raise CardError(f"{where}: {key} must be an object, got {type(data[key]).__name__}")
        try:
            return cls._of(data, task, names)
        except CardError as exc:
            raise CardError(f"{where}: {exc}") from None

    @classmethod
    def _of(cls, data: dict[str, Any], task: str, names: list[str]) -> ModelCard:
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            task=task,
            feature_names=tuple(names),
            class_labels=tuple(data.get("class_labels") or ()),
            reference=dict(data.get("reference") or {}),
            libraries=dict(data.get("libraries") or {}),
            created=str(data.get("created") or ""),
            lineage=dict(data.get("lineage") or {}),
            description=str(data.get("description") or ""),
            metrics=dict(data.get("metrics") or {}),
            prediction_reference=dict(data.get("prediction_reference") or {}),
        )

    @classmethod
    def from_json(cls, text: str, where: str = "model card") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CardError(f"{where}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where)


# What a name or version must not hold, and why: '/' and ':' end a name in the routes
# (/v1/models/<name>:predict, /v2/models/<name>/versions/<version>/infer).
_NAME_BREAKERS = {"name": "/:", "version": "/"}


def check_identity(value: Any, field: str) -> None:
    """A card's name or version: a non-empty string that an HTTP header (X-Model-Name,
    X-Model-Version) can carry, that is printable Latin-1 with no space at either end, and
    that a route can hold. Raises CardError naming the field, the value and the reason."""
    if not isinstance(value, str) or not value:
        raise CardError(f"{field} must be a non-empty string, got {value!r}")
    for char in value:
        if not (" " <= char <= "~" or "\xa0" <= char <= "\xff"):
            raise CardError(
                f"{field} {value!r} holds {char!r}, which the X-Model-{field.title()} header cannot carry; "
                "use printable Latin-1 characters"
            )
        if char in _NAME_BREAKERS[field]:
            raise CardError(f"{field} {value!r} holds {char!r}, which the model's URLs cannot hold")
    if value != value.strip():
        raise CardError(f"{field} {value!r} starts or ends with a space, which HTTP headers drop")


def _check_class_labels(labels: tuple[Any, ...]) -> None:
    for i, label in enumerate(labels):
        if not isinstance(label, (str, int, float)) or (isinstance(label, float) and not math.isfinite(label)):
            raise CardError(f"class_labels[{i}] is {label!r}; a class label is a string, a number or a boolean")
    if len(set(labels)) != len(labels):
        raise CardError(f"class_labels {list(labels)!r} has duplicates")


def _is_number(value: Any) -> bool:
    """A JSON number (NaN included: statistics of data with gaps hold it); not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value: Any, where: str) -> list[float]:
    """`value` if it is a list of numbers."""
    if not isinstance(value, list):
        raise CardError(f"{where} must be a list of numbers, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not _is_number(item):
            raise CardError(f"{where}[{i}] is {item!r}, not a number")
    return value


def _check_statistics(stats: Any, where: str, bounds: bool = True) -> None:
    """A feature's reference statistics, or with `bounds` False a regressor's prediction
    bins: the numbers drift and explanations read, and `fractions` one share per bin the
    edges make (a feature's bins also need its min and max, drift's outer bins)."""
    if not isinstance(stats, dict):
        raise CardError(f"{where} must be an object, got {type(stats).__name__}")
    for key in ("mean", "std", "min", "max"):
        if key in stats and not _is_number(stats[key]):
            raise CardError(f"{where}.{key} is {stats[key]!r}, not a number")
    if "bin_edges" not in stats and "fractions" not in stats:
        return
    edges = _numbers(stats.get("bin_edges", []), f"{where}.bin_edges")
    if any(a > b for a, b in zip(edges, edges[1:])):
        raise CardError(f"{where}.bin_edges must be in ascending order, got {edges!r}")
    fractions = _numbers(stats.get("fractions"), f"{where}.fractions")
    if len(fractions) != len(edges) + 1:
        raise CardError(
            f"{where}.fractions has {len(fractions)} shares, but its {len(edges)} bin_edges make {len(edges) + 1} bins"
        )
    if any(f < 0 for f in fractions):
        raise CardError(f"{where}.fractions holds a negative share: {fractions!r}")
    missing = [key for key in ("min", "max") if bounds and key not in stats]
    if missing:
        raise CardError(f"{where}: bin_edges need {' and '.join(map(repr, missing))} beside them")


def _check_prediction_reference(card: ModelCard) -> None:
    reference = card.prediction_reference
    if not reference:
        return
    if not card.is_classifier:
        _check_statistics(reference, "prediction_reference", bounds=False)
        return
    if "fractions" in reference:
        fractions = _numbers(reference["fractions"], "prediction_reference.fractions")
        if card.class_labels and len(fractions) != len(card.class_labels):
            raise CardError(
                f"prediction_reference.fractions has {len(fractions)} shares for {len(card.class_labels)} class_labels"
            )


def sidecar_path(model_path: str | Path) -> Path:
    """Where the card of a non-ONNX model lives: `model.card.json` beside `model.joblib`."""
    return Path(model_path).with_suffix(".card.json")


def reference_statistics(x: np.ndarray, feature_names: list[str]) -> dict[str, dict[str, Any]]:
    """Per-feature statistics of the training data, kept in the card for drift detection.

    Bin edges are the inner quantiles of each feature; `fractions` is the share of the
    training rows in each of the REFERENCE_BINS bins they delimit.
    """
    x = np.asarray(x, dtype=np.float64)
    stats: dict[str, dict[str, Any]] = {}
    inner = np.linspace(0, 1, REFERENCE_BINS + 1)[1:-1]
    for j, name in enumerate(feature_names):
        col = x[:, j]
        edges = np.unique(np.quantile(col, inner))
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
        stats[name] = {
            "mean": float(col.mean()),
            "std": float(col.std()),
            "min": float(col.min()),
            "max": float(col.max()),
            "bin_edges": [float(e) for e in edges],
            "fractions": [float(c) / len(col) for c in counts],
        }
    return stats


def prediction_reference(predicted: np.ndarray, class_labels: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
    """The training data's prediction mix: class shares for a classifier (labels in
    `class_labels` order), quantile bins for a regressor."""
    predicted = np.asarray(predicted).reshape(-1)
    if len(class_labels):
        shares = [float(np.mean(predicted == label)) for label in class_labels]
        return {"fractions": shares}
    return reference_statistics(predicted.reshape(-1, 1).astype(np.float64), ["prediction"])["prediction"]


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
