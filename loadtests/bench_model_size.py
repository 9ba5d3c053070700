#!/usr/bin/env python3
"""Cold start against model size: exec to the first prediction answered, for random
forests of fully grown trees on 30 features, up to about 500 MB of ONNX.

    .venv/bin/python loadtests/bench_model_size.py [--trees 10,50,200,800,2000,4000]
        [--runs 3] [--rows 12000] [--out loadtests/results/model_size.json]

Per size and run, interleaved (the order rotates run by run), each server started cold
and killed after:
- warmstart, ONNX only: `python -m func` on model.onnx, one worker (as the peers run);
- warmstart + forest: the same with model.forest beside it (func/model/forest.py); also
  the time until onnxruntime's session has taken over ("full speed", GET /model);
- naive FastAPI + joblib (loadtests/baseline/naive_app.py, uvicorn);
- KServe ModelServer + joblib (loadtests/baseline/kserve_app.py, from loadtests/.peers);
- reading the file's bytes (the ONNX file and the joblib file), the floor.
Medians of --runs. The page cache is warm: every file has just been written or read.

Models: one forest of --base-trees trees is trained; a smaller size takes its first
trees, a larger one repeats them (in ONNX, joblib and forest alike): load times grow with
the nodes to load, and training thousands of distinct trees on two cores would take most
of an hour. They are cached in the temp dir (warmstart-bench-model-size), keyed by the
options. Measuring holds /tmp/warmstart-bench.lock, so benchmarks never overlap.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import hashlib
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_file  # noqa: E402
from bench import LOADTESTS, System, kserve_peer, naive_uvicorn  # noqa: E402

N_FEATURES = 30
LOCK = Path("/tmp/warmstart-bench.lock")
WARM_ONNX, WARM_FOREST, NAIVE, KSERVE = (
    "warmstart, ONNX only",
    "warmstart + forest",
    "naive FastAPI + joblib",
    "KServe + joblib",
)
FULL_SPEED = "warmstart + forest, onnxruntime answering"
READ_ONNX, READ_JOBLIB = "read the ONNX bytes", "read the joblib bytes"


def base_forest(rows: int, trees: int, cache: Path) -> tuple[Any, np.ndarray]:
    """The trained forest (cached as joblib) and a sample of its training rows."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, N_FEATURES))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=rows) > 0).astype(int)
    path = cache / "base.joblib"
    if path.exists():
        return joblib.load(path), x[:1000]
    started = time.perf_counter()
    forest = RandomForestClassifier(n_estimators=trees, random_state=0, n_jobs=2).fit(x, y)
    joblib.dump(forest, path)
    print(f"trained {trees} fully grown trees on {rows} rows in {time.perf_counter() - started:.0f} s")
    return forest, x[:1000]


def forest_of(base: Any, n_trees: int) -> Any:
    """`base` with n_trees trees: its first ones, or its trees repeated (distinct copies)."""
    forest = copy.copy(base)
    trees = base.estimators_
    forest.estimators_ = [
        trees[i] if n_trees <= len(trees) else copy.deepcopy(trees[i % len(trees)]) for i in range(n_trees)
    ]
    forest.n_estimators = n_trees
    return forest


