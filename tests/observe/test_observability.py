"""/metrics adds up exactly across workers, access lines are JSON with the trace id, and
traces reach an OTLP receiver with the parent the request named."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.otlp import OtlpReceiver
from tests.support.server import DEFAULT_MODEL, ROOT, children, wait_for

N = 30
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


@pytest.fixture(scope="module")
def row(card) -> list[float]:
    return [card["reference"][n]["mean"] for n in card["feature_names"]]


def scrape(srv, accept: str | None = None) -> dict[str, list]:
    """Samples by name, parsed with prometheus-client's own parser."""
    headers = {"Accept": accept} if accept else {}
    text = requests.get(srv.url + "/metrics", headers=headers, timeout=5).text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def send_each_protocol(srv, row: list[float], n: int) -> None:
    """n requests of each protocol, each on a new connection (so both workers get some)."""
    v2 = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
    ce = {"ce-specversion": "1.0", "ce-type": "warmstart.predict.v1", "ce-source": "/test", "ce-id": "x"}
    for _ in range(n):
        assert requests.post(srv.url + "/predict", json={"features": row}).status_code == 200
        assert requests.post(srv.url + "/v1/models/breast-cancer-rf:predict", json={"instances": [row]}).ok
        assert requests.post(srv.url + "/v2/models/breast-cancer-rf/infer", json=v2).ok
        assert requests.post(srv.url + "/", json={"features": row}, headers=ce).ok


def test_counters_add_up_exactly_across_two_workers(start_server, tmp_path, row):
    srv = start_server({"WORKERS": "2", "SHARED_DIR": str(tmp_path), "K_REVISION": "rev-a"})
    send_each_protocol(srv, row, N)
    requests.post(srv.url + "/predict", data=b"{", headers={"Content-Type": "application/json"})

    samples = scrape(srv)
    for protocol in ("json", "v1", "v2", "cloudevent"):
        assert total(samples, "warmstart_requests_total", protocol=protocol, status="2xx") == N, protocol
        assert total(samples, "warmstart_rows_total", protocol=protocol) == N
        assert total(samples, "warmstart_request_rows_count", protocol=protocol) == N
        # every answer is timed, the malformed /predict too
        assert total(samples, "warmstart_request_duration_seconds_count", protocol=protocol) == N + (protocol == "json")
        for stage in ("decode", "infer", "encode"):
            assert total(samples, "warmstart_request_stage_seconds_count", protocol=protocol, stage=stage) == N
    assert total(samples, "warmstart_requests_total", protocol="json", status="4xx") == 1
    assert total(samples, "warmstart_events_received_total", type="warmstart.predict.v1", outcome="ok") == N
    # predictions are counted off the request path, within 50 ms
    assert wait_for(lambda: total(scrape(srv), "warmstart_predictions_total") == 4 * N)

    # the counts came from both workers: each wrote its own file
    files = list(tmp_path.glob("warmstart-*/traffic-*.f64"))
    assert len(files) == 2 and all(np.fromfile(f).sum() > 0 for f in files), files
    # every series names the model, its version and the revision
    for name, found in samples.items():
        if name.startswith("warmstart_"):
            for s in found:
                assert s.labels["revision"] == "rev-a" and s.labels["model_name"] == "breast-cancer-rf", s
                assert s.labels["model_version"] == "1", s


def test_cold_start_load_time_and_model_digest_are_exported(start_server, default_model):
    srv = start_server({"WORKERS": "2"})
    samples = scrape(srv)
    startup = total(samples, "warmstart_startup_seconds")
    assert 0 < startup < 30
    assert 0 < total(samples, "warmstart_model_load_seconds") < startup
    (info,) = samples["warmstart_model_info"]
    assert info.labels["sha256"] == hashlib.sha256(default_model.read_bytes()).hexdigest()
    assert info.labels["card_version"] == "1"


def test_a_killed_worker_leaves_the_counts_and_no_stale_request_in_flight(start_server, row):
    # A request that waits for company (adaptive batching) stays in flight for seconds.
    srv = start_server({"WORKERS": "2", "ADAPTIVE_BATCH_ROWS": "100000", "ADAPTIVE_BATCH_DELAY_MS": "20000"})
    for _ in range(3):
        requests.get(srv.url + "/model")
    outcome: list[BaseException] = []

    def held() -> None:
        try:
            requests.post(srv.url + "/predict", json={"features": row}, timeout=60)
        except requests.ConnectionError as exc:
            outcome.append(exc)  # its worker is killed below

    slow = threading.Thread(target=held, daemon=True)
    slow.start()
    assert wait_for(lambda: total(scrape(srv), "warmstart_requests_in_flight") == 1)
    before = total(scrape(srv), "warmstart_requests_total")

    workers = children(srv.proc.pid)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: len(set(children(srv.proc.pid)) - set(workers)) == 2, timeout=20)
    srv.wait_ready()
    samples = scrape(srv)
    assert total(samples, "warmstart_requests_in_flight") == 0
    assert total(samples, "warmstart_requests_total") == before
    slow.join(10)
    assert outcome, "the request its worker held while killed was answered"


