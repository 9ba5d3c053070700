#!/usr/bin/env python3
"""Run warmstart's whole loop on one machine, and watch it close.

    python scripts/loop.py [--quick] [--scenario retrained|worse] [--out DIR]

serve -> observe -> learn the truth -> detect drift -> retrain -> canary -> promote
-> serve the new champion, with every station a real process, wired as the shipped
manifests wire them (scripts/localknative.py): revisions of the Service started from
its manifest, a router that follows its traffic split, a broker that delivers each
event type to the subscribers of knative/'s Triggers and runs the JobSinks' jobs, a
real Prometheus scraping every revision, and a folder model store.

A simulated client sends labelled traffic and, a moment later, the true labels as
feedback. Halfway, its inputs drift: an instrument recalibrated, every measurement of
the same patients now reads SHIFT times larger. The served model (v1, the default
breast-cancer forest) degrades; the loop should retrain on the fresh labelled traffic,
publish exactly one v2, roll it out as a canary judged on labelled accuracy, promote it,
move the champion to it, and see drift go quiet.

Scenarios:
  retrained  the loop above; exits 0 only if it closed: one v2 published, promoted,
             the champion is v2, and drift is quiet on v2
  worse      the team's trainer is broken (it learns shuffled labels): exits 0 only if
             the candidate is rejected, or its canary is rolled back, and v1 still
             serves everything

One line per step on stdout; OUT/loop.png plots accuracy and traffic per revision over
time (README "The loop closes"); OUT/timeline.json holds the steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localknative import ROOT, Broker, Revisions, Router, free_port, jobsinks  # noqa: E402

SHIFT = 2.0  # the recalibrated instrument: every feature reads twice what it used to
DEFAULT_MODEL = ROOT / "models" / "model.onnx"
# the steps the plot marks
MARKED_STEPS = {
    "inputs drift",
    "drift detected",
    "retrained",
    "rejected",
    "canary started",
    "stepped",
    "promoted",
    "rolled back",
    "champion moved",
}
MODEL_NAME = "breast-cancer-rf"


@dataclass
class Timing:
    """How long each phase runs: --quick fits the whole loop in a few minutes on 2 cores."""

    before_drift_s: float
    deadline_s: float
    rows_per_request: int
    requests_per_s: float
    drift_window: int
    analysis_interval_s: float

    @classmethod
    def of(cls, quick: bool) -> Timing:
        if quick:
            return cls(
                before_drift_s=20,
                deadline_s=240,
                rows_per_request=5,
                requests_per_s=12,
                drift_window=600,
                analysis_interval_s=4,
            )
        return cls(
            before_drift_s=60,
            deadline_s=600,
            rows_per_request=5,
            requests_per_s=10,
            drift_window=1000,
            analysis_interval_s=10,
        )


@dataclass
class Step:
    at: float
    what: str
    detail: str = ""


@dataclass
class Timeline:
    started: float = field(default_factory=time.time)
    steps: list[Step] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, what: str, detail: str = "") -> None:
        step = Step(time.time(), what, detail)
        with self._lock:
            self.steps.append(step)
        print(f"[{step.at - self.started:6.1f}s] {what}{': ' + detail if detail else ''}", flush=True)

    def has(self, what: str) -> bool:
        with self._lock:
            return any(s.what == what for s in self.steps)


class World:
    """The patients: breast-cancer rows with their true diagnosis; after `drift()`, every
    measurement reads SHIFT times larger and the diagnosis is what it always was."""

    def __init__(self, seed: int = 1) -> None:
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        self.x, self.y = data.data, data.target
        self.random = np.random.default_rng(seed)
        self.shift = 1.0

    def drift(self) -> None:
        self.shift = SHIFT

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        i = self.random.integers(0, len(self.x), n)
        noise = self.random.normal(1.0, 0.02, (n, self.x.shape[1]))
        return self.x[i] * noise * self.shift, self.y[i]


@dataclass
class Outcome:
    at: float
    revision: str
    correct: int
    rows: int


class Client:
    """Sends labelled rows through the router at a steady rate, and their true labels as
    feedback a moment later (each reporting the answer it labels); keeps what each
    revision got right, per request."""

    def __init__(self, world: World, url: str, timing: Timing, timeline: Timeline) -> None:
        self.world, self.url, self.timing, self.timeline = world, url, timing, timeline
        self.outcomes: list[Outcome] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._pending: list[tuple[float, list[dict[str, Any]]]] = []
        self.session = requests.Session()

    def run(self) -> None:
        period = 1 / self.timing.requests_per_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._one()
            self._send_due_feedback()
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _one(self) -> None:
        x, y = self.world.sample(self.timing.rows_per_request)
        try:
            resp = self.session.post(self.url + "/predict", json={"instances": x.tolist()}, timeout=30)
        except requests.RequestException as exc:
            self.errors.append(str(exc))
            return
        if resp.status_code != 200:
            self.errors.append(f"{resp.status_code} {resp.text[:200]}")
            return
        predicted = np.asarray(resp.json()["predictions"])
        revision = resp.headers.get("X-Revision", "?")
        self.outcomes.append(Outcome(time.time(), revision, int((predicted == y).sum()), len(y)))
        pid = resp.headers.get("X-Prediction-Id")
        if pid:
            # Each label reports the answer it labels, so whichever revision's pod the
            # router gives it to scores it for the revision that answered.
            answered = {"revision": revision, "model_version": resp.headers.get("X-Model-Version", "")}
            labels = [
                {"id": f"{pid}/{r}", "label": int(label), "prediction": int(p), **answered}
                for r, (label, p) in enumerate(zip(y, predicted))
            ]
            self._pending.append((time.monotonic() + 1.0, labels))  # the truth arrives a second later

    def _send_due_feedback(self) -> None:
        now = time.monotonic()
        due = [labels for at, labels in self._pending if at <= now]
        self._pending = [(at, labels) for at, labels in self._pending if at > now]
        for labels in due:
            try:
                self.session.post(self.url + "/feedback", json={"feedback": labels}, timeout=30)
            except requests.RequestException as exc:
                self.errors.append(f"feedback: {exc}")

    def stop(self) -> None:
        self._stop.set()


def service_manifest(model: Path | str, version: str, env: dict[str, str]) -> dict[str, Any]:
    """knative/base's Service with the local model and the loop's short windows."""
    service = yaml.safe_load((ROOT / "knative" / "base" / "service.yaml").read_text())
    container = service["spec"]["template"]["spec"]["containers"][0]
    values = {e["name"]: e.get("value") for e in container.get("env", [])}
    values.update({"MODEL_PATH": str(model), "MODEL_VERSION": version, "WORKERS": "1", "INFERENCE_THREADS": "1", **env})
    container["env"] = [{"name": k, "value": str(v)} for k, v in values.items() if v is not None]
    return service


def prometheus(folder: Path, targets_file: Path) -> tuple[Any, str]:
    """A real Prometheus scraping the revisions listed in `targets_file` every second,
    with knative/observability's rules loaded."""
    import subprocess

    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("the loop needs a real Prometheus: apt-get install prometheus")
    rule = yaml.safe_load((ROOT / "knative" / "observability" / "rules.yaml").read_text())
    (folder / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(folder / "rules.yml")],
        "scrape_configs": [
            {"job_name": "warmstart", "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=(folder / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout:.0f}s")


def plot(client: Client, revisions: list[str], timeline: Timeline, path: Path, bucket_s: float = 5.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = timeline.started
    correct: dict[tuple[str, int], int] = defaultdict(int)
    rows: dict[tuple[str, int], int] = defaultdict(int)
    total: dict[int, int] = defaultdict(int)
    for o in client.outcomes:
        b = int((o.at - start) // bucket_s)
        correct[o.revision, b] += o.correct
        rows[o.revision, b] += o.rows
        total[b] += o.rows
    buckets = sorted(total)
    fig, (acc, share) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, dpi=100)
    for rev in revisions:
        xs = [b * bucket_s for b in buckets if rows[rev, b]]
        acc.plot(xs, [correct[rev, b] / rows[rev, b] for b in buckets if rows[rev, b]], marker=".", label=rev)
        share.plot([b * bucket_s for b in buckets], [rows[rev, b] / total[b] * 100 for b in buckets], label=rev)
    marked = [s for s in timeline.steps if s.what in MARKED_STEPS]
    for i, step in enumerate(marked):
        for ax in (acc, share):
            ax.axvline(step.at - start, color="#bbb", lw=0.8, ls="--")
        acc.text(step.at - start, 0.03 + 0.22 * (i % 3), step.what, rotation=90, fontsize=7, va="bottom", color="#555")
    acc.set_ylabel("live accuracy (labelled)")
    acc.set_ylim(0, 1.05)
    acc.legend(loc="lower right", fontsize=8)
    share.set_ylabel("traffic %")
    share.set_xlabel("seconds since start")
    share.set_ylim(0, 105)
    acc.set_title("warmstart's loop on one machine: accuracy and traffic per revision")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def targets_writer(path: Path) -> Any:
    """Prometheus file_sd: every revision started is a target of the `warmstart` job."""
    found: list[str] = []

    def add(revision: Any) -> None:
        found.append(f"127.0.0.1:{revision.port}")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": found}]))
        tmp.replace(path)

    path.write_text("[]")
    return add


def watch_steps(broker: Broker, champion: Any, timeline: Timeline, stop: threading.Event) -> None:
    """Turn what the broker carried and what the store holds into the timeline's steps;
    `champion()` is the store's champion ({"version", "uri"}) or None."""
    said: set[str] = set()
    first = champion()
    while not stop.wait(0.5):
        for d in broker.history():
            key = f"{d.type}/{d.id}/{d.subscriber}/{d.outcome}"
            if key in said:
                continue
            said.add(key)
            data = d.data if isinstance(d.data, dict) else {}
            if d.outcome != "taken":
                continue
            if d.type == "warmstart.drift.detected.v1":
                top = ", ".join(f"{f['feature']} {f['psi']:.1f}" for f in data.get("top_features", [])[:2])
                timeline.say("drift detected", f"revision {data.get('revision')}, PSI {top}")
            elif d.type == "warmstart.model.trained.v1":
                metrics = data.get("metrics", {})
                timeline.say("retrained", f"v{data['model']['version']} published ({json.dumps(metrics)[:160]})")
            elif d.type == "warmstart.model.rejected.v1" and data.get("retryable"):
                timeline.say("retraining waits", str(data.get("reason", data))[:200])
            elif d.type == "warmstart.model.rejected.v1":
                timeline.say("rejected", str(data.get("reason", data))[:200])
            elif d.type.startswith("warmstart.rollout.") and d.type != "warmstart.rollout.held.v1":
                verb = d.type.split(".")[2]
                names = {
                    "started": "canary started",
                    "stepped": "stepped",
                    "promoted": "promoted",
                    "rolledback": "rolled back",
                }
                timeline.say(names.get(verb, verb), f"{data.get('revision', '')} at {data.get('step', '')} %")
        now = champion()
        if now and now != first and "champion" not in said:
            said.add("champion")
            timeline.say("champion moved", f"v{now['version']} ({now['uri']})")


def folder_champion(store: Path) -> Any:
    pointer = store / MODEL_NAME / "champion.json"
    return lambda: json.loads(pointer.read_text()) if pointer.exists() else None


def mlflow_champion(url: str) -> Any:
    def read() -> dict[str, str] | None:
        resp = requests.get(
            f"{url}/api/2.0/mlflow/registered-models/alias",
            params={"name": MODEL_NAME, "alias": "champion"},
            timeout=10,
        )
        if resp.status_code != 200:
            return None
        version = resp.json()["model_version"]["version"]
        return {"version": version, "uri": f"models:/{MODEL_NAME}/{version}"}

    return read


def start_mlflow(folder: Path) -> tuple[Any, str]:
    """An MLflow tracking server (the tests' own venv, tests/support/services.py) with v1
    registered and aliased champion, as a team's registry would hold it."""
    import subprocess

    sys.path.insert(0, str(ROOT))
    from tests.support.services import MLFLOW_VENV, mlflow_server_command, register_in_mlflow

    python = MLFLOW_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"--store mlflow needs MLflow in {MLFLOW_VENV} (the tests install it there)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        mlflow_server_command(python, port, folder),
        cwd=folder,
        stdout=(folder / "mlflow.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/health", timeout=120)
    register_in_mlflow(url, MODEL_NAME, DEFAULT_MODEL, alias="champion")
    return proc, url


def drift_status(url: str) -> str:
    try:
        report = requests.get(url + "/drift", timeout=5).json()
    except (requests.RequestException, ValueError):
        return "unknown"
    last = report.get("last_complete") or {}
    return str(last.get("status", "no window yet"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (a few minutes on 2 cores)")
    parser.add_argument("--scenario", choices=["retrained", "worse"], default="retrained")
    parser.add_argument(
        "--store",
        choices=["folder", "mlflow"],
        default="folder",
        help="where versions are published: a folder (default), or an MLflow registry (needs MLflow installed)",
    )
    parser.add_argument(
        "--out", type=Path, help="logs, the store, the timeline and the plot (default: a new temp folder)"
    )
    args = parser.parse_args(argv)
    if not DEFAULT_MODEL.exists():
        print(f"{DEFAULT_MODEL} is missing: make model (or make run) trains it", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="warmstart-loop-"))
    out.mkdir(parents=True, exist_ok=True)
    timing = Timing.of(args.quick)
    timeline = Timeline()
    print(f"warmstart loop ({args.scenario}{', quick' if args.quick else ''}): everything under {out}", flush=True)

    store, log, cache = out / "store", out / "log", out / "cache"
    v1 = out / "image" / "model.onnx"  # what the image ships
    v1.parent.mkdir(exist_ok=True)
    shutil.copy(DEFAULT_MODEL, v1)
    (out / "prometheus").mkdir(exist_ok=True)
    targets = out / "prometheus" / "targets.json"
    add_target = targets_writer(targets)
    prom, prom_url = prometheus(out / "prometheus", targets)
    mlflow, tracking = None, ""
    if args.store == "mlflow":  # v1 registered and aliased champion; served and retrained from the alias
        mlflow, tracking = start_mlflow(out / "mlflow")
        model_store, served, champion = (
            f"models:/{MODEL_NAME}",
            f"models:/{MODEL_NAME}@champion",
            mlflow_champion(tracking),
        )
    else:  # v1 is the image's file until a promotion writes the folder's champion.json
        model_store, served, champion = store.as_uri(), str(v1), folder_champion(store)

    service_file = out / "service.yaml"
    service_file.write_text(yaml.safe_dump(service_manifest(served, "1", {})))
    revisions = Revisions(
        service_file, out, {}, on_start=lambda r: (add_target(r), timeline.say("revision started", r.name))
    )
    router = Router(revisions)
    entrypoints = revisions.entrypoints
    sinks = jobsinks(entrypoints)
    broker = Broker(out, router.url, sinks, say=lambda line: timeline.say("job", line))
    # what the SinkBinding and the store ConfigMap give every revision, locally
    revisions.env.update(
        {
            "K_SINK": broker.url,
            "DRIFT_WINDOW": str(timing.drift_window),
            "PREDICTION_LOG": str(log),
            "PREDICTION_LOG_FLUSH_S": "1",
            "MODEL_CACHE_DIR": str(cache),
            "MODEL_STORE": model_store,
            "MLFLOW_TRACKING_URI": tracking,
        }
    )
    # the store ConfigMap's settings, and where the local services are
    sinks["warmstart-retrain"].overrides.update(
        {
            "MODEL_STORE": model_store,
            "MODEL_PATH": served,
            "TRAIN_DATA_URI": str(log),
            "MODEL_CACHE_DIR": str(cache),
            "MLFLOW_TRACKING_URI": tracking,
            **({"TRAINER": "tests.support.trainers:swapped_labels"} if args.scenario == "worse" else {}),
        }
    )
    sinks["warmstart-rollout"].overrides.update(
        {"PROMETHEUS_URL": prom_url, "MODEL_STORE": model_store, "MLFLOW_TRACKING_URI": tracking}
    )
    sinks["warmstart-rollout"].extra_args += [
        "--service-file",
        str(service_file),
        "--canary-url",
        router.canary_url,
        "--scrape-interval",
        "1",
        "--interval",
        str(timing.analysis_interval_s),
        "--steps",
        "50,100" if args.quick else "10,25,50,100",
        "--smoke-timeout",
        "60",
    ]

    stop = threading.Event()
    client = Client(World(), router.url, timing, timeline)
    try:
        revisions.watch()
        wait_ready(router.url + "/health/readiness")
        wait_ready(prom_url + "/-/ready")
        threading.Thread(target=watch_steps, args=(broker, champion, timeline, stop), daemon=True).start()
        threading.Thread(target=client.run, daemon=True, name="client").start()
        timeline.say("traffic", f"{timing.requests_per_s:g} requests/s of {timing.rows_per_request} rows, labelled")
        time.sleep(timing.before_drift_s)
        client.world.drift()
        timeline.say("inputs drift", f"every feature now reads {SHIFT}x")
        closed = wait_for_outcome(args.scenario, timeline, router, broker, timing)
    finally:
        client.stop()
        stop.set()
        time.sleep(0.6)
        revisions.stop()
        router.stop()
        broker.stop()
        prom.terminate()
        if mlflow is not None:
            mlflow.terminate()
    names = list(revisions.running)
    plot(client, names, timeline, out / "loop.png")
    (out / "timeline.json").write_text(
        json.dumps(
            [{"at_s": round(s.at - timeline.started, 1), "step": s.what, "detail": s.detail} for s in timeline.steps],
            indent=1,
        )
    )
    print(f"plot: {out / 'loop.png'}; timeline: {out / 'timeline.json'}; client errors: {len(client.errors)}")
    if args.scenario == "worse":
        print("the worse candidate was stopped" if closed else "the worse candidate was NOT stopped", flush=True)
    else:
        print("the loop closed" if closed else "the loop did NOT close", flush=True)
    return 0 if closed else 1


def wait_for_outcome(scenario: str, timeline: Timeline, router: Router, broker: Broker, timing: Timing) -> bool:
    deadline = time.monotonic() + timing.deadline_s
    while time.monotonic() < deadline:
        time.sleep(1)
        if scenario == "worse" and (timeline.has("rejected") or timeline.has("rolled back")):
            time.sleep(2)
            trained = broker.seen("warmstart.model.trained.v1")
            return not timeline.has("promoted") and (timeline.has("rolled back") or not trained)
        if scenario == "retrained" and timeline.has("promoted") and timeline.has("champion moved"):
            # a whole drift window on the champion alone
            time.sleep(1.5 * timing.drift_window / (timing.requests_per_s * timing.rows_per_request))
            status = drift_status(router.url)
            timeline.say("drift on the champion", status)
            published = broker.seen("warmstart.model.trained.v1")
            return len(published) == 1 and status != "drift"
    timeline.say("deadline", f"{timing.deadline_s:.0f}s passed")
    return False


if __name__ == "__main__":
    sys.exit(main())
