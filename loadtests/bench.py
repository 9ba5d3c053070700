#!/usr/bin/env python3
"""warmstart against the naive baseline and the bare stack, in one run, on one machine.

    .venv/bin/python loadtests/bench.py [--quick] [--seconds 5] [--rounds 3]

Needs wrk (`apt-get install wrk`) and loadtests/requirements.txt (installed into .venv
when missing). Loopback only; every phase is bounded in time.

- single-row requests at concurrency 1, 8, 32 with wrk: req/s, p50/p90/p99, failures;
  systems interleaved round by round so machine drift hits all of them alike
- rows/s of one 1,000- and 10,000-row request (JSON, KServe V1, V2 JSON, V2 binary) against
  onnxruntime in-process on the same rows (loadtests/bench_rows.py)
- cold start, process exec to first successful prediction, median of N fresh starts:
  warmstart with the ONNX model, with the joblib model, and the naive baseline; plus
  the import-time breakdown of warmstart's start
- RSS of each server after the load

Writes loadtests/results/bench.json and bench.png and prints a table with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
LOADTESTS = ROOT / "loadtests"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(LOADTESTS))

import bench_rows  # noqa: E402
import results_file  # noqa: E402

from tests.support.server import free_port  # noqa: E402

ONNX = ROOT / "models" / "model.onnx"
JOBLIB = ROOT / "models" / "model.joblib"
CONCURRENCY = (1, 8, 32)


@dataclass
class System:
    """A server under test: how to start it and what a one-row request looks like."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    path: str = "/predict"
    body: str = ""  # one row; default {"features": [...]}
    cwd: Path = ROOT
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.body = self.body or json.dumps({"features": row()})

    def start(self) -> float:
        """Start the server; return seconds from exec to its first successful prediction."""
        # the project first, then any PYTHONPATH already set (packages installed with
        # `pip install --target`, as on a machine with no index to install from)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1", "PYTHONPATH": path}
        cmd = [part.replace("{port}", str(self.port)) for part in self.cmd]
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, cwd=self.cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = started + 120
        while time.perf_counter() < deadline:
            try:
                resp = requests.post(self.url, data=self.body, headers={"Content-Type": "application/json"}, timeout=2)
                if resp.status_code == 200:
                    return time.perf_counter() - started
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or (gunicorn's master) listening before its workers are up
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            time.sleep(0.002)
        raise TimeoutError(f"{self.name} gave no prediction within 120 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def rss_mb(self) -> dict[str, float]:
        """Total and largest RSS of the server's processes."""
        assert self.proc is not None
        pids = [self.proc.pid, *_children(self.proc.pid)]
        sizes = [_rss_mb(pid) for pid in pids]
        return {"total": round(sum(sizes), 1), "largest": round(max(sizes), 1), "processes": len(sizes)}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in path.read_text().split()] if path.exists() else []
    return kids + [grandchild for kid in kids for grandchild in _children(kid)]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def row() -> list[float]:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data[0].tolist()


def systems() -> dict[str, System]:
    warm = {"MODEL_PATH": str(ONNX), "WORKERS": "2", "THREADS": "4"}
    naive = {"MODEL_PATH": str(JOBLIB)}
    return {
        "warmstart": System("warmstart", [sys.executable, "-m", "func"], warm),
        # the same with request metrics and the access log off: what observing costs
        "warmstart, unobserved": System(
            "warmstart, unobserved", [sys.executable, "-m", "func"], {**warm, "METRICS": "0", "ACCESS_LOG": "off"}
        ),
        "naive, uvicorn": naive_uvicorn(),
        "naive, gunicorn 2 workers": System(
            "naive, gunicorn 2 workers",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-w",
                "2",
                "-k",
                "uvicorn_worker.UvicornWorker",
                "-b",
                "127.0.0.1:{port}",
                "--log-level",
                "warning",
                "loadtests.baseline.naive_app:app",
            ],
            naive,
        ),
        "bare Flask + onnxruntime": System(
            "bare Flask + onnxruntime",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-w",
                "2",
                "-k",
                "gthread",
                "--threads",
                "4",
                "--keep-alive",
                "30",
                "--reuse-port",
                "-b",
                "127.0.0.1:{port}",
                "--log-level",
                "warning",
                "loadtests.baseline.bare_app:app",
            ],
            {"MODEL_PATH": str(ONNX)},
        ),
    }


