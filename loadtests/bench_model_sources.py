#!/usr/bin/env python3
"""Model load time by MODEL_PATH source: a local path, http:// (a local file server),
s3:// (moto_server) and models:/ (an MLflow server from the test suite's venv), each
first with an empty MODEL_CACHE_DIR (the fetch) and then with the file cached.

    .venv/bin/python loadtests/bench_model_sources.py [--runs 3] [--trees N]
        [--out loadtests/results/model_sources.json]

Every store holds what the local path has: the model and, if there is one, its
`model.forest` beside it (in the registered version's folder for models:/). `--trees N`
serves a random forest of N fully grown trees (bench_model_size.py's models, with their
forest) instead of the default model. Load time is what the server logs as
`ready in ... s` (fetch, load, warm-up); `start` is process start to readiness 200,
which a forest's server answers once the forest is mapped. Sources whose server cannot
start are left out.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_file  # noqa: E402

from func.model.forest import forest_path  # noqa: E402
from func.model.registry import Registry  # noqa: E402
from tests.support.server import DEFAULT_MODEL, ServerProcess, free_port  # noqa: E402
from tests.support.services import MLFLOW_VENV, S3_ENV, mlflow_server_command  # noqa: E402


def start(cmd: list[str], url: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen | None:
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            requests.get(url, timeout=2)
            return proc
        except requests.RequestException:  # refused, or accepted but not answering yet
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    return None


def load_time(env: dict[str, str], log_dir: Path) -> tuple[float, float, str]:
    """The logged load time, exec to readiness, and what answered first (forest or onnxruntime)."""
    began = time.perf_counter()
    server = ServerProcess({**env, "WORKERS": "1"}, log_dir=log_dir).start()
    try:
        server.wait_ready(60)
        wall = time.perf_counter() - began
        ready = re.search(r"answered by (\w+)\) ready in ([\d.]+) s", server.log())
        return float(ready.group(2)), wall, ready.group(1)
    finally:
        server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trees", type=int, default=0, help="a forest of this many trees instead of the default model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results_dir = ROOT / "loadtests" / "results"
    out = args.out or results_dir / (f"model_sources_{args.trees}_trees.json" if args.trees else "model_sources.json")
    model = DEFAULT_MODEL
    if args.trees:
        from bench_model_size import prepare

        model = prepare([args.trees], 12000, 200)[args.trees] / "forest" / "model.onnx"
    files = {"model.onnx": model.read_bytes()}
    if forest_path(model).exists():
        files["model.forest"] = forest_path(model).read_bytes()
    work = Path(tempfile.mkdtemp(prefix="model-sources-"))
    for name, data in files.items():
        (work / name).write_bytes(data)
    services: list[subprocess.Popen] = []
    sources = {"local path": {"MODEL_PATH": str(model)}}
    try:
        port = free_port()
        web = start(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], f"http://127.0.0.1:{port}", work
        )
        if web:
            services.append(web)
            sources["http://"] = {"MODEL_PATH": f"http://127.0.0.1:{port}/model.onnx"}
        port = free_port()
        s3_url = f"http://127.0.0.1:{port}"
        moto = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], s3_url, work, S3_ENV)
        if moto:
            services.append(moto)
            requests.put(f"{s3_url}/models", timeout=10).raise_for_status()
            for name, data in files.items():
                requests.put(f"{s3_url}/models/{name}", data=data, timeout=60).raise_for_status()
            sources["s3://"] = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_url, "MODEL_PATH": "s3://models/model.onnx"}
        python = MLFLOW_VENV / "bin" / "python"
        if python.exists():
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            mlflow = start(mlflow_server_command(python, port, work), url + "/health", work)
            if mlflow:
                services.append(mlflow)
                beside = {name: data for name, data in files.items() if name != "model.onnx"}
                version = Registry(url).register("bench", "model.onnx", files["model.onnx"], {}, beside).version
                sources["models:/"] = {"MLFLOW_TRACKING_URI": url, "MODEL_PATH": f"models:/bench/{version}"}

        results = {}
        print(
            f"| MODEL_PATH | first load (fetch) s | cached s | start to ready s | answered first by |"
            f"  (medians of {args.runs})"
        )
        for name, env in sources.items():
            first, cached = [], []
            for run in range(args.runs):
                cache = work / f"cache-{name.strip(':/ ')}-{run}"
                first.append(load_time({**env, "MODEL_CACHE_DIR": str(cache)}, work))
                cached.append(load_time({**env, "MODEL_CACHE_DIR": str(cache)}, work))
            results[name] = {
                "first_load_s": statistics.median(t for t, _, _ in first),
                "cached_load_s": statistics.median(t for t, _, _ in cached),
                "first_start_to_ready_s": statistics.median(w for _, w, _ in first),
                "answered_first_by": sorted({e for _, _, e in first + cached}),
            }
            r = results[name]
            print(
                f"| {name} | {r['first_load_s']:.3f} | {r['cached_load_s']:.3f} | {r['first_start_to_ready_s']:.2f} "
                f"| {', '.join(r['answered_first_by'])} |"
            )
        results_file.write(out, {"runs": args.runs, "trees": args.trees or None, "sources": results})
    finally:
        for proc in services:
            os.killpg(proc.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
