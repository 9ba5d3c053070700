#!/usr/bin/env python3
"""Cold start of the function image next to the same server on the host: from starting it
to the first prediction answered, interleaved run by run.

    .venv/bin/python loadtests/bench_image_cold_start.py [--runs 5]
        [--out loadtests/results/image_cold_start.json]

The container runs as knative/base/service.yaml runs it (tests/support/images.py reads
the options from it), with its environment; the host server gets the same environment.
Per run:
- host: `python -m func` exec to the first 200 from POST /predict;
- container, exec: the container's process start (podman's State.StartedAt) to the
  first 200, the part a pod's cold start shares with the host's;
- container, run: `podman run` invoked to the first 200, adding podman's own set-up
  (storage, network, runc), which on a cluster is the kubelet's and the runtime's.
Image pull is not included: the image is local. Build it first: scripts/build_images.sh.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_file  # noqa: E402

from tests.support.images import deployed_container, image_names, missing_images, podman, rows  # noqa: E402
from tests.support.server import DEFAULT_MODEL, ServerProcess, free_port  # noqa: E402

POLL_S = 0.005
TIMEOUT_S = 120


def first_prediction(url: str, body: dict) -> float:
    """Poll POST /predict until it answers 200; the wall-clock time (time.time()) it did."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if requests.post(url + "/predict", json=body, timeout=5).status_code == 200:
                return time.time()
        except requests.ConnectionError:
            pass
        time.sleep(POLL_S)
    raise TimeoutError(f"{url}: no prediction after {TIMEOUT_S}s")


def host_run(env: dict[str, str], body: dict, log_dir: Path) -> float:
    server = ServerProcess({**env, "MODEL_PATH": str(DEFAULT_MODEL)}, log_dir=log_dir)
    started = time.time()
    server.start()
    try:
        return first_prediction(server.url, body) - started
    finally:
        server.kill()


def container_run(image: str, options: list[str], env: list[str], body: dict) -> tuple[float, float]:
    port = free_port()
    name = f"warmstart-bench-{port}"
    invoked = time.time()
    podman("run", "--detach", f"--name={name}", *options, *env, f"--publish=127.0.0.1:{port}:8080", image, check=True)
    try:
        answered = first_prediction(f"http://127.0.0.1:{port}", body)
        started_at = podman("inspect", "--format={{.State.StartedAt}}", name, check=True).stdout.strip()
    finally:
        podman("rm", "--force", "--time=0", name, timeout=60)
    # e.g. 2026-12-04 20:01:02.123456789 +0000 UTC: keep microseconds and the offset
    day, clock, offset = started_at.split()[:3]
    seconds, _, fraction = clock.partition(".")
    exec_at = datetime.strptime(f"{day} {seconds}.{(fraction + '000000')[:6]} {offset}", "%Y-%m-%d %H:%M:%S.%f %z")
    return answered - exec_at.timestamp(), answered - invoked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "image_cold_start.json")
    args = parser.parse_args()

    image = image_names()["function"]
    if missing_images({"function": image}):
        print(f"{image} is not built: run scripts/build_images.sh", file=sys.stderr)
        return 2
    options, env = deployed_container()
    host_env = dict(e.removeprefix("--env=").split("=", 1) for e in env)
    host_env.pop("MODEL_PATH")
    body = {"instances": rows(1).tolist()}
    log_dir = Path("/tmp")

    host, exec_, run = [], [], []
    for i in range(args.runs):
        host.append(host_run(host_env, body, log_dir))
        from_exec, from_run = container_run(image, options, env, body)
        exec_.append(from_exec)
        run.append(from_run)
        print(f"run {i + 1}: host {host[-1]:.3f} s, container exec {exec_[-1]:.3f} s, podman run {run[-1]:.3f} s")
    medians = {
        "host_exec_to_first_prediction_s": round(statistics.median(host), 3),
        "container_exec_to_first_prediction_s": round(statistics.median(exec_), 3),
        "podman_run_to_first_prediction_s": round(statistics.median(run), 3),
    }
    for key, value in medians.items():
        print(f"median {key}: {value}")
    results_file.write(
        args.out,
        {
            "image": image,
            "image_size_bytes": int(podman("image", "inspect", "--format={{.Size}}", image, check=True).stdout),
            "runs": {"host": host, "container_exec": exec_, "podman_run": run},
            "medians": medians,
            "env": host_env,
            "container_options": options,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