PEERS = LOADTESTS / ".peers"
PEER_NAMES = ("MLServer", "MLServer, adaptive batching", "KServe ModelServer")
MODEL_NAME = "breast-cancer-rf"


def peers(work: Path) -> dict[str, System]:
    """MLServer's SKLearn runtime (adaptive batching off and on) and a KServe ModelServer,
    each from its own virtualenv under loadtests/.peers (installed on first use)."""
    _install_peer("mlserver", ["mlserver==1.7.1", "mlserver-sklearn==1.7.1"])
    v2_row = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": row()}]})
    found = {}
    for name, batching in (
        ("MLServer", {}),
        ("MLServer, adaptive batching", {"max_batch_size": 32, "max_batch_time": 0.005}),
    ):
        folder = work / name.replace(" ", "_").replace(",", "")
        folder.mkdir(parents=True)
        shutil.copy(JOBLIB, folder / "model.joblib")
        settings = {
            "name": MODEL_NAME,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"},
            **batching,
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))
        cmd = [str(PEERS / "mlserver" / "bin" / "mlserver"), "start", "."]
        system = System(name, cmd, {}, path=f"/v2/models/{MODEL_NAME}/infer", body=v2_row, cwd=folder)
        ports = {"http_port": system.port, "grpc_port": free_port(), "metrics_port": free_port()}
        (folder / "settings.json").write_text(json.dumps({**ports, "parallel_workers": 0, "debug": False}))
        found[name] = system
    found["KServe ModelServer"] = kserve_peer()
    return found


def naive_uvicorn(model: Path = JOBLIB, name: str = "naive, uvicorn") -> System:
    """The naive FastAPI + joblib app (loadtests/baseline/naive_app.py) under uvicorn."""
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "loadtests.baseline.naive_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return System(name, cmd, {"MODEL_PATH": str(model)})


def kserve_peer(model: Path = JOBLIB, name: str = "KServe ModelServer") -> System:
    """A KServe ModelServer (loadtests/baseline/kserve_app.py) from its own virtualenv
    under loadtests/.peers (installed on first use), answering V1 on a joblib model."""
    _install_peer("kserve", ["kserve==0.21.0", "scikit-learn==1.9.1", "joblib"])
    v1_row = json.dumps({"instances": [row()]})
    cmd = [
        str(PEERS / "kserve" / "bin" / "python"),
        str(LOADTESTS / "baseline" / "kserve_app.py"),
        "--http_port",
        "{port}",
        "--grpc_port",
        str(free_port()),
    ]
    return System(name, cmd, {"MODEL_PATH": str(model)}, path=f"/v1/models/{MODEL_NAME}:predict", body=v1_row)


def peer_calls(servers: dict[str, System]) -> Callable[[np.ndarray], dict[str, Callable[[], None]]]:
    """For bench_rows.measure: one large request to each peer, in the protocol it speaks."""
    session = requests.Session()

    def calls(rows: np.ndarray) -> dict[str, Callable[[], None]]:
        x = rows.astype("float64")
        found = {}
        for name, server in servers.items():
            if server.path.startswith("/v2/"):
                tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP64", "data": x.ravel().tolist()}
                body = json.dumps({"inputs": [tensor]})
            else:
                body = json.dumps({"instances": x.tolist()})

            def call(url: str = server.url, data: str = body) -> None:
                resp = session.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=60)
                assert resp.status_code == 200, resp.text[:200]

            found[name] = call
        return found

    return calls


