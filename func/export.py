"""scikit-learn estimator -> ONNX model with a warmstart card: what training code shares.

The retraining job (func/retrain.py) and the scripts (scripts/train.py, export_onnx.py)
both build cards and convert here. scikit-learn, skl2onnx and onnx are imported inside
the functions: the serving path never imports this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .card import CARD_METADATA_KEY, ModelCard, reference_statistics, utc_now

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
    return ModelCard(
        name=name,
        version=version,
        task="classification" if classes is not None else "regression",
        feature_names=tuple(feature_names),
        class_labels=tuple(c.item() if hasattr(c, "item") else c for c in classes) if classes is not None else (),
        reference=reference_statistics(x, feature_names),
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
    onnx.helper.set_model_props(onx, {CARD_METADATA_KEY: card.to_json()})
    onx.doc_string = f"{card.name} {card.version}: {card.description}"
    return onx.SerializeToString()


def max_difference(estimator: Any, onnx_bytes: bytes, x: np.ndarray, is_classifier: bool) -> float:
    """Largest difference between the original and the ONNX model on x: absolute for
    class probabilities (inf if a label differs), relative to the scale of the targets
    (at least 1) for a regressor, since ONNX computes in float32."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
    if is_classifier:
        expected = estimator.predict_proba(x)
        actual = outputs[1]
        if not np.array_equal(estimator.predict(x), outputs[0]):
            return float("inf")
    else:
        expected = estimator.predict(x)
        actual = outputs[0].reshape(expected.shape)
        return float(np.max(np.abs(expected - actual)) / max(1.0, float(np.max(np.abs(expected)))))
    return float(np.max(np.abs(expected - actual)))


def with_card(onnx_bytes: bytes, card: ModelCard) -> bytes:
    """The same ONNX model with `card` in its metadata in place of the one it has."""
    import onnx

    model = onnx.load_model_from_string(onnx_bytes)
    props = {p.key: p.value for p in model.metadata_props}
    props[CARD_METADATA_KEY] = card.to_json()
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()
