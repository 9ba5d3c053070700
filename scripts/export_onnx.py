#!/usr/bin/env python3
r"""Export a scikit-learn model to ONNX with a warmstart model card in its metadata.

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
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from func.atomic_file import write_atomically  # noqa: E402
from func.model.card import CardError, ModelCard, sidecar_path  # noqa: E402
from func.model.export import MAX_DIFFERENCE, ExportError, build_card, max_difference, to_onnx_bytes  # noqa: E402
from func.model.forest import forest_path, write_forest  # noqa: E402


def write_model(estimator: Any, card: ModelCard, x: np.ndarray, out: Path) -> float:
    """Convert, check against the original on x, and write to `out` only if the check
    passes (the difference is at most MAX_DIFFERENCE); return the difference either way.

    `out` may be the model being served: it is replaced in one rename, by a complete
    file, or left as it was. A tree ensemble's forest file (func/model/forest.py), which
    the server answers from while onnxruntime builds its session, is written beside it."""
    data = to_onnx_bytes(estimator, card)
    diff = max_difference(estimator, data, x, card.is_classifier)
    if diff <= MAX_DIFFERENCE:
        write_atomically(out, data)
        why_not = write_forest(out, data, hashlib.sha256(data).hexdigest())
        if why_not is None:
            print(f"wrote {forest_path(out)}: the server answers from it while onnxruntime starts")
        else:
            print(f"no forest file beside {out}, onnxruntime alone will serve it: {why_not}")
    return diff


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


def card_or_exit(estimator: Any, x: np.ndarray, names: list[str], name: str, version: str) -> ModelCard:
    """build_card, or exit naming what the card cannot hold (a name with '/', say)."""
    try:
        return build_card(estimator, x, names, name, version)
    except CardError as exc:
        raise SystemExit(f"error: model card: {exc}") from None


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
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is not None and list(fitted) != names:
        raise SystemExit(
            f"{args.sample}: the feature columns are {', '.join(names)}; the model was fitted on "
            f"{', '.join(map(str, fitted))}, in that order"
        )
    card = card_or_exit(estimator, x, names, args.name or args.out.stem, args.version)
    try:
        diff = write_model(estimator, card, x, args.out)
    except ExportError as exc:
        print(f"error: {exc}; {args.out} was not written", file=sys.stderr)
        return 1
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
