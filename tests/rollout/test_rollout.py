"""Canary rollouts decided by numbers: two real warmstart servers play the stable and the
canary revision, a real Prometheus scrapes both, the test sends traffic in the split's
proportions, and `python -m func.rollout` patches a rendered Knative Service manifest
(no cluster): every patch it writes is checked against the Service schema."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.support.knative import needs_kubectl, needs_schemas, render, schema_errors
from tests.support.prometheus import Prometheus, needs_prometheus
from tests.support.server import DEFAULT_MODEL, ROOT, free_port

# short intervals through the tool's own options: a verdict every 2 s, on the counts since the step began
FAST = [
    "--interval", "2", "--scrape-interval", "1", "--min-requests", "10", "--steps", "10,50,100",
    "--no-data-deadline", "20",
]  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def revision_for(path: Path, version: str) -> str:
    return f"warmstart-v{version}-{sha256(path)[:8]}"


# the stores the tests' models come from: their temporary folders, and the docs' s3 bucket
TEST_ALLOW = f"{Path(tempfile.gettempdir()).as_uri()},s3://models"


def rollout(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "func.rollout", *args],
        cwd=ROOT,
        env={**os.environ, "ROLLOUT_ALLOW": TEST_ALLOW, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def patches(path: Path) -> list[dict]:
    return [json.loads(line)["patch"] for line in path.read_text().splitlines()] if path.exists() else []


def merged(doc: dict, patch: dict) -> dict:
    from func.rollout.service import merge

    return merge(doc, patch)


def assert_valid_patches(start: dict, found: list[dict]) -> dict:
    """Apply each patch in order to `start` (a rendered Service); every result must validate
    strictly and split 100 % over tagged revisions. Returns the last result."""
    doc = start
    for i, patch in enumerate(found):
        doc = merged(doc, patch)
        assert schema_errors(doc) == [], f"patch {i}: {patch}"
        traffic = doc["spec"]["traffic"]
        assert sum(t["percent"] for t in traffic) == 100, traffic
        assert all(t["revisionName"] and t["tag"] in ("stable", "canary") for t in traffic), traffic
    return doc


def split_of(service: dict) -> dict[str, int]:
    """Tag -> percent; a Service without a traffic block sends all to its latest revision."""
    return {t["tag"]: t["percent"] for t in service["spec"].get("traffic", [])} or {"stable": 100}


def trained_event(folder: Path, model: Path, version: str) -> Path:
    """A warmstart.model.trained.v1 event as the retraining job emits it, as a JobSink
    mounts it."""
    event = {
        "specversion": "1.0",
        "type": "warmstart.model.trained.v1",
        "source": "/warmstart/retrain",
        "id": f"trained-{version}",
        "datacontenttype": "application/json",
        "data": {
            "model": {"name": "breast-cancer-rf", "version": version, "uri": model.as_uri(), "sha256": sha256(model)},
            "parent": {"version": "1", "sha256": sha256(DEFAULT_MODEL)},
            "trigger": "drift-1",
            "metrics": {},
            "data": {},
        },
    }
    path = folder / f"trained-{version}.json"
    path.write_text(json.dumps(event))
    return path


class Receiver(BaseHTTPRequestHandler):
    """K_SINK: keeps every CloudEvent it is sent."""

    events: list = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        from cloudevents.http import from_http

        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.events.append(from_http(dict(self.headers), body))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[str]:
    Receiver.events = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture
def base_service(tmp_path) -> tuple[dict, Path]:
    """knative/base's Service, rendered, as the file the tool patches."""
    (doc,) = [d for d in render("base") if d["kind"] == "Service"]
    path = tmp_path / "service.json"
    path.write_text(json.dumps(doc))
    return doc, path


@pytest.fixture
def canary_service(tmp_path) -> tuple[dict, Path]:
    """overlays/canary's Service: warmstart-v2 takes 10 % as canary next to warmstart-v1."""
    (doc,) = [d for d in render("overlays/canary") if d["kind"] == "Service"]
    path = tmp_path / "service.json"
    path.write_text(json.dumps(doc))
    return doc, path


@pytest.fixture(scope="module")
def benign_rows() -> list[list[float]]:
    """Rows users send: benign-looking ones, which the default model mostly calls 1."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return [r for r, t in zip(data.data.tolist(), data.target.tolist()) if t == 1]


@pytest.fixture(scope="module")
def contrary_model(tmp_path_factory) -> Path:
    """A model that answers worse: trained on the breast-cancer data with its labels
    flipped, exported with a card like any user model."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder = tmp_path_factory.mktemp("contrary")
    data = load_breast_cancer(as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(data.data, 1 - data.target)
    joblib.dump(model, folder / "contrary.joblib")
    data.data.to_csv(folder / "sample.csv", index=False)
    out = folder / "contrary.onnx"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "export_onnx.py"), str(folder / "contrary.joblib"),
         str(folder / "sample.csv"), str(out), "--name", "breast-cancer-rf", "--version", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def drifted(tmp_path_factory) -> tuple[Path, list[list[float]]]:
    """The drift of issue 24, on the breast-cancer data: every feature doubled, on which
    the default model calls almost every row 0. The model retrained on those rows (true
    labels), exported with its card (its prediction mix on them), and the rows, shuffled."""
    import joblib
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder = tmp_path_factory.mktemp("drifted")
    data = load_breast_cancer(as_frame=True)
    shifted = data.data * 2.0
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(shifted, data.target)
    joblib.dump(model, folder / "retrained.joblib")
    shifted.to_csv(folder / "sample.csv", index=False)
    out = folder / "retrained.onnx"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "export_onnx.py"), str(folder / "retrained.joblib"),
         str(folder / "sample.csv"), str(out), "--name", "breast-cancer-rf", "--version", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    rows = shifted.to_numpy()[np.random.default_rng(24).permutation(len(shifted))]
    return out, rows.tolist()


