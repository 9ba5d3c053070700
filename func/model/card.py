"""The model card: what the model is, its features, and its reference statistics.

ONNX models carry the card as JSON in their own `metadata_props` (key `warmstart.card`);
joblib and skops models carry it in a JSON file beside them (`model.card.json` for
`model.joblib`).
"""

from __future__ import annotations

import datetime as _dt
import json
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
