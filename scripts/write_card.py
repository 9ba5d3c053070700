#!/usr/bin/env python3
"""Write the model card of a joblib or skops model, the JSON file warmstart reads beside it.

    python scripts/write_card.py models/my_model.joblib sample.csv \
        [--target label] [--name my-model] [--version 3]

writes models/my_model.card.json (the model's name with `.card.json` for its extension).
The CSV is a sample of the training data, read as scripts/export_onnx.py reads it: its
header gives the feature names in training order, a --target column is dropped, and its
per-feature statistics become the card's drift reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export_onnx import card_or_exit, read_sample, write_sidecar_card


def load(path: Path):  # -> a fitted estimator
    if path.suffix == ".skops":
        import skops.io as sio

        # Your own file, loaded here only to read its classes and feature count; the server
        # still checks its types against SKOPS_TRUSTED.
        return sio.load(path, trusted=sio.get_untrusted_types(file=path))
    import joblib

    return joblib.load(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a .joblib, .pkl or .skops file holding a fitted estimator")
    parser.add_argument("sample", type=Path, help="CSV sample of the training data, header = feature names")
    parser.add_argument("--target", help="a label column in the CSV to drop")
    parser.add_argument("--name", help="model name (default: the model file's stem)")
    parser.add_argument("--version", default="1", help="model version (default: 1)")
    args = parser.parse_args(argv)

    estimator = load(args.model)
    x, names = read_sample(args.sample, args.target)
    n_in = getattr(estimator, "n_features_in_", len(names))
    if n_in != len(names):
        raise SystemExit(f"{args.sample}: {len(names)} feature columns, but the model takes {n_in}")
    card = card_or_exit(estimator, x, names, args.name or args.model.stem, args.version)
    path = write_sidecar_card(card, args.model)
    print(f"wrote {path} ({card.task}, {card.n_features} features)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
