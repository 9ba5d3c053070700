"""scikit-learn estimator -> ONNX model with a warmstart card: what training code shares.

The retraining job (func/retrain/job.py) and the scripts (scripts/train.py, export_onnx.py)
both build cards and convert here. scikit-learn, skl2onnx and onnx are imported inside
the functions: the serving path never imports this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .card import CARD_METADATA_KEY, ModelCard, prediction_reference, reference_statistics, utc_now

# Above this the exported model would change answers users see; float32 rounding of a
# tree ensemble's probabilities stays around 1e-7.
MAX_DIFFERENCE = 1e-4


def library_versions() -> dict[str, str]:
    import onnx
    import skl2onnx
    import sklearn

    return {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__, "onnx": onnx.__version__}


def build_card(
    estimator: Any,
    x: np.ndarray,
    feature_names: list[str],
    name: str,
    version: str,
    description: str = "",
    metrics: dict[str, float] | None = None,
) -> ModelCard:
    classes = getattr(estimator, "classes_", None)
    labels = tuple(c.item() if hasattr(c, "item") else c for c in classes) if classes is not None else ()
    return ModelCard(
        name=name,
        version=version,
        task="classification" if classes is not None else "regression",
        feature_names=tuple(feature_names),
        class_labels=labels,
        reference=reference_statistics(x, feature_names),
        prediction_reference=prediction_reference(estimator.predict(x), labels),
        libraries=library_versions(),
        created=utc_now(),
        description=description,
        metrics=metrics or {},
    )


def to_onnx_bytes(estimator: Any, card: ModelCard) -> bytes:
    """Convert with a single float input and plain probability tensor (no ZipMap)."""
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(estimator): {"zipmap": False}} if card.is_classifier else None
    onx = to_onnx(
        estimator,
        initial_types=[("input", FloatTensorType([None, card.n_features]))],
        options=options,
        target_opset=None,
    )
    store_node_counts(onx, estimator)
    onnx.helper.set_model_props(onx, {CARD_METADATA_KEY: card.to_json()})
    onx.doc_string = f"{card.name} {card.version}: {card.description}"
    return onx.SerializeToString()


def store_node_counts(onx: Any, estimator: Any) -> bool:
    """Write each tree node's training sample count into the TreeEnsemble node's
    `nodes_hitrates` (ONNX: "popularity of each node", which skl2onnx leaves at 1.0).

    func/explain/tree_shap.py needs these counts for exact path-dependent TreeSHAP; onnxruntime
    ignores them when predicting. Returns False, leaving the model as it was, when the
    estimator is not a scikit-learn tree model whose trees match the ONNX nodes one for
    one (explanations then use the model-agnostic estimate).
    """
    trees = _fitted_trees(estimator)
    nodes = [n for n in onx.graph.node if n.op_type in ("TreeEnsembleClassifier", "TreeEnsembleRegressor")]
    if trees is None or len(nodes) != 1:
        return False
    attributes = {a.name: a for a in nodes[0].attribute}
    counts = []
    for t, n, feature, mode in zip(
        attributes["nodes_treeids"].ints,
        attributes["nodes_nodeids"].ints,
        attributes["nodes_featureids"].ints,
        attributes["nodes_modes"].strings,
    ):
        tree = trees[t].tree_ if t < len(trees) else None
        if tree is None or n >= tree.node_count or (mode != b"LEAF" and tree.feature[n] != feature):
            return False
        counts.append(float(tree.weighted_n_node_samples[n]))
    hitrates = attributes.get("nodes_hitrates")
    if hitrates is None:
        import onnx

        hitrates = onnx.helper.make_attribute("nodes_hitrates", [1.0])
        nodes[0].attribute.append(hitrates)
    del hitrates.floats[:]
    hitrates.floats.extend(counts)
    return True


def _fitted_trees(estimator: Any) -> list[Any] | None:
    """The fitted scikit-learn trees in the order skl2onnx numbers them (a forest's
    estimators_, gradient boosting's stages by class), or None for other models."""
    if hasattr(estimator, "tree_"):
        return [estimator]
    found = getattr(estimator, "estimators_", None)
    if found is None:
        return None
    trees = list(np.ravel(np.asarray(found, dtype=object)))
    return trees if trees and all(hasattr(t, "tree_") for t in trees) else None


def max_difference(estimator: Any, onnx_bytes: bytes, x: np.ndarray, is_classifier: bool) -> float:
    """Largest difference between the original and the ONNX model on x: absolute for
    class probabilities, relative to the scale of the targets (at least 1) for a
    regressor, since ONNX computes in float32.

    A classifier's label may differ only on a tie: where the original's two highest
    probabilities are within MAX_DIFFERENCE of each other (scikit-learn's [0.5, 0.5] is
    [0.49999994, 0.50000006] in float32, and argmax picks the other class). A label that
    differs anywhere else makes the difference inf."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
    if not is_classifier:
        expected = estimator.predict(x)
        actual = outputs[0].reshape(expected.shape)
        return float(np.max(np.abs(expected - actual)) / max(1.0, float(np.max(np.abs(expected)))))
    expected = estimator.predict_proba(x)
    flipped = np.asarray(estimator.predict(x)) != np.asarray(outputs[0]).reshape(-1)
    if flipped.any():
        top_two = np.sort(expected[flipped], axis=1)[:, -2:]
        if np.any(top_two[:, 1] - top_two[:, 0] > MAX_DIFFERENCE):
            return float("inf")
    return float(np.max(np.abs(expected - outputs[1])))


def with_card(onnx_bytes: bytes, card: ModelCard) -> bytes:
    """The same ONNX model with `card` in its metadata in place of the one it has."""
    import onnx

    model = onnx.load_model_from_string(onnx_bytes)
    props = {p.key: p.value for p in model.metadata_props}
    props[CARD_METADATA_KEY] = card.to_json()
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()