def _install_peer(name: str, packages: list[str]) -> None:
    venv = PEERS / name
    if (venv / ".installed").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True, timeout=1800)
    (venv / ".installed").touch()


def wrk(url: str, concurrency: int, seconds: float, body_file: Path) -> dict:
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(LOADTESTS / "post.lua"),
        url,
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "WRK_BODY": str(body_file)}, timeout=seconds + 30
    )
    match = re.search(r"^BENCH (\{.*\})$", out.stdout, flags=re.M)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def load_phase(servers: dict[str, System], seconds: float, rounds: int) -> dict[str, dict[int, dict]]:
    bodies = {}
    for name, server in servers.items():
        bodies[name] = Path(tempfile.mkstemp(suffix=".json")[1])
        bodies[name].write_text(server.body)
    samples: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in CONCURRENCY} for name in servers}
    for r in range(rounds):
        for c in CONCURRENCY:
            for name, server in servers.items():
                result = wrk(server.url, c, seconds, bodies[name])
                samples[name][c].append(result)
                print(
                    f"round {r + 1} c={c:<3} {name:28} {result['rps']:9,.0f} req/s  "
                    f"p99 {result['p99_us'] / 1000:7.2f} ms  non-2xx {result['non2xx']}",
                    flush=True,
                )
    for body_file in bodies.values():
        body_file.unlink()
    summary: dict[str, dict[int, dict]] = {}
    for name, by_c in samples.items():
        summary[name] = {}
        for c, runs in by_c.items():
            summary[name][c] = {
                "rps": statistics.median(x["rps"] for x in runs),
                "p50_ms": statistics.median(x["p50_us"] for x in runs) / 1000,
                "p90_ms": statistics.median(x["p90_us"] for x in runs) / 1000,
                "p99_ms": statistics.median(x["p99_us"] for x in runs) / 1000,
                "non2xx": sum(x["non2xx"] for x in runs),
                "socket_errors": sum(x["socket_errors"] for x in runs),
            }
    return summary


def cold_starts(runs: int, with_peers: bool) -> dict[str, dict]:
    cases = {
        "warmstart, ONNX": lambda: System(
            "warmstart", [sys.executable, "-m", "func"], {"MODEL_PATH": str(ONNX), "WORKERS": "2"}
        ),
        "warmstart, joblib": lambda: System(
            "warmstart",
            [sys.executable, "-m", "func"],
            {"MODEL_PATH": str(JOBLIB), "ALLOW_PICKLE": "1", "WORKERS": "2"},
        ),
        "naive, uvicorn": lambda: systems()["naive, uvicorn"],
    }
    if with_peers:
        for name in ("MLServer", "KServe ModelServer"):
            cases[name] = lambda name=name: peers(Path(tempfile.mkdtemp(prefix="cold-")))[name]
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, make in cases.items():
            server = make()
            try:
                times[name].append(server.start())
            finally:
                server.stop()
    return {name: {"median_s": statistics.median(t), "runs_s": [round(x, 3) for x in t]} for name, t in times.items()}


def import_breakdown() -> list[dict]:
    """Cumulative import time of the modules `python -m func` loads, largest first."""
    code = "import func.server.application, onnxruntime"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT)
    rows = []
    for line in out.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) <= 2:  # top-level imports and their direct children
            rows.append({"module": match.group(3), "cumulative_ms": int(match.group(1)) / 1000})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:12]