def repeated_onnx(onnx_bytes: bytes, copies: int) -> bytes:
    """The ONNX forest with its trees repeated `copies` times, weights divided to keep
    the same probabilities: what converting the repeated forest gives, without skl2onnx's
    minutes of Python per million nodes."""
    import onnx

    model = onnx.load_model_from_string(onnx_bytes)
    (node,) = [n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier"]
    attrs = {a.name: a for a in node.attribute}
    n_trees = int(max(attrs["nodes_treeids"].ints)) + 1
    for name in ("nodes_treeids", "class_treeids"):
        ids = np.asarray(attrs[name].ints, dtype=np.int64)
        tiled = (ids[None, :] + n_trees * np.arange(copies)[:, None]).ravel()
        del attrs[name].ints[:]
        attrs[name].ints.extend(tiled.tolist())
    for name, attr in attrs.items():
        if name in ("nodes_treeids", "class_treeids") or not name.startswith(("nodes_", "class_")):
            continue
        if name == "class_weights":
            values = (np.asarray(attr.floats, dtype=np.float32) / copies).tolist()
            del attr.floats[:]
            attr.floats.extend(values * copies)
        else:
            repeated = attr.floats or attr.ints or attr.strings
            values = list(repeated)
            del repeated[:]
            repeated.extend(values * copies)
    return model.SerializeToString()


def prepare(sizes: list[int], rows: int, base_trees: int) -> dict[int, Path]:
    """A folder per size: onnx/model.onnx, forest/model.onnx + model.forest, model.joblib."""
    import joblib

    from func.model.export import build_card, to_onnx_bytes
    from func.model.forest import write_forest

    key = hashlib.sha256(f"{rows},{base_trees},{N_FEATURES},v1".encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / "warmstart-bench-model-size" / key
    cache.mkdir(parents=True, exist_ok=True)
    base, sample = base_forest(rows, base_trees, cache)
    names = [f"f{i}" for i in range(N_FEATURES)]
    folders = {}
    base_onnx: bytes | None = None
    for n_trees in sizes:
        folder = cache / str(n_trees)
        folders[n_trees] = folder
        if (folder / "done").exists():
            continue
        started = time.perf_counter()
        for sub in ("onnx", "forest"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        forest = forest_of(base, n_trees)
        if n_trees <= base_trees:
            data = to_onnx_bytes(forest, build_card(forest, sample, names, "forest", str(n_trees)))
        else:
            if n_trees % base_trees:
                raise SystemExit(f"--trees: {n_trees} is above --base-trees {base_trees} but not a multiple of it")
            if base_onnx is None:
                base_onnx = to_onnx_bytes(base, build_card(base, sample, names, "forest", str(base_trees)))
            data = repeated_onnx(base_onnx, n_trees // base_trees)
        (folder / "onnx" / "model.onnx").write_bytes(data)
        (folder / "forest" / "model.onnx").write_bytes(data)
        why_not = write_forest(folder / "forest" / "model.onnx", data, hashlib.sha256(data).hexdigest())
        if why_not is not None:
            raise SystemExit(f"no forest for {n_trees} trees: {why_not}")
        joblib.dump(forest, folder / "model.joblib")
        (folder / "done").touch()
        print(f"{n_trees} trees: {len(data) / 1e6:.0f} MB of ONNX, made in {time.perf_counter() - started:.0f} s")
    return folders


def systems(folder: Path) -> dict[str, System]:
    python = sys.executable
    joblib_path = folder / "model.joblib"
    one_worker = {"WORKERS": "1"}
    return {
        WARM_ONNX: System(
            WARM_ONNX, [python, "-m", "func"], {**one_worker, "MODEL_PATH": str(folder / "onnx" / "model.onnx")}
        ),
        WARM_FOREST: System(
            WARM_FOREST, [python, "-m", "func"], {**one_worker, "MODEL_PATH": str(folder / "forest" / "model.onnx")}
        ),
        NAIVE: naive_uvicorn(joblib_path, NAIVE),
        KSERVE: kserve_peer(joblib_path, KSERVE),
    }


def read_seconds(path: Path) -> float:
    started = time.perf_counter()
    with path.open("rb") as fh:
        while fh.read(1 << 24):
            pass
    return time.perf_counter() - started


def start_once(system: System) -> dict[str, float]:
    """Exec to first prediction; for the forest, also until onnxruntime answers; the RSS."""
    started = time.perf_counter()
    try:
        found = {"first": system.start()}
        if system.name == WARM_FOREST:
            while requests.get(f"http://127.0.0.1:{system.port}/model", timeout=5).json()["evaluator"] != "onnxruntime":
                if time.perf_counter() - started > 300:
                    raise TimeoutError("onnxruntime did not take over within 300 s")
                time.sleep(0.01)
            found["full"] = time.perf_counter() - started
        found["rss_mb"] = system.rss_mb()["total"]
        return found
    finally:
        system.stop()


@contextmanager
def bench_lock():
    with LOCK.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def measure(folders: dict[int, Path], runs: int) -> list[dict[str, Any]]:
    results = []
    for n_trees, folder in folders.items():
        times: dict[str, list[float]] = {}
        rss: dict[str, list[float]] = {}
        servers = systems(folder)
        names = list(servers)
        for run in range(runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            for name in order:
                found = start_once(servers[name])
                times.setdefault(name, []).append(found["first"])
                rss.setdefault(name, []).append(found["rss_mb"])
                if "full" in found:
                    times.setdefault(FULL_SPEED, []).append(found["full"])
            times.setdefault(READ_ONNX, []).append(read_seconds(folder / "onnx" / "model.onnx"))
            times.setdefault(READ_JOBLIB, []).append(read_seconds(folder / "model.joblib"))
        entry = {
            "trees": n_trees,
            "onnx_mb": round((folder / "onnx" / "model.onnx").stat().st_size / 1e6, 2),
            "forest_mb": round((folder / "forest" / "model.forest").stat().st_size / 1e6, 2),
            "joblib_mb": round((folder / "model.joblib").stat().st_size / 1e6, 2),
            "seconds": {name: round(statistics.median(v), 3) for name, v in times.items()},
            "runs": {name: [round(s, 3) for s in v] for name, v in times.items()},
            "rss_mb": {name: round(statistics.median(v)) for name, v in rss.items()},
        }
        results.append(entry)
        print_row(entry)
    return results


def print_row(entry: dict[str, Any]) -> None:
    s = entry["seconds"]
    print(
        f"{entry['trees']:>5} trees, ONNX {entry['onnx_mb']:>6.1f} MB, forest {entry['forest_mb']:>6.1f} MB, "
        f"joblib {entry['joblib_mb']:>6.1f} MB | " + " | ".join(f"{name} {s[name]:.3f} s" for name in s)
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["onnx_mb"] for r in results]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {
        WARM_ONNX: ("#1f77b4", "-", "o"),
        WARM_FOREST: ("#d62728", "-", "o"),
        FULL_SPEED: ("#d62728", "--", "x"),
        NAIVE: ("#2ca02c", "-", "s"),
        KSERVE: ("#9467bd", "-", "s"),
        READ_ONNX: ("#7f7f7f", ":", "."),
        READ_JOBLIB: ("#bcbd22", ":", "."),
    }
    for name, (colour, line, marker) in styles.items():
        ax.plot(sizes, [r["seconds"][name] for r in results], line, color=colour, marker=marker, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model size, MB of ONNX (the joblib file is about twice that)")
    ax.set_ylabel("seconds from exec to the first prediction (median)")
    ax.set_title("Cold start against model size: random forests, 30 features")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", default="10,50,200,800,2000,4000")
    parser.add_argument("--base-trees", type=int, default=200)
    parser.add_argument("--rows", type=int, default=12000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=LOADTESTS / "results" / "model_size.json")
    args = parser.parse_args()
    sizes = [int(t) for t in args.trees.split(",")]
    kserve_peer()  # installs KServe's virtualenv on first use, before the lock is held
    folders = prepare(sizes, args.rows, args.base_trees)
    with bench_lock():
        results = measure(folders, args.runs)
    results_file.write(
        args.out, {"runs": args.runs, "rows": args.rows, "base_trees": args.base_trees, "sizes": results}
    )
    plot(results, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