def test_openmetrics_when_the_scraper_asks_for_it(server):
    resp = requests.get(server.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert resp.text.rstrip().endswith("# EOF")
    plain = requests.get(server.url + "/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain")


def access_lines(srv) -> list[dict]:
    lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    return [entry for entry in lines if entry["logger"] == "warmstart.access"]


def test_access_log_is_a_json_line_per_request_with_the_trace_id(start_server, row):
    srv = start_server({"K_REVISION": "rev-a"})
    for _ in range(3):
        requests.get(srv.url + "/health/readiness")
        requests.get(srv.url + "/metrics")
    requests.post(srv.url + "/predict", json={"instances": [row, row]}, headers={"traceparent": TRACEPARENT})
    requests.post(srv.url + "/v2/models/nope/infer", json={})
    lines = wait_for(lambda: len(access_lines(srv)) >= 2 and access_lines(srv))
    assert len(lines) == 2, lines  # probes and scrapes are not logged
    predict, missing = lines
    assert predict["route"] == "/predict" and predict["method"] == "POST" and predict["status"] == 200
    assert predict["rows"] == 2 and predict["trace_id"] == TRACE_ID and predict["revision"] == "rev-a"
    assert predict["model_version"] == "1" and 0 < predict["duration_s"] < 5
    assert missing["route"] == "/v2/models/<name>/infer" and missing["status"] == 404 and "trace_id" not in missing


def test_access_log_off_and_all(start_server):
    off = start_server({"ACCESS_LOG": "off"})
    everything = start_server({"ACCESS_LOG": "all"})
    for srv in (off, everything):
        requests.get(srv.url + "/health/readiness")
        requests.get(srv.url + "/model")
    routes = wait_for(lambda: {line["route"] for line in access_lines(everything)} >= {"/health/readiness", "/model"})
    assert routes, access_lines(everything)
    time.sleep(0.2)  # past the access log's 50 ms batch
    assert access_lines(off) == []


@pytest.fixture
def otlp_receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def test_spans_reach_an_otlp_receiver_with_the_parent_the_request_named(start_server, otlp_receiver, row):
    endpoint = otlp_receiver.endpoint
    srv = start_server({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    assert requests.post(srv.url + "/predict", json={"features": row}, headers={"traceparent": TRACEPARENT}).ok
    spans = wait_for(lambda: otlp_receiver.named("POST /predict", "decode", "infer", "encode"))
    by_name = {s.name: s for s in spans}
    # the readiness probes that waited for the server are not traffic: no span
    assert set(by_name) == {"POST /predict", "decode", "infer", "encode"}, sorted(by_name)
    request_span = by_name["POST /predict"]
    assert request_span.trace_id.hex() == TRACE_ID and request_span.parent_span_id.hex() == PARENT_SPAN
    for stage in ("decode", "infer", "encode"):
        assert by_name[stage].parent_span_id == request_span.span_id
        assert request_span.start_time_unix_nano <= by_name[stage].start_time_unix_nano
        assert by_name[stage].end_time_unix_nano <= request_span.end_time_unix_nano

    # a structured event names its parent in its traceparent extension; the reply
    # carries the request span's own context
    otlp_receiver.spans.clear()
    event = {
        "specversion": "1.0",
        "type": "warmstart.predict.v1",
        "source": "/test",
        "id": "e1",
        "traceparent": TRACEPARENT,
        "data": {"features": row},
    }
    reply = requests.post(srv.url + "/", json=event, headers={"Content-Type": "application/cloudevents+json"}).json()
    spans = wait_for(lambda: otlp_receiver.named("POST /", "decode", "infer", "encode"))
    (event_span,) = [s for s in spans if s.name == "POST /"]
    assert event_span.parent_span_id.hex() == PARENT_SPAN
    assert reply["traceparent"] == f"00-{TRACE_ID}-{event_span.span_id.hex()}-01"


@pytest.mark.parametrize(
    "env, name, version",
    [
        ({"OTEL_SERVICE_NAME": "fraud-scorer"}, "fraud-scorer", "rev-a"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes,service.version=7"}, "from-attributes", "7"),
        ({}, "scorer", "rev-a"),
    ],
)
def test_the_users_service_name_wins_over_the_default(start_server, otlp_receiver, row, env, name, version):
    endpoint = otlp_receiver.endpoint
    srv = start_server(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", "K_SERVICE": "scorer",
         "K_REVISION": "rev-a", **env}
    )  # fmt: skip
    assert requests.post(srv.url + "/predict", json={"features": row}).ok
    spans = wait_for(lambda: otlp_receiver.named("POST /predict"))
    (request_span,) = [s for s in spans if s.name == "POST /predict"]
    resource = otlp_receiver.resources[request_span.span_id]
    assert (resource["service.name"], resource["service.version"]) == (name, version), resource

    # a request without a traceparent starts its own trace: its access line names it
    (line,) = wait_for(lambda: access_lines(srv))
    assert line["trace_id"] == request_span.trace_id.hex()


def test_a_trace_id_is_logged_only_for_a_trace_someone_can_find(start_server, otlp_receiver, row):
    """With tracing on but every span dropped by the sampler, a request's line names its
    caller's trace, or none: not the id of a span that was never exported."""
    endpoint = otlp_receiver.endpoint
    srv = start_server({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_SAMPLER": "always_off"})
    requests.post(srv.url + "/predict", json={"features": row})
    requests.post(srv.url + "/predict", json={"features": row}, headers={"traceparent": TRACEPARENT})
    untraced, traced = wait_for(lambda: len(access_lines(srv)) >= 2 and access_lines(srv))
    assert "trace_id" not in untraced, untraced
    assert traced["trace_id"] == TRACE_ID
    assert otlp_receiver.spans == []


def test_without_otel_variables_nothing_of_opentelemetry_is_imported(row):
    code = (
        "import sys, json\n"
        "from func.api.app import create_app\n"
        "from func.config import Settings\n"
        f"app = create_app(Settings(model_path={str(DEFAULT_MODEL)!r}))\n"
        "app.extensions['warmstart'].wait_loaded()\n"
        f"r = app.test_client().post('/predict', json={{'features': {row!r}}})\n"
        "assert r.status_code == 200, r.data\n"
        "print('MODULES', json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("MODULES ")]
    assert json.loads(line.removeprefix("MODULES ")) == []


def test_events_are_counted_by_type_and_outcome(server, row):
    ce = {"ce-specversion": "1.0", "ce-source": "/test", "ce-id": "x", "Content-Type": "application/json"}
    requests.post(server.url + "/", json={"features": row}, headers={**ce, "ce-type": "somebody.else.v1"})
    requests.post(server.url + "/", json={"features": [1]}, headers={**ce, "ce-type": "warmstart.predict.v1"})
    samples = scrape(server)
    assert total(samples, "warmstart_events_received_total", type="other", outcome="unknown_event_type") == 1
    assert total(samples, "warmstart_events_received_total", type="warmstart.predict.v1", outcome="invalid_input") == 1


def test_no_label_takes_a_raw_path(server):
    requests.get(server.url + "/no/such/route/12345")
    requests.get(server.url + "/v2/models/unknown-model-98765")
    text = requests.get(server.url + "/metrics").text
    assert "12345" not in text and "98765" not in text


def test_dead_workers_fold_into_one_file_per_kind_and_still_count_exactly(start_server, tmp_path, row):
    """A pod that lost five workers reads as many count files as one that lost none
    (the master folds a dead worker's files into one), and every count stays exact: a
    scrape taken while the files fold never sees a counter go back."""
    srv = start_server({"WORKERS": "2", "SHARED_DIR": str(tmp_path)})
    ce = {"ce-specversion": "1.0", "ce-type": "warmstart.predict.v1", "ce-source": "/test", "ce-id": "x"}
    seen: list[float] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            try:
                seen.append(total(scrape(srv), "warmstart_requests_total", protocol="json"))
            except requests.RequestException:  # its worker was just killed
                pass

    watcher = threading.Thread(target=scraper, daemon=True)
    watcher.start()
    kills = 5
    for _ in range(kills):
        for _ in range(10):
            assert requests.post(srv.url + "/predict", json={"features": row}).status_code == 200
        assert requests.post(srv.url + "/", json={"features": row}, headers=ce).status_code == 200
        workers = set(children(srv.proc.pid))
        os.kill(min(workers), signal.SIGKILL)
        assert wait_for(lambda old=workers: len(set(children(srv.proc.pid)) - old) == 1, timeout=20)
        srv.wait_ready()
    stop.set()
    watcher.join(10)

    samples = scrape(srv)
    assert total(samples, "warmstart_requests_total", protocol="json") == 10 * kills
    assert total(samples, "warmstart_events_received_total", type="warmstart.predict.v1") == kills
    assert seen == sorted(seen) and len(seen) > 10
    (folder,) = [p for p in tmp_path.glob("warmstart-*") if p.is_dir()]
    for kind in ("traffic", "drift"):
        owners = sorted(p.stem.split("-")[1] for p in folder.glob(f"{kind}-*.f64"))
        assert len(owners) == 3 and owners[-1] == "dead", owners  # two live workers, one file of the dead
    assert sorted(p.name for p in (folder / "prometheus").glob("*_dead.db")) == ["counter_dead.db", "gauge_max_dead.db"]
    assert len(list((folder / "prometheus").glob("*.db"))) == 6