class Traffic:
    """Users: requests to the stable and canary servers in the proportions the Service
    file's traffic block says now (re-read before every request); `pause` seconds between
    requests (a low-traffic service), else as fast as they are answered."""

    def __init__(self, service_file: Path, urls: dict[str, str], rows: list[list[float]], pause: float = 0.0) -> None:
        self.service_file, self.urls, self.rows, self.pause = service_file, urls, rows, pause
        self.sent = {"stable": 0, "canary": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session, i = requests.Session(), 0
        while not self._stop.is_set():
            shares = split_of(json.loads(self.service_file.read_text()))
            # of every 100 requests, the first `canary share` go to the canary
            tag = "canary" if i % 100 < shares.get("canary", 0) else "stable"
            session.post(self.urls[tag] + "/predict", json={"features": self.rows[i % len(self.rows)]}, timeout=10)
            self.sent[tag] += 1
            i += 1
            self._stop.wait(self.pause)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)


def start_revisions(start_server, tmp_path: Path, canary_env: dict[str, str]):
    stable = start_server({"K_REVISION": "warmstart-v1"})
    canary = start_server({"K_REVISION": canary_env.pop("K_REVISION"), "MODEL_VERSION": "2", **canary_env})
    prometheus = Prometheus(tmp_path, {"stable": f"127.0.0.1:{stable.port}", "canary": f"127.0.0.1:{canary.port}"})
    prometheus.wait_ready()
    return stable, canary, prometheus


def run_rollout(tmp_path, service_file, event, canary, prometheus, sink, *extra: str):
    return rollout(
        "run", "--service-file", str(service_file), "--patches", str(tmp_path / "patches.jsonl"),
        "--event", str(event), "--canary-url", canary.url, "--prometheus-url", prometheus.url,
        *FAST, *extra, env={"K_SINK": sink},
    )  # fmt: skip


