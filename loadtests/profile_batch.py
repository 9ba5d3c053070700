#!/usr/bin/env python3
"""Where a batch job's CPU goes, stage by stage, in CPU seconds per million rows.

    .venv/bin/python loadtests/profile_batch.py [--rows 1000000] [--rounds 3]

The input is loadtests/bench_batch.py's (an id and 30 float64 features a row), as CSV and
as Parquet. Each stage runs alone, in this process, on one thread, as a job runs it:
decoding the input (Parquet in 16,384-row batches; CSV cut into pieces, then each piece
parsed), turning feature columns into float32 rows, onnxruntime on one thread, the
prediction ids, and encoding the output. Beside them, onnxruntime alone on the same
rows with its default threads, as bench_batch.py measures it. A job's CPU is at least
the sum of its stages, so on N cores its rows/s against onnxruntime alone's is at most
onnxruntime's CPU over that sum (when onnxruntime alone keeps N cores busy). Stages are
interleaved round by round; medians. Writes loadtests/results/batch_profile.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtests"))

from func.__main__ import default_arrow_allocator  # noqa: E402

default_arrow_allocator()  # pyarrow's allocator in the server, chosen before pyarrow loads

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import results_file  # noqa: E402
from bench_batch import MODEL, Direct, features, threads_options, write_inputs  # noqa: E402

from func.batch import csv_pieces, job  # noqa: E402
from func.batch.columns import column_values, numbered_ids  # noqa: E402
from func.codecs.rows import rows_from_columns  # noqa: E402
from func.model.card import ModelCard  # noqa: E402


def cpu_s(step: Callable[[], Any]) -> float:
    started = time.process_time()
    step()
    return time.process_time() - started


class Stages:
    """The job's stages over one input, each a function of no arguments."""

    def __init__(self, files: dict[str, Path], card: ModelCard) -> None:
        self.files, self.card = files, card
        self.session = ort.InferenceSession(str(MODEL), threads_options(1), providers=["CPUExecutionProvider"])
        parquet = pq.ParquetFile(files["parquet"])
        self.batches = list(parquet.iter_batches(batch_size=job.CHUNK_ROWS, use_threads=False))
        self.columns = [self.feature_columns(b) for b in self.batches]
        self.rows = self.to_rows()
        self.predictions = self.predict()
        self.outputs = self.output_batches()

    def parquet_decode(self) -> int:
        """The batches as a job reads them, each let go before the next."""
        parquet = pq.ParquetFile(self.files["parquet"], buffer_size=job.PARQUET_BUFFER_BYTES, pre_buffer=False)
        return sum(b.num_rows for b in parquet.iter_batches(batch_size=job.CHUNK_ROWS, use_threads=False))

    def csv_cut(self) -> int:
        with open(self.files["csv"], "rb") as stream:
            return sum(len(piece) for piece in csv_pieces.pieces(stream))

    def csv_parse(self) -> int:
        """Every piece parsed as a job parses them (the cutting is csv_cut's)."""
        with open(self.files["csv"], "rb") as stream:
            pieces = [bytes(piece) for piece in csv_pieces.pieces(stream)]
        nulls = {"null_values": [""], "strings_can_be_null": True}
        typed = pacsv.ConvertOptions(column_types={name: pa.float64() for name in self.card.feature_names}, **nulls)
        started = time.process_time()
        first = csv_pieces.parse(pieces[0], typed)
        convert = pacsv.ConvertOptions(column_types=dict(zip(first.schema.names, first.schema.types)), **nulls)
        rows = first.num_rows + sum(csv_pieces.parse(p, convert, first.schema.names).num_rows for p in pieces[1:])
        self.csv_parse_s = time.process_time() - started
        return rows

    def feature_columns(self, batch: Any) -> dict[str, np.ndarray]:
        names = self.card.feature_names
        return {n: column_values(batch.column(i)) for i, n in enumerate(batch.schema.names) if n in names}

    def to_rows(self) -> list[np.ndarray]:
        names = self.batches[0].schema.names
        return [rows_from_columns(c, names, self.card, "profile") for c in self.columns]

    def predict(self) -> list[Any]:
        return [self.session.run(None, {"input": rows}) for rows in self.rows]

    def prediction_ids(self) -> list[Any]:
        """As a job makes them (func/batch/job.py, _predict_chunk)."""
        ids, first = [], 0
        for rows in self.rows:
            ids.append(numbered_ids("0123456789abcdef/", first, len(rows)))
            first += len(rows)
        return ids

    def output_batches(self) -> list[Any]:
        out = []
        for batch, ids, (labels, probabilities) in zip(self.batches, self.prediction_ids(), self.predictions):
            columns = {"id": batch.column(0), "prediction_id": ids, "prediction": pa.array(labels)}
            for j in range(probabilities.shape[1]):
                columns[f"probability_{j}"] = pa.array(probabilities[:, j])
            out.append(pa.RecordBatch.from_pydict(columns))
        return out

    def parquet_write(self) -> None:
        writer = job._writer("parquet", pa.BufferOutputStream())
        for batch in self.outputs:
            writer.write(writer.encode(batch))
        writer.close()

    def csv_encode(self) -> None:
        writer = job._writer("csv", pa.BufferOutputStream())
        for batch in self.outputs:
            writer.write(writer.encode(batch))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "batch_profile.json")
    args = parser.parse_args()

    meta = ort.InferenceSession(str(MODEL)).get_modelmeta().custom_metadata_map["warmstart.card"]
    card = ModelCard.from_json(meta, str(MODEL))
    with tempfile.TemporaryDirectory(prefix="profile-batch-") as tmp:
        tab, files = write_inputs(args.rows, list(card.feature_names), Path(tmp))
        x = features(tab, list(card.feature_names))
        del tab
        stages = Stages(files, card)
        direct = Direct(x, None)
        steps: dict[str, Callable[[], Any]] = {
            "onnxruntime alone, default threads": lambda: direct.run(),
            "Parquet: decode": stages.parquet_decode,
            "CSV: cut into pieces (the job's thread)": stages.csv_cut,
            "feature columns to float32 rows": stages.to_rows,
            "onnxruntime, one thread per chunk": stages.predict,
            "prediction ids": stages.prediction_ids,
            "Parquet: write the output": stages.parquet_write,
            "CSV: encode the output": stages.csv_encode,
        }
        samples: dict[str, list[float]] = {name: [] for name in [*steps, "CSV: parse the pieces"]}
        for _ in range(args.rounds):
            for name, step in steps.items():
                samples[name].append(cpu_s(step))
            stages.csv_parse()
            samples["CSV: parse the pieces"].append(stages.csv_parse_s)
    per_1m = {name: statistics.median(s) * 1e6 / args.rows for name, s in samples.items()}
    common = ["feature columns to float32 rows", "onnxruntime, one thread per chunk", "prediction ids"]
    jobs = {
        "parquet": ["Parquet: decode", *common, "Parquet: write the output"],
        "csv": ["CSV: cut into pieces (the job's thread)", "CSV: parse the pieces", *common, "CSV: encode the output"],
    }
    alone = per_1m["onnxruntime alone, default threads"]
    for name, value in per_1m.items():
        print(f"{name:45} {value:6.3f} CPU s per 1M rows")
    bounds = {}
    for fmt, names in jobs.items():
        total = sum(per_1m[n] for n in names)
        bounds[fmt] = {"stages_cpu_s_per_1m_rows": total, "at_most_vs_onnxruntime_alone": alone / total}
        print(f"{fmt:8} stages sum {total:.3f} CPU s per 1M rows: at most {alone / total:.2f}x onnxruntime alone")
    payload = {"rows": args.rows, "rounds": args.rounds, "cpu_s_per_1m_rows": per_1m, "jobs": bounds}
    results_file.write(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
