#!/usr/bin/env python3
"""Batch-job throughput and memory: warmstart's warmstart.batch.v1 against onnxruntime
called directly in-process on the same rows.

    .venv/bin/python loadtests/bench_batch.py [--rows 100000 1000000] [--repeat 3]
    .venv/bin/python loadtests/bench_batch.py --cpus [N ...] [--rows 1000000] [--repeat 3]

(--cpus measures 1M rows unless --rows names another size: at 100k rows a fresh worker's
start outweighs the job.)

For each size and format (CSV, Parquet) a fresh server (one worker) runs the job, so the
worker's peak RSS (VmHWM) belongs to that job alone. Rows/s is rows over the job time the
server reports; the direct figure is onnxruntime on the same rows already in memory (the
first million at most), with warmstart's session options and with onnxruntime's defaults.
Each repeat measures onnxruntime alone and then each job, so a neighbour's load falls on
both sides of a ratio. CPU seconds are the worker's (user + system) over the job and this
process's over onnxruntime alone: a job's CPU against onnxruntime's is what its rows/s
would be against onnxruntime's on idle cores, whatever else shares them. The CPU of the
job's own thread (reading, decoding Parquet, cutting a CSV into pieces) is the serial
part: 1M rows over it is what no number of cores would take a job past. Loopback only;
bounded by --repeat. Writes loadtests/results/batch.json.

--cpus is the scaling curve: for N = 1, 2, 4, ... up to the CPUs this process may use
(or the N given), the server runs pinned to N of them (its affinity) with
INFERENCE_THREADS=N, and onnxruntime alone runs pinned to the same N on N threads; the
sizes and repeats interleave. Writes loadtests/results/batch_scaling.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtests"))

import results_file  # noqa: E402

from tests.support.server import ServerProcess  # noqa: E402

MODEL = ROOT / "models" / "model.onnx"


def make_table(rows: int, names: list[str], seed: int = 0) -> pa.Table:
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data
    rng = np.random.default_rng(seed)
    picked = x[rng.integers(0, len(x), rows)] * rng.uniform(0.95, 1.05, (rows, x.shape[1]))
    columns = {"id": np.arange(rows)}
    columns.update({name: picked[:, j] for j, name in enumerate(names)})
    return pa.table(columns)


def workers(master_pid: int) -> list[str]:
    return Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()


def worker_peak_rss_mb(master_pid: int) -> float:
    peaks = []
    for pid in workers(master_pid):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def workers_cpu_s(master_pid: int) -> float:
    """User + system CPU seconds the workers have spent so far."""
    total = 0
    for pid in workers(master_pid):
        # The fields after the command's ')': utime and stime are the 12th and 13th.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def threads_cpu_s(pid: int) -> dict[str, float]:
    """User + system CPU seconds of each thread of a process so far, by thread id."""
    spent = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:  # ended meanwhile
            continue
        spent[tid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return spent


def job_thread_cpu_s(before: dict[str, float], after: dict[str, float]) -> float:
    """The CPU of the thread that ran the job: of the threads alive before and after it
    (the job's pool and writer threads live only as long as the job), the busiest. What
    it does (reading the input, decoding Parquet, cutting a CSV) no number of cores
    shortens: rows over it bound a job on any machine."""
    return max(after[tid] - spent for tid, spent in before.items() if tid in after)


def run_job(src: Path, out: Path, work: Path, job_id: str, cpus: list[int] | None = None) -> dict:
    """The job on a fresh one-worker server; with `cpus`, pinned to them, one inference
    thread each."""
    env = {"BATCH_ALLOW": f"{work}/", "WORKERS": "1"}
    cmd = None
    if cpus is not None:
        env["INFERENCE_THREADS"] = str(len(cpus))
        cmd = ["taskset", "--cpu-list", ",".join(map(str, cpus)), sys.executable, "-m", "func"]
    server = ServerProcess(env, cmd=cmd, log_dir=work).start()
    try:
        server.wait_ready()
        event = CloudEvent(
            {"type": "warmstart.batch.v1", "source": "/bench", "id": job_id}, {"input": str(src), "output": str(out)}
        )
        headers, body = to_binary(event)
        cpu_before = workers_cpu_s(server.proc.pid)
        worker = int(workers(server.proc.pid)[0])
        threads_before = threads_cpu_s(worker)
        started = time.perf_counter()
        resp = requests.post(server.url + "/", data=body, headers=headers, timeout=600)
        wall = time.perf_counter() - started
        resp.raise_for_status()
        data = from_http(resp.headers, resp.content).data
        return {
            "rows": data["rows"],
            "job_s": data["duration_s"],
            "wall_s": wall,
            "cpu_s": workers_cpu_s(server.proc.pid) - cpu_before,
            "job_thread_cpu_s": job_thread_cpu_s(threads_before, threads_cpu_s(worker)),
            "peak_rss_mb": worker_peak_rss_mb(server.proc.pid),
        }
    finally:
        server.kill()


class Direct:
    """onnxruntime alone on the same rows in memory (the first million at most), in chunks
    of 65,536 rows, one session kept warm across passes."""

    CHUNK = 65_536

    def __init__(self, x: np.ndarray, options: ort.SessionOptions | None) -> None:
        self.session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.x = x[:1_000_000]
        self.session.run(None, {self.name: self.x[: self.CHUNK]})

    def run(self) -> tuple[float, float]:
        """One pass: (rows/s, CPU seconds per million rows)."""
        cpu, started = time.process_time(), time.perf_counter()
        for i in range(0, len(self.x), self.CHUNK):
            self.session.run(None, {self.name: self.x[i : i + self.CHUNK]})
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        return len(self.x) / wall, cpu * 1e6 / len(self.x)


def direct_rows_per_s(x: np.ndarray, options: ort.SessionOptions | None, repeat: int) -> float:
    direct = Direct(x, options)
    return statistics.median(direct.run()[0] for _ in range(repeat))


def threads_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def pinned_direct_rows_per_s(x: np.ndarray, cpus: list[int], repeat: int) -> float:
    """onnxruntime alone on `cpus`, a thread each; this process's affinity is put back after."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return direct_rows_per_s(x, threads_options(len(cpus)), repeat)
    finally:
        os.sched_setaffinity(0, allowed)


def cpu_counts(given: list[int]) -> list[int]:
    """The N to measure: those given, else 1, 2, 4, ... and the CPUs this process may use."""
    most = len(os.sched_getaffinity(0))
    if given:
        too_many = [n for n in given if not 1 <= n <= most]
        if too_many:
            raise SystemExit(f"--cpus {too_many}: this process may use 1 to {most} CPUs")
        return sorted(set(given))
    counts = [1 << i for i in range(most.bit_length()) if 1 << i <= most]
    return counts if counts[-1] == most else [*counts, most]


def write_inputs(rows: int, names: list[str], work: Path) -> tuple[pa.Table, dict[str, Path]]:
    tab = make_table(rows, names)
    files = {"csv": work / f"in-{rows}.csv", "parquet": work / f"in-{rows}.parquet"}
    pacsv.write_csv(tab, files["csv"])
    pq.write_table(tab, files["parquet"])
    return tab, files


def features(tab: pa.Table, names: list[str]) -> np.ndarray:
    return np.column_stack([tab.column(n).to_numpy() for n in names]).astype(np.float32)


def scaling(rows: int, counts: list[int], repeat: int, names: list[str], out: Path) -> None:
    """Rows/s of each format's job and of onnxruntime alone on N CPUs, for each N."""
    allowed = sorted(os.sched_getaffinity(0))
    samples: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        tab, files = write_inputs(rows, names, work)
        x = features(tab, names)
        del tab
        for r in range(repeat):
            for n in counts:
                cpus = allowed[:n]
                samples.setdefault(("direct", n), []).append(pinned_direct_rows_per_s(x, cpus, 1))
                for fmt, src in files.items():
                    job = run_job(src, work / f"out.{fmt}", work, f"{fmt}-{n}-{r}", cpus)
                    samples.setdefault((fmt, n), []).append(rows / job["job_s"])
    results = []
    for n in counts:
        entry = {"cpus": n, "rows": rows, **{f"{k}_rows_per_s": statistics.median(samples[k, n]) for k in KINDS}}
        for fmt in ("csv", "parquet"):
            entry[f"{fmt}_vs_direct"] = entry[f"{fmt}_rows_per_s"] / entry["direct_rows_per_s"]
        results.append(entry)
        print(
            f"{n:3} CPUs  CSV {entry['csv_rows_per_s']:>10,.0f} rows/s ({entry['csv_vs_direct']:.2f}x)  "
            f"Parquet {entry['parquet_rows_per_s']:>10,.0f} rows/s ({entry['parquet_vs_direct']:.2f}x)  "
            f"onnxruntime alone {entry['direct_rows_per_s']:>10,.0f} rows/s",
            flush=True,
        )
    results_file.write(out, {"rows": rows, "repeat": repeat, "results": results})
    plot(results, out.with_suffix(".png"))


def compare(rows: int, repeat: int, names: list[str], work: Path) -> list[dict]:
    """Each format's job against onnxruntime alone, on `rows` rows, the runs interleaved."""
    tab, files = write_inputs(rows, names, work)
    x = features(tab, names)
    del tab
    directs = {"1_thread": Direct(x, threads_options(1)), "default": Direct(x, None)}
    direct: dict[str, list[tuple[float, float]]] = {kind: [] for kind in directs}
    jobs: dict[str, list[dict]] = {fmt: [] for fmt in files}
    for i in range(repeat):
        for kind, runner in directs.items():
            direct[kind].append(runner.run())
        for fmt, src in files.items():
            jobs[fmt].append(run_job(src, work / f"out-{rows}.{fmt}", work, f"{fmt}-{rows}-{i}"))
    per_s = {kind: statistics.median(r[0] for r in runs) for kind, runs in direct.items()}
    cpu = {kind: statistics.median(r[1] for r in runs) for kind, runs in direct.items()}
    results = []
    for fmt, src in files.items():
        runs = jobs[fmt]
        job_s = statistics.median(r["job_s"] for r in runs)
        entry = {
            "format": fmt,
            "rows": rows,
            "input_mb": round(src.stat().st_size / 1e6, 1),
            "job_s": job_s,
            "rows_per_s": rows / job_s,
            "cpu_s_per_1m_rows": statistics.median(r["cpu_s"] for r in runs) * 1e6 / rows,
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "job_thread_cpu_s_per_1m_rows": statistics.median(r["job_thread_cpu_s"] for r in runs) * 1e6 / rows,
            "direct_rows_per_s_1_thread": per_s["1_thread"],
            "direct_rows_per_s_default_threads": per_s["default"],
            "direct_cpu_s_per_1m_rows_default_threads": cpu["default"],
        }
        entry["ratio_to_direct_1_thread"] = entry["rows_per_s"] / per_s["1_thread"]
        entry["ratio_to_direct_default"] = entry["rows_per_s"] / per_s["default"]
        entry["cpu_ratio_to_direct_default"] = cpu["default"] / entry["cpu_s_per_1m_rows"]
        results.append(entry)
        print(
            f"{fmt:8} {rows:>9,} rows  {entry['input_mb']:7.1f} MB  {job_s:6.2f} s  "
            f"{entry['rows_per_s']:>10,.0f} rows/s  peak RSS {entry['peak_rss_mb']:6.1f} MB  "
            f"direct {per_s['1_thread']:>10,.0f} (1 thread) {per_s['default']:>10,.0f} (default)  "
            f"ratio {entry['ratio_to_direct_1_thread']:.2f} / {entry['ratio_to_direct_default']:.2f}  "
            f"CPU s per 1M rows {entry['cpu_s_per_1m_rows']:.2f} against {cpu['default']:.2f} "
            f"({entry['cpu_ratio_to_direct_default']:.2f}), "
            f"on the job's thread {entry['job_thread_cpu_s_per_1m_rows']:.2f}",
            flush=True,
        )
    return results


KINDS = ("csv", "parquet", "direct")
LABELS = {"csv": "CSV job", "parquet": "Parquet job", "direct": "onnxruntime alone, same rows in memory"}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    counts = [e["cpus"] for e in results]
    for kind in KINDS:
        ax.plot(counts, [e[f"{kind}_rows_per_s"] / 1e3 for e in results], marker="o", label=LABELS[kind])
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set_xlabel("CPUs (affinity and INFERENCE_THREADS)")
    ax.set_ylabel("thousand rows/s")
    ax.set_ylim(bottom=0)
    ax.legend()
    machine = results_file.machine()["cpus"]
    ax.set_title(f"batch job throughput, {results[0]['rows']:,} rows, on a {machine}-CPU machine")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows", type=int, nargs="+", help="sizes to compare (100000 1000000); with --cpus, one size (1000000)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpus", type=int, nargs="*", help="scaling curve on these CPU counts (default 1, 2, 4...)")
    parser.add_argument("--out", type=Path, help="loadtests/results/batch.json, or batch_scaling.json with --cpus")
    args = parser.parse_args()

    meta = json.loads(ort.InferenceSession(str(MODEL)).get_modelmeta().custom_metadata_map["warmstart.card"])
    names = meta["feature_names"]
    results_dir = ROOT / "loadtests" / "results"
    if args.cpus is not None:
        counts = cpu_counts(args.cpus)
        rows = args.rows[0] if args.rows else 1_000_000
        scaling(rows, counts, args.repeat, names, args.out or results_dir / "batch_scaling.json")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        for rows in args.rows or [100_000, 1_000_000]:
            results += compare(rows, args.repeat, names, work)
    results_file.write(args.out or results_dir / "batch.json", {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
