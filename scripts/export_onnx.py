#!/usr/bin/env python3
"""Export a scikit-learn model to ONNX with a warmstart model card in its metadata.

    python scripts/export_onnx.py model.joblib sample.csv models/model.onnx \
        [--target label] [--name my-model] [--version 3]

The CSV is a sample of the training data: its header gives the feature names, in the
order the model was trained on (a --target column is dropped). The ONNX model must agree
with the original on that sample: the largest probability difference (for a regressor,
the largest difference relative to the targets' scale) is printed; when it exceeds 1e-4
nothing is written and the exit status is 1. The output is replaced in one rename, so it
may be the model being served. The sample's statistics become the card's drift reference.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from func.card import (  # noqa: E402
    CARD_METADATA_KEY,
    ModelCard,
    prediction_reference,
    reference_statistics,
    sidecar_path,
    utc_now,
)

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

    func/tree_shap.py needs these counts for exact path-dependent TreeSHAP; onnxruntime
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


def write_model(estimator: Any, card: ModelCard, x: np.ndarray, out: Path) -> float:
    """Convert, check against the original on x, and write to `out` only if the check
    passes (the difference is at most MAX_DIFFERENCE); return the difference either way.

    `out` may be the model being served: it is replaced in one rename, by a complete
    file, or left as it was."""
    data = to_onnx_bytes(estimator, card)
    diff = max_difference(estimator, data, x, card.is_classifier)
    if diff <= MAX_DIFFERENCE:
        write_atomically(out, data)
    return diff


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_sidecar_card(card: ModelCard, model_path: Path) -> Path:
    path = sidecar_path(model_path)
    path.write_text(card.to_json() + "\n")
    return path


def read_sample(csv_path: Path, target: str | None) -> tuple[np.ndarray, list[str]]:
    with csv_path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise SystemExit(f"{csv_path}: empty file; expected a header of feature names")
        rows = list(reader)
    if target is not None:
        if target not in header:
            raise SystemExit(f"{csv_path}: --target {target!r} is not a column ({', '.join(header)})")
        keep = [i for i, h in enumerate(header) if h != target]
    else:
        keep = list(range(len(header)))
    names = [header[i] for i in keep]
    try:
        x = np.array([[float(row[i]) for i in keep] for row in rows], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise SystemExit(f"{csv_path}: every row needs a number in each feature column ({exc})") from None
    if len(x) == 0:
        raise SystemExit(f"{csv_path}: no data rows")
    return x, names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a joblib file holding a fitted scikit-learn estimator")
    parser.add_argument("sample", type=Path, help="CSV sample of the training data, header = feature names")
    parser.add_argument("out", type=Path, help="where to write the .onnx file")
    parser.add_argument("--target", help="a label column in the CSV to drop")
    parser.add_argument("--name", help="model name (default: the output file's stem)")
    parser.add_argument("--version", default="1", help="model version (default: 1)")
    args = parser.parse_args(argv)

    import joblib

    estimator = joblib.load(args.model)
    x, names = read_sample(args.sample, args.target)
    n_in = getattr(estimator, "n_features_in_", len(names))
    if n_in != len(names):
        raise SystemExit(f"{args.sample}: {len(names)} feature columns, but the model takes {n_in}")
    card = build_card(estimator, x, names, args.name or args.out.stem, args.version)
    diff = write_model(estimator, card, x, args.out)
    if diff > MAX_DIFFERENCE:
        print(
            f"error: the ONNX model disagrees with the original by {diff:.3g} > {MAX_DIFFERENCE} "
            f"on {len(x)} rows; {args.out} was not written",
            file=sys.stderr,
        )
        return 1
    print(
        f"wrote {args.out} ({card.task}, {card.n_features} features); "
        f"max difference from the original on {len(x)} rows: {diff:.3g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