@needs_prometheus
@needs_kubectl
@needs_schemas
def test_a_good_canary_steps_up_to_promotion(start_server, tmp_path, base_service, sink, benign_rows):
    doc, service_file = base_service
    model = tmp_path / "model-v2.onnx"
    model.write_bytes(DEFAULT_MODEL.read_bytes())
    revision = revision_for(model, "2")
    stable, canary, prometheus = start_revisions(start_server, tmp_path, {"K_REVISION": revision})
    try:
        with Traffic(service_file, {"stable": stable.url, "canary": canary.url}, benign_rows) as traffic:
            done = run_rollout(tmp_path, service_file, trained_event(tmp_path, model, "2"), canary, prometheus, sink)
        flagger = flagger_values(prometheus)
    finally:
        prometheus.stop()
    assert done.returncode == 0, done.stderr

    found = patches(tmp_path / "patches.jsonl")
    final = assert_valid_patches(doc, found)
    assert [split_of(p) for p in found] == [
        {"stable": 100, "canary": 0},
        {"stable": 90, "canary": 10},
        {"stable": 50, "canary": 50},
        {"stable": 100},
    ]
    assert final["spec"]["traffic"] == [
        {"revisionName": revision, "percent": 100, "tag": "stable", "latestRevision": False}
    ]
    env = {e["name"]: e["value"] for e in final["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODEL_PATH"] == model.as_uri() and env["MODEL_VERSION"] == "2" and env["MODEL_SHA256"] == sha256(model)
    assert final["spec"]["template"]["metadata"]["name"] == revision
    assert json.loads(service_file.read_text()) == final
    assert traffic.sent["canary"] > 0
    limits = flagger_limits()
    assert all(flagger[name] <= limits[name] for name in limits), (flagger, limits)

    kinds = [e["type"] for e in Receiver.events]
    assert kinds[:2] == ["warmstart.rollout.started.v1", "warmstart.rollout.stepped.v1"]
    assert kinds[-1] == "warmstart.rollout.promoted.v1"
    promoted = Receiver.events[-1].data
    assert promoted["revision"] == revision and promoted["stable"] == "warmstart-v1" and promoted["step"] == 100
    assert promoted["trigger"] == "trained-2" and promoted["model"]["version"] == "2"
    assert {c["name"] for c in promoted["checks"]} == {"error_ratio", "p99_latency_s", "prediction_psi"}
    assert all(c["passed"] for c in promoted["checks"])
    assert promoted["numbers"]["canary"]["requests"] >= 10

    # re-running the same rollout (a redelivered event) changes nothing
    again = run_rollout(tmp_path, service_file, trained_event(tmp_path, model, "2"), canary, prometheus, sink)
    assert again.returncode == 0, again.stderr
    assert patches(tmp_path / "patches.jsonl") == found


@needs_prometheus
@needs_kubectl
@needs_schemas
@pytest.mark.parametrize("fault", ["slower", "contrary answers"])
def test_a_worse_canary_is_rolled_back_with_the_check_and_numbers(
    start_server, tmp_path, base_service, sink, benign_rows, contrary_model, fault
):
    doc, service_file = base_service
    if fault == "slower":
        # every request waits 50 ms for a batch that never fills: a setting, not a test path
        model = tmp_path / "model-v2.onnx"
        model.write_bytes(DEFAULT_MODEL.read_bytes())
        env = {"ADAPTIVE_BATCH_ROWS": "1000", "ADAPTIVE_BATCH_DELAY_MS": "50"}
        failing = "p99_latency_s"
    else:
        model, env, failing = contrary_model, {}, "prediction_psi"
    revision = revision_for(model, "2")
    stable, canary, prometheus = start_revisions(
        start_server, tmp_path, {"K_REVISION": revision, "MODEL_PATH": str(model), **env}
    )
    try:
        with Traffic(service_file, {"stable": stable.url, "canary": canary.url}, benign_rows):
            done = run_rollout(
                tmp_path, service_file, trained_event(tmp_path, model, "2"), canary, prometheus, sink,
                "--max-failures", "2",
            )  # fmt: skip
        flagger = flagger_values(prometheus)
    finally:
        prometheus.stop()
    assert done.returncode == 3, done.stderr

    found = patches(tmp_path / "patches.jsonl")
    final = assert_valid_patches(doc, found)
    assert final["spec"]["traffic"] == [
        {"revisionName": "warmstart-v1", "percent": 100, "tag": "stable", "latestRevision": False}
    ]
    assert max(split_of(p).get("canary", 0) for p in found) == 10, "never past the first step"
    rolled = Receiver.events[-1]
    assert rolled["type"] == "warmstart.rollout.rolledback.v1"
    assert rolled.data["verdict"] == "rolledback" and rolled.data["step"] == 0
    assert "failed 2 checked intervals in a row" in rolled.data["reason"] and failing in rolled.data["reason"]
    (check,) = [c for c in rolled.data["checks"] if c["name"] == failing]
    assert check["passed"] is False and check["canary"] > check["limit"]
    held = [e for e in Receiver.events if e["type"] == "warmstart.rollout.held.v1"]
    assert any(failing in e.data["reason"] for e in held), "one failure holds before the rollback"
    # Flagger's MetricTemplates see the same canary fail the same check, and only that one
    limits = flagger_limits()
    flagger_failing = {"p99_latency_s": "p99-latency", "prediction_psi": "prediction-psi"}[failing]
    assert {name for name in limits if flagger[name] > limits[name]} == {flagger_failing}, (flagger, limits)


@needs_prometheus
@needs_kubectl
@needs_schemas
def test_a_canary_retrained_after_drift_is_judged_by_its_own_card_not_the_stale_stable(
    start_server, tmp_path, base_service, sink, drifted
):
    """Issue 24: on drifted inputs the stale stable calls almost every row 0 and the
    retrained canary answers as its card expects on that data (PSI from the stable's
    mix over 2, from its own card near 0): it is promoted, not rolled back."""
    doc, service_file = base_service
    model, rows = drifted
    revision = revision_for(model, "2")
    stable, canary, prometheus = start_revisions(
        start_server, tmp_path, {"K_REVISION": revision, "MODEL_PATH": str(model)}
    )
    try:
        with Traffic(service_file, {"stable": stable.url, "canary": canary.url}, rows):
            # 30 canary answers before a verdict: a mix of 10 is too noisy for a PSI under 0.2
            done = run_rollout(
                tmp_path, service_file, trained_event(tmp_path, model, "2"), canary, prometheus, sink,
                "--min-requests", "30",
            )  # fmt: skip
        expected = prometheus.query(f'warmstart_prediction_reference_fraction{{revision="{revision}"}}')
    finally:
        prometheus.stop()
    assert done.returncode == 0, done.stderr
    assert_valid_patches(doc, patches(tmp_path / "patches.jsonl"))
    # the canary's pods export what its card expects: the retrained model's mix on the drifted rows
    assert {e["metric"]["class"]: round(float(e["value"][1]), 2) for e in expected} == {"0": 0.37, "1": 0.63}
    judged = [e.data for e in Receiver.events if e.data["checks"] and e.data["verdict"] in ("stepped", "promoted")]
    assert [e["step"] for e in judged] == [50, 100]
    for event in judged:
        (mix,) = [c for c in event["checks"] if c["name"] == "prediction_psi"]
        assert mix["passed"] and mix["canary"] <= 0.2, mix
        assert mix["stable"] > 2, "the stable revision is far from its own card: it is the drifted one"
        assert "canary vs its card" in mix["basis"] and "vs the stable's mix" in mix["basis"]
        vs_stable = float(re.search(r"vs the stable's mix ([\d.]+)", mix["basis"])[1])
        assert vs_stable > 2, "the old check, canary vs stable, would have failed it"


@needs_prometheus
@needs_kubectl
@needs_schemas
def test_a_low_traffic_canary_adds_up_its_counts_until_it_gets_a_verdict(
    start_server, tmp_path, base_service, sink, benign_rows
):
    """Issue 24: about 10 requests a second, 10 % of them to the canary: about 2 canary
    requests in each 2 s interval, 16 needed. Counted since the step began, they are
    enough after a few intervals; counted per interval they never were."""
    doc, service_file = base_service
    model = tmp_path / "model-v2.onnx"
    model.write_bytes(DEFAULT_MODEL.read_bytes())
    stable, canary, prometheus = start_revisions(start_server, tmp_path, {"K_REVISION": revision_for(model, "2")})
    try:
        with Traffic(service_file, {"stable": stable.url, "canary": canary.url}, benign_rows, pause=0.1):
            done = rollout(
                "run", "--service-file", str(service_file), "--patches", str(tmp_path / "patches.jsonl"),
                "--event", str(trained_event(tmp_path, model, "2")), "--canary-url", canary.url,
                "--prometheus-url", prometheus.url, "--interval", "2", "--scrape-interval", "1",
                "--min-requests", "16", "--steps", "10,100", "--no-data-deadline", "60", env={"K_SINK": sink},
            )  # fmt: skip
    finally:
        prometheus.stop()
    assert done.returncode == 0, done.stderr
    assert [split_of(p) for p in patches(tmp_path / "patches.jsonl")][-1] == {"stable": 100}
    held = [e.data for e in Receiver.events if e["type"] == "warmstart.rollout.held.v1"]
    assert held and all("too few canary requests" in e["reason"] for e in held), held
    # each verdict reads the whole step so far (plus one scrape), not the last interval
    windows = [int(e["numbers"]["window"].rstrip("s")) for e in held]
    assert windows == sorted(windows) and windows[0] == 3, windows
    promoted = Receiver.events[-1].data
    assert promoted["verdict"] == "promoted" and promoted["numbers"]["canary"]["requests"] >= 16
    assert int(promoted["numbers"]["window"].rstrip("s")) > 3 * 2, "counts of several intervals added up"


@needs_kubectl
@needs_schemas
def test_a_dry_run_of_a_whole_rollout_never_asks_prometheus(tmp_path, base_service, sink):
    """The canary of a dry run exists only in its printed patches: the analysis names the
    queries it would run and reads nothing."""
    asked = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    prometheus = ThreadingHTTPServer(("127.0.0.1", free_port()), Recorder)
    threading.Thread(target=prometheus.serve_forever, daemon=True).start()
    doc, service_file = base_service
    try:
        done = rollout(
            "run", "--service-file", str(service_file), "--dry-run", "--model-uri", "s3://models/rf/2/model.onnx",
            "--model-version", "2", "--model-sha256", "a" * 64, "--interval", "0.2", "--no-data-deadline", "1",
            "--prometheus-url", f"http://127.0.0.1:{prometheus.server_address[1]}", env={"K_SINK": sink},
        )  # fmt: skip
    finally:
        prometheus.shutdown()
    assert done.returncode == 0, done.stderr
    assert asked == []
    assert Receiver.events == [], "a dry run sends no event"
    final = assert_valid_patches(doc, [json.loads(x)["patch"] for x in done.stdout.splitlines()])
    assert split_of(final) == {"stable": 90, "canary": 10}
    (said,) = [json.loads(x)["message"] for x in done.stderr.splitlines() if "analysis is not run" in x]
    assert 'warmstart_requests_total{revision="warmstart-v2-aaaaaaaa"' in said
    assert json.loads(service_file.read_text()) == doc


@needs_prometheus
@needs_kubectl
@needs_schemas
def test_a_failed_smoke_test_rolls_back_before_any_user_sees_the_canary(start_server, tmp_path, base_service, sink):
    doc, service_file = base_service
    model = tmp_path / "model-v2.onnx"
    model.write_bytes(DEFAULT_MODEL.read_bytes())
    # the canary's pod serves another version than the event published
    canary = start_server({"K_REVISION": revision_for(model, "2"), "MODEL_VERSION": "1"})
    done = rollout(
        "run", "--service-file", str(service_file), "--patches", str(tmp_path / "patches.jsonl"),
        "--event", str(trained_event(tmp_path, model, "2")), "--canary-url", canary.url,
        "--prometheus-url", "http://127.0.0.1:9", env={"K_SINK": sink},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    found = patches(tmp_path / "patches.jsonl")
    assert_valid_patches(doc, found)
    assert [split_of(p) for p in found] == [{"stable": 100, "canary": 0}, {"stable": 100}]
    assert [e["type"] for e in Receiver.events] == ["warmstart.rollout.started.v1", "warmstart.rollout.rolledback.v1"]
    assert "X-Model-Version is '1', expected '2'" in Receiver.events[-1].data["reason"]


@needs_kubectl
@needs_schemas
def test_no_metrics_holds_the_split_then_rolls_back_after_the_deadline(tmp_path, canary_service, sink):
    doc, service_file = canary_service
    done = rollout(
        "analyse", "--service-file", str(service_file), "--patches", str(tmp_path / "patches.jsonl"),
        "--prometheus-url", f"http://127.0.0.1:{free_port()}", "--interval", "0.5", "--no-data-deadline", "2",
        env={"K_SINK": sink},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    kinds = [e["type"] for e in Receiver.events]
    assert kinds[-1] == "warmstart.rollout.rolledback.v1" and set(kinds[:-1]) == {"warmstart.rollout.held.v1"}
    assert len(kinds) >= 3
    assert all("unreachable" in e.data["reason"] and e.data["step"] == 10 for e in Receiver.events[:-1])
    assert "no verdict for" in Receiver.events[-1].data["reason"]
    (patch,) = patches(tmp_path / "patches.jsonl")
    assert assert_valid_patches(doc, [patch])["spec"]["traffic"] == [
        {"revisionName": "warmstart-v1", "percent": 100, "tag": "stable", "latestRevision": False}
    ]


@needs_prometheus
@needs_kubectl
def test_too_few_canary_requests_hold_the_split(start_server, tmp_path, canary_service, sink):
    _, service_file = canary_service
    stable = start_server({"K_REVISION": "warmstart-v1"})
    canary = start_server({"K_REVISION": "warmstart-v2", "MODEL_VERSION": "2"})
    prometheus = Prometheus(tmp_path, {"stable": f"127.0.0.1:{stable.port}", "canary": f"127.0.0.1:{canary.port}"})
    try:
        prometheus.wait_ready()
        with Traffic(service_file, {"stable": stable.url, "canary": canary.url}, [[1.0] * 30]):
            done = rollout(
                "analyse", "--service-file", str(service_file), "--patches", str(tmp_path / "patches.jsonl"),
                "--prometheus-url", prometheus.url, "--interval", "2", "--window", "4s",
                "--min-requests", "100000", "--no-data-deadline", "5", env={"K_SINK": sink},
            )  # fmt: skip
    finally:
        prometheus.stop()
    assert done.returncode == 3, done.stderr
    held = [e.data for e in Receiver.events if e["type"] == "warmstart.rollout.held.v1"]
    assert held and all("too few canary requests" in e["reason"] and "need 100000" in e["reason"] for e in held)
    assert all(e["checks"] == [] for e in held), "no check is passed on missing data"


@pytest.mark.parametrize(
    "event, problem",
    [
        ("not json", "cannot read the trigger event"),
        (json.dumps({"type": "warmstart.drift.detected.v1", "data": {}}), "expected 'warmstart.model.trained.v1'"),
        (json.dumps({"type": "warmstart.model.trained.v1", "data": {"model": {"uri": "s3://m", "version": "2"}}}),
         "data.model.sha256 is missing"),
        (json.dumps({"type": "warmstart.model.trained.v1",
                     "data": {"model": {"uri": "s3://m", "version": "2", "sha256": "abc"}}}),
         "data.model.sha256 must be 64 hex digits"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deep"),
    ],
)  # fmt: skip
@needs_kubectl
def test_a_malformed_trigger_event_is_a_clear_error_and_no_patch(tmp_path, base_service, event, problem):
    doc, service_file = base_service
    (tmp_path / "event.json").write_text(event)
    done = rollout(
        "run", "--service-file", str(service_file), "--patches", str(tmp_path / "patches.jsonl"),
        "--event", str(tmp_path / "event.json"),
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = [json.loads(x) for x in done.stderr.splitlines()]
    assert line["level"] == "error" and problem in line["message"] and "event.json" in line["message"]
    assert not (tmp_path / "patches.jsonl").exists() or patches(tmp_path / "patches.jsonl") == []
    assert json.loads(service_file.read_text()) == doc


def trained(uri: str, version: str = "2") -> str:
    model = {"name": "breast-cancer-rf", "version": version, "uri": uri, "sha256": "a" * 64}
    return json.dumps({"type": "warmstart.model.trained.v1", "id": "t-1", "data": {"model": model}})


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (trained("file:///etc/shadow"), "'file:///etc/shadow' is not under an allowed store prefix (s3://models)"),
        (trained("http://attacker.example/evil.onnx"), "is not under an allowed store prefix"),
        (trained("s3://models-evil/rf/2/model.onnx"), "is not under an allowed store prefix"),
        (trained("s3://models/rf/../../etc/model.onnx"), "a path with '.' or '..' segments is refused"),
        (trained("s3://models/rf/%2e%2e/model.onnx"), "a path with '.' or '..' segments is refused"),
        (trained("s3://models/rf/2/evil.pkl"), "pickle files run code when loaded"),
        (trained("s3://models/rf/2/model.onnx", "2\r\nX-Evil: 1"), "'\\r' cannot be sent in a header"),
        (trained("s3://models/rf/2/model.onnx", "模型"), "'模' cannot be sent in a header"),
    ],
    ids=["file", "other-host", "prefix-lookalike", "dot-dot", "encoded-dot-dot", "pickle", "crlf", "not-latin-1"],
)
def test_a_trained_event_outside_the_allowed_stores_is_refused_with_no_patch(tmp_path, event, problem):
    service_file = tmp_path / "service.json"
    service_file.write_text(json.dumps(MINIMAL_SERVICE))
    (tmp_path / "event.json").write_text(event)
    done = rollout(
        "start", "--service-file", str(service_file), "--event", str(tmp_path / "event.json"), "--dry-run",
        env={"ROLLOUT_ALLOW": "s3://models"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = [json.loads(x) for x in done.stderr.splitlines()]
    assert line["level"] == "error" and problem in line["message"], line["message"]
    assert done.stdout == "" and json.loads(service_file.read_text()) == MINIMAL_SERVICE


def test_without_allowed_stores_every_model_is_refused(tmp_path):
    service_file = tmp_path / "service.json"
    service_file.write_text(json.dumps(MINIMAL_SERVICE))
    (tmp_path / "event.json").write_text(trained("s3://models/rf/2/model.onnx"))
    done = rollout(
        "start", "--service-file", str(service_file), "--event", str(tmp_path / "event.json"), "--dry-run",
        env={"ROLLOUT_ALLOW": "", "MODEL_STORE": ""},
    )  # fmt: skip
    assert done.returncode == 2 and "no store is allowed; set ROLLOUT_ALLOW" in done.stderr
    assert done.stdout == ""


MINIMAL_SERVICE = {
    "apiVersion": "serving.knative.dev/v1",
    "kind": "Service",
    "metadata": {"name": "warmstart"},
    "spec": {"template": {"metadata": {"name": "warmstart-v1"}, "spec": {"containers": [{"image": "warmstart"}]}}},
}


def test_a_yaml_manifest_stays_yaml_with_its_comments(start_server, tmp_path):
    service_file = tmp_path / "service.yaml"
    service_file.write_text((ROOT / "knative" / "base" / "service.yaml").read_text())
    canary = start_server({"MODEL_VERSION": "2"})
    done = rollout(
        "start", "--service-file", str(service_file), "--canary-url", canary.url, "--allow", "s3://models",
        "--model-uri", "s3://models/rf/2/model.onnx", "--model-version", "2", "--model-sha256", "b" * 64,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = service_file.read_text()
    assert text.startswith("# The function as a Knative Service that scales to zero when idle.\napiVersion:")
    for comment in ("# Revision names are chosen, not generated", "# Scale to zero when idle", "# One pod runs"):
        assert comment in text
    import yaml

    doc = yaml.safe_load(text)
    assert doc["spec"]["template"]["metadata"]["name"] == "warmstart-v2-bbbbbbbb"
    env = {e["name"]: e["value"] for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODEL_PATH"] == "s3://models/rf/2/model.onnx" and env["MODEL_VERSION"] == "2"
    assert split_of(doc) == {"stable": 90, "canary": 10}
    original = yaml.safe_load((ROOT / "knative" / "base" / "service.yaml").read_text())
    assert doc["spec"]["template"]["metadata"]["annotations"] == original["spec"]["template"]["metadata"]["annotations"]


@needs_kubectl
def test_an_unknown_canary_revision_is_a_clear_error_and_no_patch(tmp_path, canary_service):
    doc, service_file = canary_service
    done = rollout("analyse", "--service-file", str(service_file), "--canary", "warmstart-v9", "--prometheus-url", "x")
    assert done.returncode == 2
    assert (
        "revision warmstart-v9 is not in the Service's traffic (stable warmstart-v1, canary warmstart-v2 at 10%)"
        in (done.stderr)
    )
    assert done.stdout == "" and json.loads(service_file.read_text()) == doc


@needs_kubectl
@needs_schemas
@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_promote_and_rollback_by_hand_are_harmless_to_repeat(tmp_path, canary_service, command):
    doc, service_file = canary_service
    first = rollout(command, "--service-file", str(service_file), "--reason", "checked by hand")
    second = rollout(command, "--service-file", str(service_file))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    (line,) = first.stdout.splitlines()
    after = assert_valid_patches(doc, [json.loads(line)["patch"]])
    assert second.stdout == "" and json.loads(service_file.read_text()) == after
    revision = "warmstart-v2" if command == "promote" else "warmstart-v1"
    assert after["spec"]["traffic"] == [
        {"revisionName": revision, "percent": 100, "tag": "stable", "latestRevision": False}
    ]


@needs_kubectl
@needs_schemas
def test_a_dry_run_prints_the_exact_patches_and_changes_nothing(tmp_path, base_service):
    doc, service_file = base_service
    done = rollout(
        "start", "--service-file", str(service_file), "--dry-run", "--model-uri", "s3://models/rf/2/model.onnx",
        "--model-version", "2", "--model-sha256", "a" * 64,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert all(x["dry_run"] and x["service"] == "warmstart" for x in lines)
    final = assert_valid_patches(doc, [x["patch"] for x in lines])
    assert split_of(final) == {"stable": 90, "canary": 10}
    assert final["spec"]["traffic"][1]["revisionName"] == "warmstart-v2-aaaaaaaa"
    assert json.loads(service_file.read_text()) == doc


def test_the_smoke_test_checks_every_protocol_and_the_version(server):
    ok = subprocess.run(
        [sys.executable, "-m", "func.smoke", server.url, "--expect-version", "1"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stdout
    checked = [line.split()[1] for line in ok.stdout.splitlines() if line.startswith("ok")]
    assert checked == ["readiness", "own_json", "kserve_v1", "v2", "cloudevent", "metrics"]
    wrong = subprocess.run(
        [sys.executable, "-m", "func.smoke", server.url, "--expect-version", "2"], capture_output=True, text=True
    )
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines()[-1] == (
        f"FAIL readiness: GET /health/readiness: X-Model-Version is '1', expected '2' ({server.url})"
    )


def test_the_rollout_job_imports_no_serving_stack():
    code = (
        "import sys, func.rollout.__main__\nprint([m for m in ('flask', 'numpy', 'onnxruntime') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


FLAGGER_VARIABLES = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def flagger_docs() -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in render("rollout/flagger")}


def flagger_values(prometheus: Prometheus) -> dict[str, float]:
    """Each Flagger metric of the Canary, its MetricTemplate's query filled in as Flagger
    would for the Service `warmstart` (the test's Prometheus has no namespace label, and
    `namespace=""` matches series without one), run on the real Prometheus."""
    docs = flagger_docs()
    values = {}
    for metric in docs["Canary/warmstart"]["spec"]["analysis"]["metrics"]:
        query = docs[f"MetricTemplate/{metric['templateRef']['name']}"]["spec"]["query"]
        filled = FLAGGER_VARIABLES.sub(
            lambda m: {"namespace": "", "target": "warmstart", "interval": "1m"}[m[1]], query
        )
        (sample,) = prometheus.query(filled)
        values[metric["name"]] = float(sample["value"][1])
    return values


def flagger_limits() -> dict[str, float]:
    metrics = flagger_docs()["Canary/warmstart"]["spec"]["analysis"]["metrics"]
    return {m["name"]: m["thresholdRange"]["max"] for m in metrics}


@needs_kubectl
@needs_schemas
def test_the_rollout_job_is_a_jobsink_allowed_only_to_get_and_patch_the_service():
    import kubernetes_validate

    from func.rollout.__main__ import REFUSED, ROLLED_BACK, parser

    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in render("rollout")}
    assert set(docs) == {
        "ServiceAccount/warmstart-rollout",
        "Role/warmstart-rollout",
        "RoleBinding/warmstart-rollout",
        "JobSink/warmstart-rollout",
        "SinkBinding/warmstart-rollout",
    }
    for name in ("JobSink/warmstart-rollout", "SinkBinding/warmstart-rollout"):
        assert schema_errors(docs[name]) == [], name
    for name in ("ServiceAccount/warmstart-rollout", "Role/warmstart-rollout", "RoleBinding/warmstart-rollout"):
        kubernetes_validate.validate(docs[name], "1.33", strict=True)
    job = {"apiVersion": "batch/v1", "kind": "Job", **docs["JobSink/warmstart-rollout"]["spec"]["job"]}
    job["metadata"] = {"name": "warmstart-rollout-1", **job["metadata"]}
    kubernetes_validate.validate(job, "1.33", strict=True)

    (service,) = [d for d in render("base") if d["kind"] == "Service"]
    assert docs["Role/warmstart-rollout"]["rules"] == [
        {
            "apiGroups": ["serving.knative.dev"],
            "resources": ["services"],
            "resourceNames": [service["metadata"]["name"]],
            "verbs": ["get", "patch"],
        }
    ]
    pod = job["spec"]["template"]["spec"]
    binding = docs["RoleBinding/warmstart-rollout"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"]}]
    assert binding["roleRef"]["name"] == "warmstart-rollout"
    (container,) = pod["containers"]
    args = parser().parse_args(container["args"])
    assert args.command == "run" and args.service == service["metadata"]["name"]
    # a refused request and a rollback are answers: the Job must not run them again
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and sorted(rule["onExitCodes"]["values"]) == [REFUSED, ROLLED_BACK]
    selector = docs["SinkBinding/warmstart-rollout"]["spec"]["subject"]["selector"]["matchLabels"]
    assert selector.items() <= job["metadata"]["labels"].items()


@needs_kubectl
def test_the_flagger_canary_drives_the_service_with_warmstarts_metric_templates():
    docs = flagger_docs()
    canary = docs.pop("Canary/warmstart")
    assert canary["apiVersion"] == "flagger.app/v1beta1"
    (service,) = [d for d in render("base") if d["kind"] == "Service"]
    spec = canary["spec"]
    # Flagger accepts a Knative target only with this provider, apiVersion and kind
    assert spec["provider"] == "knative"
    assert spec["targetRef"] == {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "warmstart"}
    assert spec["targetRef"]["name"] == service["metadata"]["name"]
    analysis = spec["analysis"]
    assert analysis["threshold"] >= 1 and analysis["stepWeights"] == sorted(analysis["stepWeights"])
    assert {m["templateRef"]["name"] for m in analysis["metrics"]} == {d["metadata"]["name"] for d in docs.values()}, (
        "every metric has its template and every template is used"
    )
    for metric in analysis["metrics"]:
        assert set(metric) == {"name", "templateRef", "thresholdRange", "interval"}, metric
        assert set(metric["thresholdRange"]) <= {"min", "max"}
    for template in docs.values():
        assert template["apiVersion"] == "flagger.app/v1beta1" and template["kind"] == "MetricTemplate"
        assert set(template["spec"]) == {"provider", "query"}
        assert template["spec"]["provider"]["type"] == "prometheus" and template["spec"]["provider"]["address"]
        assert set(FLAGGER_VARIABLES.findall(template["spec"]["query"])) <= {"namespace", "target", "interval"}


def test_a_regressor_canary_is_compared_on_the_stable_revisions_value_buckets():
    """Each regressor's buckets are its own training deciles: the canary's histogram is
    read at the stable's bounds before the PSI."""
    from func.rollout.analysis import Numbers, Thresholds, compare

    inf = float("inf")
    stable = Numbers(1000, 0, 0.01, cumulative=[(1.0, 250), (2.0, 500), (3.0, 750), (inf, 1000)])
    alike = Numbers(1000, 0, 0.01, cumulative=[(0.5, 60), (1.0, 125), (1.5, 190), (2.0, 250), (3.0, 375), (inf, 500)])
    shifted = Numbers(1000, 0, 0.01, cumulative=[(1.0, 20), (2.0, 50), (2.5, 100), (3.0, 200), (inf, 500)])
    (alike_psi,) = [c for c in compare(alike, stable, Thresholds()) if c.name == "prediction_psi"]
    (shifted_psi,) = [c for c in compare(shifted, stable, Thresholds()) if c.name == "prediction_psi"]
    assert alike_psi.passed and alike_psi.canary == pytest.approx(0.0, abs=1e-9)
    assert not shifted_psi.passed and shifted_psi.canary > 0.9


@needs_kubectl
def test_a_rollback_by_hand_during_the_analysis_wins(tmp_path, canary_service):
    import os

    _, service_file = canary_service
    analysing = subprocess.Popen(
        [sys.executable, "-m", "func.rollout", "analyse", "--service-file", str(service_file),
         "--prometheus-url", f"http://127.0.0.1:{free_port()}", "--interval", "1", "--no-data-deadline", "60"],
        cwd=ROOT, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.5)
    by_hand = rollout("rollback", "--service-file", str(service_file), "--reason", "paged")
    assert by_hand.returncode == 0, by_hand.stderr
    out, err = analysing.communicate(timeout=30)
    assert analysing.returncode == 3, err
    assert "changed outside this rollout (stable warmstart-v1): stopping" in err
    assert out == "", "the analysis patched nothing"


def _judged(canary: dict, stable: dict, **thresholds: float):
    """The answers' check of compare() for two revisions' numbers."""
    from func.rollout.analysis import Numbers, Thresholds, compare

    *_, answers = compare(Numbers(1000, 0, 0.01, **canary), Numbers(9000, 0, 0.01, **stable), Thresholds(**thresholds))
    return answers


# a classifier after drift: the stable calls 3 % of rows 1 (its card expected 63 %), the
# canary 63 % as its card expects
STALE = {"classes": {"0": 8730.0, "1": 270.0}, "expected_classes": {"0": 0.37, "1": 0.63}}
RETRAINED = {"classes": {"0": 370.0, "1": 630.0}, "expected_classes": {"0": 0.37, "1": 0.63}}


def test_labelled_outcomes_decide_once_each_revision_has_enough():
    # labels: the retrained canary right 98 times in 100, the stale stable 37: promoted on labels
    check = _judged({**RETRAINED, "labels": 100, "correct": 98}, {**STALE, "labels": 900, "correct": 333})
    assert (check.name, check.passed, check.op) == ("labelled_accuracy", True, ">=")
    assert check.canary == pytest.approx(0.98) and check.stable == pytest.approx(0.37)
    # a canary that answers as its card expects but is wrong on the labels is held
    check = _judged({**RETRAINED, "labels": 100, "correct": 80}, {**STALE, "labels": 900, "correct": 810})
    assert check.name == "labelled_accuracy" and not check.passed and check.limit == pytest.approx(0.85)
    assert "100 and 900 labelled outcomes" in check.basis
    # within the margin: passed
    assert _judged({**RETRAINED, "labels": 100, "correct": 87}, {**STALE, "labels": 900, "correct": 810}).passed
    # too few labels on one side: the prediction mix decides, against the canary's own card
    check = _judged({**RETRAINED, "labels": 99, "correct": 98}, {**STALE, "labels": 900, "correct": 333})
    assert check.name == "prediction_psi" and check.passed and check.canary == pytest.approx(0.0)
    assert check.stable > 1, "the stable's own mix is far from its card: drift"
    assert _judged({**RETRAINED, "labels": 20, "correct": 20}, STALE, min_labels=20).name == "prediction_psi"


def test_a_regressor_canary_is_judged_on_its_labelled_mean_absolute_error():
    check = _judged({"labels": 200, "abs_error": 210.0}, {"labels": 2000, "abs_error": 2000.0})
    assert (check.name, check.passed) == ("labelled_mae", True)
    assert check.canary == pytest.approx(1.05) and check.limit == pytest.approx(1.1)
    check = _judged({"labels": 200, "abs_error": 300.0}, {"labels": 2000, "abs_error": 2000.0})
    assert (check.name, check.passed) == ("labelled_mae", False)


def test_without_labels_the_mix_passes_near_its_own_card_or_the_stables_and_fails_far_from_both():
    # far from its own card, and from the stable's
    check = _judged({"classes": {"0": 0.0, "1": 1000.0}, "expected_classes": {"0": 0.63, "1": 0.37}}, STALE)
    assert not check.passed and check.canary > 0.2
    # far from its card, near the stable (the same model as the stable, on unusual traffic)
    near_stable = {"classes": {"0": 970.0, "1": 30.0}, "expected_classes": {"0": 0.37, "1": 0.63}}
    assert _judged(near_stable, STALE).passed
    # a card without a prediction reference: the stable's mix is the only yardstick
    check = _judged({"classes": {"0": 370.0, "1": 630.0}}, STALE)
    assert not check.passed and "canary vs its card none" in check.basis


def serving(doc: dict, model_uri: str, sha: str) -> dict:
    """The Service with its template (the canary's revision) serving `model_uri`."""
    from func.rollout.service import _with_env

    out = json.loads(json.dumps(doc))
    container = out["spec"]["template"]["spec"]["containers"][0]
    container["env"] = _with_env(container["env"], {"MODEL_PATH": model_uri, "MODEL_SHA256": sha})
    return out


@needs_kubectl
@needs_schemas
def test_a_promotion_moves_the_folder_stores_champion_pointer(tmp_path, canary_service):
    import shutil

    doc, service_file = canary_service
    version = tmp_path / "store" / "breast-cancer-rf" / "2"
    version.mkdir(parents=True)
    shutil.copy(DEFAULT_MODEL, version / "model.onnx")
    (version / "trained.json").write_text("{}")  # published by the retraining job
    uri = (version / "model.onnx").as_uri()
    service_file.write_text(json.dumps(serving(doc, uri, sha256(DEFAULT_MODEL))))

    done = rollout("promote", "--service-file", str(service_file))
    assert done.returncode == 0, done.stderr
    pointer = json.loads((tmp_path / "store" / "breast-cancer-rf" / "champion.json").read_text())
    assert {k: pointer[k] for k in ("name", "version", "uri", "sha256")} == {
        "name": "breast-cancer-rf",
        "version": "2",
        "uri": uri,
        "sha256": sha256(DEFAULT_MODEL),
    }
    assert "champion moved" in done.stderr
    assert list((tmp_path / "store" / "breast-cancer-rf").glob(".*.part")) == [], "written whole"


@needs_kubectl
@needs_schemas
def test_a_promotion_moves_the_registrys_champion_alias(tmp_path, canary_service, mlflow_url):
    from tests.support.services import register_in_mlflow

    doc, service_file = canary_service
    register_in_mlflow(mlflow_url, "rollout-champion", DEFAULT_MODEL, alias="champion")
    second = register_in_mlflow(mlflow_url, "rollout-champion", DEFAULT_MODEL)
    uri = f"models:/rollout-champion/{second}"
    service_file.write_text(json.dumps(serving(doc, uri, sha256(DEFAULT_MODEL))))

    done = rollout("promote", "--service-file", str(service_file), env={"MLFLOW_TRACKING_URI": mlflow_url})
    assert done.returncode == 0, done.stderr
    alias = requests.get(
        mlflow_url + "/api/2.0/mlflow/registered-models/alias",
        params={"name": "rollout-champion", "alias": "champion"},
        timeout=30,
    ).json()
    assert alias["model_version"]["version"] == second
