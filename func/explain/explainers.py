"""Per-prediction explanations: one attribution per feature per row, which add up, with
the base value, to the model output they explain.

Which method a model gets:

- an ONNX tree ensemble (what skl2onnx makes of scikit-learn's random forests, extra
  trees, gradient boosting and decision trees) exported by scripts/export_onnx.py, which
  stores each node's training sample count: exact path-dependent TreeSHAP computed from
  the ONNX tree attributes (func/explain/tree_shap.py), in the space where the trees add up:
  probability for a forest, log-odds for binary gradient boosting, the softmax margin for
  multi-class boosting, the value for a regressor;
- any other model: baseline Shapley values against the card's training means, from
  batched calls to the model's own predict (func/explain/shapley.py), in probability (classifier)
  or value (regressor) space.

A classifier's row is explained for the class the model predicted for it. The explainer
is built on the first explanation, not at start-up: reading the trees costs ~50 ms that
cold start and /predict must not pay. Before a tree explainer is used, its reading of the
trees must reproduce onnxruntime's outputs on rows spread over the training range;
if it does not, the model gets the model-agnostic method (and the log says why).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import PayloadTooLarge, WarmstartError
from ..model.card import ModelCard
from ..model.runtime import Model, Prediction

if TYPE_CHECKING:
    from .tree_shap import TreeShap

log = logging.getLogger("warmstart.explain")

# Rows per explanation request: a row costs the model-agnostic method ~2,000 model rows
# (~2 ms) and TreeSHAP on the default forest ~1 ms, so 100 rows answer within a fraction of
# a second; larger sets belong in several requests.
MAX_EXPLAIN_ROWS = 100
TREE_METHOD = "tree_shap_path_dependent"
# Rows a tree explainer must reproduce onnxruntime on before it is trusted, and how closely
# (float32 sums over hundreds of trees stay near 1e-6).
_CHECK_ROWS = 64
_CHECK_TOLERANCE = 1e-4


class ExplanationUnavailable(WarmstartError):
    """The served model cannot be explained (not the request's fault)."""

    status = 501
    code = "explanation_unavailable"


@dataclass(frozen=True)
class Explanation:
    method: str
    output_space: str
    label_index: np.ndarray | None  # (rows,): the class explained, None for a regressor
    attributions: np.ndarray  # (rows, features)
    base_values: np.ndarray  # (rows,)
    outputs: np.ndarray  # (rows,)


class Explainer(Protocol):
    def explain(self, rows: np.ndarray, label_index: np.ndarray | None) -> Explanation: ...


class TreeExplainer:
    def __init__(self, tree: TreeShap) -> None:
        self.tree = tree

    def explain(self, rows: np.ndarray, label_index: np.ndarray | None) -> Explanation:
        wanted = label_index if label_index is not None else np.zeros(len(rows), dtype=np.int64)
        columns, sign, offset = self.tree.class_scores(wanted)
        values = self.tree.shap_values(rows, columns)
        return Explanation(
            TREE_METHOD,
            self.tree.output_space,
            label_index,
            values.attributions * sign[:, None],
            values.base_values * sign + offset,
            values.outputs * sign + offset,
        )


class ShapleyExplainer:
    def __init__(self, model: Model, baseline: np.ndarray) -> None:
        self.model = model
        self.baseline = baseline

    def explain(self, rows: np.ndarray, label_index: np.ndarray | None) -> Explanation:
        from . import shapley

        classifier = label_index is not None
        columns = label_index if classifier else np.zeros(len(rows), dtype=np.int64)
        attributions, base_values, outputs = shapley.shapley_values(self._value, rows, self.baseline, columns)
        return Explanation(
            shapley.method_for(rows.shape[1]),
            "probability" if classifier else "value",
            label_index,
            attributions,
            base_values,
            outputs,
        )

    def _value(self, rows: np.ndarray) -> np.ndarray:
        prediction = self.model.predict(rows)
        if prediction.probabilities is not None:
            return np.asarray(prediction.probabilities, dtype=np.float64)
        return np.asarray(prediction.labels, dtype=np.float64)[:, None]


class Unexplainable:
    """A model that cannot be explained: every request gets the same 501 without
    reading the model again."""

    def __init__(self, error: ExplanationUnavailable) -> None:
        self.error = error

    def explain(self, rows: np.ndarray, label_index: np.ndarray | None) -> Explanation:
        raise self.error


class Explainers:
    """The served model's explainer, built on its first explanation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Model | None = None
        self._explainer: Explainer | None = None

    def explain(
        self, model: Model, rows: np.ndarray, predict: Callable[[Model, np.ndarray], Prediction]
    ) -> tuple[Prediction, Explanation]:
        """Predict `rows` with `predict` (the serving's one model call) and explain them;
        too many rows are refused before the model runs."""
        if len(rows) > MAX_EXPLAIN_ROWS:
            raise PayloadTooLarge(
                f"instances: {len(rows)} rows is more than one explanation request takes ({MAX_EXPLAIN_ROWS}); "
                "send them in several requests"
            )
        prediction = predict(model, rows)
        label_index = None
        if prediction.probabilities is not None:
            label_index = np.asarray(prediction.probabilities).argmax(axis=1)
        return prediction, self._for(model).explain(rows, label_index)

    def _for(self, model: Model) -> Explainer:
        with self._lock:
            if self._model is not model:
                try:
                    self._explainer = build_explainer(model)
                except ExplanationUnavailable as exc:
                    self._explainer = Unexplainable(exc)
                self._model = model
            assert self._explainer is not None
            return self._explainer


def build_explainer(model: Model) -> Explainer:
    """TreeSHAP for an ONNX tree ensemble that carries node counts; otherwise Shapley values."""
    if model.format == "onnx" and model.path is not None:
        from ..model.onnx_reader import OnnxReadError, read_graph
        from .tree_shap import TreeShap, Unsupported, find_tree_ensemble

        try:
            tree = TreeShap(find_tree_ensemble(read_graph(model.path.read_bytes())), model.card.n_features)
            _check_tree_reading(tree, model)
            log.info("explanations: exact TreeSHAP over %d trees", tree.n_trees)
            return TreeExplainer(tree)
        except (OnnxReadError, Unsupported) as exc:
            log.info("explanations: model-agnostic Shapley values, not TreeSHAP: %s", exc)
    baseline = _baseline(model.card)
    log.info("explanations: model-agnostic Shapley values against the training means")
    return ShapleyExplainer(model, baseline)


def _check_tree_reading(tree: TreeShap, model: Model) -> None:
    from .tree_shap import Unsupported

    rows = _check_rows(model.card)
    prediction = model.predict(rows)
    expected = prediction.probabilities if prediction.probabilities is not None else prediction.labels[:, None]
    expected = np.asarray(expected, dtype=np.float64)
    actual = tree.outputs(rows)
    scale = 1.0 if model.card.is_classifier else max(1.0, float(np.abs(expected).max()))
    if actual.shape != expected.shape:
        raise Unsupported(f"the trees give {actual.shape[1]} outputs, onnxruntime {expected.shape[1]}")
    difference = float(np.abs(actual - expected).max()) / scale
    if difference > _CHECK_TOLERANCE:
        raise Unsupported(f"the trees as read differ from onnxruntime's outputs by {difference:.3g}")


def _check_rows(card: ModelCard) -> np.ndarray:
    """The training means, and rows drawn uniformly over each feature's training range."""
    rng = np.random.default_rng(0)
    ref = [card.reference.get(name, {}) for name in card.feature_names]
    low = np.array([float(r.get("min", -1.0)) for r in ref])
    high = np.array([float(r.get("max", 1.0)) for r in ref])
    mean = np.array([float(r.get("mean", 0.0)) for r in ref])
    rows = np.vstack([mean, rng.uniform(low, high, size=(_CHECK_ROWS - 1, card.n_features))])
    return rows.astype(np.float32)


def _baseline(card: ModelCard) -> np.ndarray:
    missing = [name for name in card.feature_names if "mean" not in card.reference.get(name, {})]
    if missing:
        raise ExplanationUnavailable(
            f"the model card has no training mean for {', '.join(map(repr, missing[:5]))}: model-agnostic "
            "explanations measure each feature against the training means; export the model with "
            "scripts/export_onnx.py (or add them to its card's reference statistics)"
        )
    return np.array([float(card.reference[name]["mean"]) for name in card.feature_names])


def explanation_body(explanation: Explanation, prediction: Prediction, card: ModelCard) -> dict[str, Any]:
    """The `/explain` answer: per row the attributions by feature name, the base value and
    the output they add up to, the prediction and (for a classifier) the class explained."""
    names = card.feature_names
    labels = np.asarray(prediction.labels)
    # float32 scalars stay NumPy's, so they are written as /predict writes them (189.31235,
    # not 189.31234741210938); orjson takes no NumPy integer scalars.
    labels = labels.tolist() if labels.dtype.kind in "iub" else labels
    rows = []
    for r, attributions in enumerate(explanation.attributions.tolist()):
        row: dict[str, Any] = {"prediction": labels[r]}
        if explanation.label_index is not None:
            k = int(explanation.label_index[r])
            row["class"] = card.class_labels[k] if k < len(card.class_labels) else k
        row["output"] = float(explanation.outputs[r])
        row["base_value"] = float(explanation.base_values[r])
        row["attributions"] = dict(zip(names, attributions))
        rows.append(row)
    return {
        "explanations": rows,
        "method": explanation.method,
        "output_space": explanation.output_space,
        "model": {"name": card.name, "version": card.version},
    }


def usage(card: ModelCard) -> dict[str, Any]:
    """GET /explain for API clients: how to ask, with a row of the training means to try
    (a browser gets the page that does this instead)."""
    stats = card.reference
    means = {name: stats[name]["mean"] for name in card.feature_names if "mean" in stats.get(name, {})}
    return {
        "explain": "POST /explain with a body of POST /predict; POST /v1/models/{name}:explain for KServe V1",
        "page": "GET /explain with Accept: text/html, in a browser",
        "openapi": "/openapi.json",
        "feature_names": list(card.feature_names),
        "example": {"features": means} if len(means) == card.n_features else None,
    }
