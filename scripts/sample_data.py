#!/usr/bin/env python3
"""Write sample batch inputs from the breast-cancer data the default model was trained
on, so the README's batch examples run on a fresh clone:

    .venv/bin/python scripts/sample_data.py [--out data] [--rows 1000] [--parts 4]

OUT/patients.csv holds --rows rows: a patient_id column, then the 30 features by name.
OUT/parts/part-000.parquet, ... hold the same rows split into --parts files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def sample_table(rows: int):  # -> pyarrow.Table
    import pyarrow as pa
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = data.data[np.arange(rows) % len(data.data)]
    columns = {"patient_id": [f"p{i:05d}" for i in range(rows)]}
    columns.update({str(name): x[:, j] for j, name in enumerate(data.feature_names)})
    return pa.table(columns)


def main(argv: list[str] | None = None) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data"), help="folder to write into (default: data)")
    parser.add_argument("--rows", type=int, default=1000, help="rows in all (default 1000)")
    parser.add_argument("--parts", type=int, default=4, help="Parquet part files (default 4)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.parts < 1:
        parser.error("--rows and --parts must be at least 1")

    table = sample_table(args.rows)
    args.out.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(table, args.out / "patients.csv")
    parts = args.out / "parts"
    parts.mkdir(exist_ok=True)
    bounds = np.linspace(0, args.rows, args.parts + 1).astype(int)
    for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(start, stop - start), parts / f"part-{i:03d}.parquet")
    print(f"wrote {args.out / 'patients.csv'} ({args.rows} rows) and {args.parts} part files in {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
