#!/usr/bin/env python3
"""Model load time by MODEL_PATH source: a local path, http:// (a local file server),
s3:// (moto_server) and models:/ (an MLflow server from the test suite's venv), each
first with an empty MODEL_CACHE_DIR (the fetch) and then with the file cached.

    .venv/bin/python loadtests/bench_model_sources.py [--runs 3] [--out loadtests/results/model_sources.json]

Load time is what the server logs as `ready in ... s` (fetch, load, warm-up); `start`
is process start to readiness 200. Sources whose server cannot start are left out.
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

from tests.support.server import DEFAULT_MODEL, ServerProcess, free_port  # noqa: E402
from tests.support.services import MLFLOW_VENV, S3_ENV, mlflow_server_command, register_in_mlflow  # noqa: E402


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


def load_time(env: dict[str, str], log_dir: Path) -> tuple[float, float]:
    began = time.perf_counter()
    server = ServerProcess({**env, "WORKERS": "1"}, log_dir=log_dir).start()
    try:
        server.wait_ready(60)
        wall = time.perf_counter() - began
        return float(re.search(r"ready in ([\d.]+) s", server.log()).group(1)), wall
    finally:
        server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "model_sources.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="model-sources-"))
    shutil.copy(DEFAULT_MODEL, work / "model.onnx")
    services: list[subprocess.Popen] = []
    sources = {"local path": {"MODEL_PATH": str(DEFAULT_MODEL)}}
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
            requests.put(f"{s3_url}/models/model.onnx", data=DEFAULT_MODEL.read_bytes(), timeout=10).raise_for_status()
            sources["s3://"] = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_url, "MODEL_PATH": "s3://models/model.onnx"}
        python = MLFLOW_VENV / "bin" / "python"
        if python.exists():
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            mlflow = start(mlflow_server_command(python, port, work), url + "/health", work)
            if mlflow:
                services.append(mlflow)
                version = register_in_mlflow(url, "bench", DEFAULT_MODEL)
                sources["models:/"] = {"MLFLOW_TRACKING_URI": url, "MODEL_PATH": f"models:/bench/{version}"}

        results = {}
        print(f"| MODEL_PATH | first load (fetch) s | cached s | start to ready s |  (medians of {args.runs})")
        for name, env in sources.items():
            first, cached = [], []
            for run in range(args.runs):
                cache = work / f"cache-{name.strip(':/ ')}-{run}"
                first.append(load_time({**env, "MODEL_CACHE_DIR": str(cache)}, work))
                cached.append(load_time({**env, "MODEL_CACHE_DIR": str(cache)}, work))
            results[name] = {
                "first_load_s": statistics.median(t for t, _ in first),
                "cached_load_s": statistics.median(t for t, _ in cached),
                "first_start_to_ready_s": statistics.median(w for _, w in first),
            }
            r = results[name]
            print(
                f"| {name} | {r['first_load_s']:.3f} | {r['cached_load_s']:.3f} | {r['first_start_to_ready_s']:.2f} |"
            )
        results_file.write(args.out, {"runs": args.runs, "sources": results})
    finally:
        for proc in services:
            os.killpg(proc.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
