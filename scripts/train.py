#!/usr/bin/env python3
"""Train the default model: a random forest on scikit-learn's bundled breast-cancer data.

    python scripts/train.py [--out models/model.onnx] [--joblib] [--skops]

Writes the ONNX model with its card in the metadata; --joblib and --skops also write
those forms beside it, each with a `model.card.json`. Deterministic: the same command
gives the same predictions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_onnx import MAX_DIFFERENCE, build_card, write_model, write_sidecar_card  # noqa: E402

NAME = "breast-cancer-rf"
VERSION = "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/model.onnx"))
    parser.add_argument("--joblib", action="store_true", help="also write model.joblib")
    parser.add_argument("--skops", action="store_true", help="also write model.skops")
    args = parser.parse_args(argv)

    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    names = [str(n) for n in data.feature_names]
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.2, random_state=0, stratify=data.target
    )
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1)
    model.fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    card = build_card(
        model,
        x_train,
        names,
        NAME,
        VERSION,
        description="Random forest (100 trees, depth 8) on the Wisconsin breast-cancer data; "
        "class 0 = malignant, 1 = benign.",
        metrics={"test_accuracy": round(accuracy, 4)},
    )
    diff = write_model(model, card, data.data, args.out)
    print(f"wrote {args.out}: test accuracy {accuracy:.4f}, max ONNX difference {diff:.3g}")
    if diff > MAX_DIFFERENCE:
        print(f"error: the ONNX model disagrees with scikit-learn by {diff:.3g}", file=sys.stderr)
        return 1
    if args.joblib:
        import joblib

        path = args.out.with_suffix(".joblib")
        joblib.dump(model, path)
        write_sidecar_card(card, path)
        print(f"wrote {path}")
    if args.skops:
        import skops.io as sio

        path = args.out.with_suffix(".skops")
        sio.dump(model, path)
        write_sidecar_card(card, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