def plot(load: dict, cold: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, by_c in load.items():
        cs = sorted(by_c)
        ax1.plot(cs, [by_c[c]["rps"] for c in cs], marker="o", label=name)
        ax2.plot(cs, [by_c[c]["p99_ms"] for c in cs], marker="o", label=name)
    ax1.set(title="single-row throughput", xlabel="concurrency", ylabel="requests/s", xscale="log", xticks=CONCURRENCY)
    ax1.set_xticklabels([str(c) for c in CONCURRENCY])
    ax2.set(title="p99 latency", xlabel="concurrency", ylabel="ms", xscale="log", yscale="log", xticks=CONCURRENCY)
    ax2.set_xticklabels([str(c) for c in CONCURRENCY])
    ax1.legend(fontsize=8)
    names = list(cold)
    ax3.bar(names, [cold[n]["median_s"] for n in names])
    ax3.set(title="cold start (exec to first prediction)", ylabel="s")
    ax3.tick_params(axis="x", labelsize=7, rotation=20)
    fig.suptitle(f"warmstart vs baselines, {os.cpu_count()} cores, loopback, medians")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(load: dict, rows: list[dict], cold: dict, rss: dict) -> None:
    names = list(load)
    print("\nsingle-row requests (medians)")
    print(
        f"{'system':28} "
        + " ".join(f"{'req/s c=' + str(c):>12}" for c in CONCURRENCY)
        + f" {'p99 ms c=8':>11} {'RSS MB':>8}"
    )
    for name in names:
        print(
            f"{name:28} "
            + " ".join(f"{load[name][c]['rps']:12,.0f}" for c in CONCURRENCY)
            + f" {load[name][8]['p99_ms']:11.2f} {rss[name]['largest']:8.1f}"
        )
    warm = load["warmstart"]
    print("\nwarmstart ratios")
    for name in names[1:]:
        other = load[name]
        print(
            f"  vs {name:28} throughput c=32 {warm[32]['rps'] / other[32]['rps']:6.2f}x   "
            f"p99 c=8 {warm[8]['p99_ms'] / other[8]['p99_ms']:6.2f}x"
        )
    print("\none request, rows/s")
    for r in rows:
        ratio = f"{r['ratio_to_in_process']:.2f}x in-process" if "ratio_to_in_process" in r else ""
        print(f"  {r['rows']:>6} rows {r['system']:42} {r['rows_per_s']:>11,.0f}  {ratio}")
    print("\ncold start, exec to first prediction (median)")
    base = cold["naive, uvicorn"]["median_s"]
    for name, c in cold.items():
        print(f"  {name:20} {c['median_s']:6.3f} s  {c['median_s'] / base:5.2f}x naive")


def ensure_prerequisites() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    try:
        import fastapi  # noqa: F401
        import matplotlib  # noqa: F401
        import uvicorn_worker  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-r", str(LOADTESTS / "requirements.txt")], check=True
        )
    if not ONNX.exists() or not JOBLIB.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--out", str(ONNX), "--joblib"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration per system, concurrency and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold-starts", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 s per case, 1 round, 3 cold starts")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also MLServer (batching off and on) and KServe, each in its own venv under loadtests/.peers",
    )
    parser.add_argument("--out", type=Path, default=LOADTESTS / "results")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.cold_starts = 2.0, 1, 3
    ensure_prerequisites()

    servers = systems()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    if args.peers:
        servers.update(peers(work))
    try:
        for server in servers.values():
            server.start()
        load = load_phase(servers, args.seconds, args.rounds)
        rss = {name: server.rss_mb() for name, server in servers.items()}
        # peers' large requests interleaved round by round with warmstart's and in-process
        rows = bench_rows.measure(
            servers["warmstart"].url.removesuffix("/predict"),
            [1000, 10000],
            args.seconds,
            args.rounds,
            peer_calls({n: servers[n] for n in servers if n in PEER_NAMES}),
        )
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    cold = cold_starts(args.cold_starts, args.peers)
    imports = import_breakdown()

    settings = vars(args) | {"out": str(args.out)}
    results_file.write(
        args.out / "bench.json",
        {
            "settings": settings,
            "single_row": load,
            "rows": rows,
            "cold_start": cold,
            "rss_mb_after_load": rss,
            "import_ms": imports,
        },
    )
    plot(load, cold, args.out / "bench.png")
    print_table(load, rows, cold, rss)
    print(
        "\nimport time of warmstart's start (cumulative ms):",
        ", ".join(f"{r['module']} {r['cumulative_ms']:.0f}" for r in imports[:8]),
    )
    print(f"wrote {args.out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
