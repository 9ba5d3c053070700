"""Drift: one window for the whole pod, PSI against the card's reference, one event per
drifted window to K_SINK, and predictions that never wait for the sink."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests

from tests.support.server import children, free_port, wait_for


@pytest.fixture(scope="module")
def training_rows() -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    # shuffled: the data set lists most malignant tumours first, so its first rows are no
    # sample of the training data
    return np.random.default_rng(0).permutation(load_breast_cancer().data)


class Sink(BaseHTTPRequestHandler):
    """A CloudEvents receiver: parses each event with the SDK; `behaviour` can make it
    fail or hang."""

    events: list = []
    arrived: list = []  # time.monotonic() of each event kept
    behaviour = "ok"
    hanging = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        from cloudevents.http import from_http

        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Sink.behaviour == "fail":
            self.send_response(500)
            self.end_headers()
            return
        if Sink.behaviour == "hang":
            Sink.hanging.set()
            time.sleep(4)
            return
        Sink.events.append(from_http(dict(self.headers), body))
        Sink.arrived.append(time.monotonic())
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def sink():
    Sink.events, Sink.arrived, Sink.behaviour = [], [], "ok"
    Sink.hanging.clear()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def send_rows(srv, rows: np.ndarray, per_request: int = 1) -> None:
    """Each request on a new connection, so the kernel spreads them over the workers."""
    for i in range(0, len(rows), per_request):
        resp = requests.post(srv.url + "/predict", json={"instances": rows[i : i + per_request].tolist()})
        assert resp.status_code == 200, resp.text


def drift(srv) -> dict:
    return requests.get(srv.url + "/drift").json()


def test_rows_from_every_worker_fill_one_window(start_server, tmp_path, training_rows):
    srv = start_server({"WORKERS": "2", "DRIFT_WINDOW": "300", "SHARED_DIR": str(tmp_path)})
    send_rows(srv, training_rows[:300])
    report = wait_for(lambda: (r := drift(srv))["last_complete"] and r)
    window = report["last_complete"]["window"]
    assert {k: window[k] for k in ("index", "rows", "size")} == {"index": 0, "rows": 300, "size": 300}
    assert window["started_at"] <= window["closed_at"]
    assert report["windows"] == {report["last_complete"]["status"]: 1}
    assert report["last_complete"]["status"] in ("ok", "warning")  # a sample of the training data
    assert report["current"]["window"]["rows"] == 0 and report["rows_seen"] == 300
    # both workers counted some of them
    files = list(tmp_path.glob("warmstart-*/drift-*.f64"))
    assert len(files) == 2 and all(np.fromfile(f)[0] > 0 for f in files)


def test_psi_per_feature_matches_the_reference_bins(start_server, training_rows, card):
    srv = start_server({"DRIFT_WINDOW": "200"})
    shifted = training_rows[:200] * np.linspace(0.8, 1.6, training_rows.shape[1])
    send_rows(srv, shifted, per_request=50)
    last = wait_for(lambda: drift(srv)["last_complete"])
    for f, name in enumerate(card["feature_names"]):
        ref = card["reference"][name]
        # compared as the model reads the rows: float32
        edges, column = np.array(ref["bin_edges"], dtype=np.float32), shifted[:, f].astype(np.float32)
        below, above = column < np.float32(ref["min"]), column > np.float32(ref["max"])
        inside = np.bincount(np.searchsorted(edges, column[~below & ~above], side="right"), minlength=len(edges) + 1)
        live = np.array([0, below.sum(), *inside, above.sum()]) / len(column)
        expected = np.array([0, 0, *ref["fractions"], 0])
        p, q = np.maximum(live, 1e-4), np.maximum(expected, 1e-4)
        assert last["features"][name]["psi"] == pytest.approx(float(np.sum((p - q) * np.log(p / q))), abs=1e-5), name
        assert last["features"][name]["live"] == pytest.approx(live.tolist(), abs=1e-6)
    top = last["top_features"]
    assert top[0]["psi"] == max(f["psi"] for f in last["features"].values()) and len(top) == 5
    assert last["status"] == "drift" and last["threshold"] == 0.2
    assert 0 < last["out_of_range_rate"] < 1


def test_rows_bin_alike_one_by_one_and_in_one_request(start_server, training_rows, card):
    """The bins do not depend on how rows were grouped into requests and binning
    batches, edges and out-of-range values included."""
    refs = [card["reference"][name] for name in card["feature_names"]]
    # values on every bin edge, at the training min and max, and just outside them
    edge_rows = [[r["bin_edges"][k % len(r["bin_edges"])] for r in refs] for k in range(9)]
    edge_rows += [[r["min"] for r in refs], [r["max"] for r in refs]]
    edge_rows += [[r["min"] - 1 for r in refs], [r["max"] * 1.01 + 1 for r in refs]]
    rows = np.vstack([training_rows[:37], np.array(edge_rows)])
    one_by_one = start_server({"DRIFT_WINDOW": "1000"})
    at_once = start_server({"DRIFT_WINDOW": "1000"})
    send_rows(one_by_one, rows, per_request=1)
    send_rows(at_once, rows, per_request=len(rows))
    a, b = drift(one_by_one)["current"], drift(at_once)["current"]
    assert a["window"]["rows"] == b["window"]["rows"] == len(rows)
    assert a["features"] == b["features"] and a["prediction"] == b["prediction"]
    assert 0 < a["out_of_range_rate"] == b["out_of_range_rate"]


def test_one_drift_episode_sends_one_event(start_server, sink, training_rows):
    srv = start_server({"WORKERS": "2", "DRIFT_WINDOW": "150", "K_SINK": sink, "K_REVISION": "rev-a"})
    send_rows(srv, training_rows[:150], per_request=2)  # window 0: the training data, no event
    assert wait_for(lambda: drift(srv)["last_complete"])["status"] != "drift"
    send_rows(srv, training_rows[150:450] * 1.7, per_request=15)  # windows 1 and 2: one episode
    assert wait_for(lambda: drift(srv)["rows_seen"] == 450 and len(Sink.events) == 1), Sink.events
    time.sleep(1.0)
    (first,) = Sink.events
    assert drift(srv)["episode"]["window"] == 1 and drift(srv)["windows"]["drift"] == 2
    assert first.data["window"]["index"] == 1
    assert first["type"] == "warmstart.drift.detected.v1" and len(first["id"]) == 32
    data = first.data
    assert data["model"]["name"] == "breast-cancer-rf" and len(data["model"]["sha256"]) == 64
    assert data["revision"] == "rev-a" and data["status"] == "drift" and data["threshold"] == 0.2
    assert set(data["psi"]) == set(drift(srv)["current"]["features"]) and data["prediction_psi"] is not None
    assert data["top_features"][0]["psi"] >= 0.2
    text = requests.get(srv.url + "/metrics").text
    assert 'warmstart_events_sent_total{model_name="breast-cancer-rf"' in text and 'outcome="sent"' in text

    send_rows(srv, training_rows[:150], per_request=15)  # window 3 falls back: the episode ends
    assert wait_for(lambda: drift(srv)["episode"] is None)
    send_rows(srv, training_rows[150:300] * 1.7, per_request=15)  # window 4: the next episode
    assert wait_for(lambda: len(Sink.events) == 2), Sink.events
    second = Sink.events[1]
    assert second.data["window"]["index"] == 4 and second["id"] != first["id"]
    assert second["source"] == first["source"]


def test_one_large_request_fills_as_many_windows_as_it_has_rows_for(start_server, sink, training_rows):
    srv = start_server({"WORKERS": "2", "DRIFT_WINDOW": "100", "K_SINK": sink})
    drifted = training_rows[:380] * 1.7
    send_rows(srv, drifted[:30], per_request=30)
    send_rows(srv, drifted[30:], per_request=350)  # crosses three window boundaries
    report = wait_for(lambda: (r := drift(srv))["rows_seen"] == 380 and r)
    # windows 0-2 closed at rows 100, 200 and 300, whichever worker binned them
    window = report["last_complete"]["window"]
    assert {k: window[k] for k in ("index", "rows", "size")} == {"index": 2, "rows": 100, "size": 100}
    assert report["windows"] == {"drift": 3}
    assert report["current"]["window"] == {"index": 3, "rows": 80, "size": 100}
    assert wait_for(lambda: len(Sink.events) == 1), Sink.events
    time.sleep(1.0)
    assert [e.data["window"]["index"] for e in Sink.events] == [0], "three drifted windows, one episode"


def test_a_flood_of_drifted_windows_sends_one_event(start_server, sink, training_rows):
    """20 requests of out-of-range rows, each filling ten windows: one event, not 200."""
    srv = start_server({"WORKERS": "2", "DRIFT_WINDOW": "50", "K_SINK": sink})
    rows = np.tile(training_rows[:100] * 3.0, (5, 1))
    for _ in range(20):
        send_rows(srv, rows, per_request=len(rows))
    assert wait_for(lambda: drift(srv)["rows_seen"] == 10_000)
    assert wait_for(lambda: len(Sink.events) >= 1)
    time.sleep(1.5)
    assert len(Sink.events) == 1 and drift(srv)["windows"] == {"drift": 200}


def test_events_a_sink_cannot_take_are_bounded_and_the_oldest_dropped(start_server, sink, training_rows):
    """With no cooldown every drifted window is an episode of its own: 400 events for a
    sink that hangs. The queue keeps the newest 100 and counts what it dropped."""
    Sink.behaviour = "hang"
    srv = start_server({"DRIFT_WINDOW": "10", "DRIFT_COOLDOWN": "0", "K_SINK": sink})
    send_rows(srv, np.tile(training_rows[:100] * 3.0, (40, 1)), per_request=4000)
    assert Sink.hanging.wait(10)

    def dropped() -> float:
        lines = requests.get(srv.url + "/metrics").text.splitlines()
        found = [
            line for line in lines if line.startswith("warmstart_events_sent_total") and 'outcome="dropped"' in line
        ]
        return sum(float(line.rsplit(" ", 1)[1]) for line in found)

    assert wait_for(lambda: dropped() >= 400 - 100 - 1, timeout=20), dropped()
    assert "dropped: 100 events wait for" in srv.log()


def test_events_leave_ten_at_once_then_one_a_second(start_server, sink, training_rows):
    """With no cooldown every drifted window is an episode: 14 events at once. The first
    ten go out together, the rest no closer than the rate allows (a slower machine only
    spaces them more)."""
    srv = start_server({"DRIFT_WINDOW": "10", "DRIFT_COOLDOWN": "0", "K_SINK": sink})
    send_rows(srv, training_rows[:140] * 3.0, per_request=140)
    assert wait_for(lambda: len(Sink.events) == 14, timeout=30), len(Sink.events)
    gaps = np.diff(Sink.arrived[9:])
    assert len(gaps) == 4 and all(gap > 0.8 for gap in gaps), gaps


@pytest.mark.parametrize("behaviour", ["fail", "hang", "absent"])
def test_a_failing_slow_or_absent_sink_never_fails_a_prediction(start_server, sink, training_rows, behaviour):
    Sink.behaviour = behaviour
    target = f"http://127.0.0.1:{free_port()}/" if behaviour == "absent" else sink
    srv = start_server({"DRIFT_WINDOW": "50", "K_SINK": target})
    send_rows(srv, training_rows[:50] * 1.7, per_request=50)
    if behaviour == "hang":
        assert Sink.hanging.wait(10)  # the sender is stuck on the sink...
    send_rows(srv, training_rows[:100])  # ...and predictions go on
    outcome = 'outcome="failed"'
    assert wait_for(lambda: outcome in requests.get(srv.url + "/metrics").text, timeout=20)
    assert "not sent to" in srv.log()


def test_a_model_served_its_own_training_rows_sees_no_drift(start_server, sink, tmp_path):
    """Diabetes' `sex` takes two values: its training maximum, read as the float32 the
    model predicts on, must count in the card's top bin, not above the training range."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor

    from func.model.export import build_card, to_onnx_bytes

    data = load_diabetes()
    names = [str(n) for n in data.feature_names]
    model = GradientBoostingRegressor(random_state=0).fit(data.data, data.target)
    path = tmp_path / "diabetes.onnx"
    path.write_bytes(to_onnx_bytes(model, build_card(model, data.data, names, "diabetes", "1")))
    srv = start_server({"MODEL_PATH": str(path), "DRIFT_WINDOW": "200", "K_SINK": sink})
    rows = np.random.default_rng(0).permutation(data.data)[:400]
    send_rows(srv, rows, per_request=20)
    report = wait_for(lambda: (r := drift(srv))["rows_seen"] == 400 and r)
    assert sum(report["windows"].values()) == 2
    assert "drift" not in report["windows"], report["last_complete"]["top_features"]
    assert report["last_complete"]["out_of_range_rate"] == 0
    assert Sink.events == []


def test_without_a_sink_the_log_says_so_once_and_metrics_count_every_event(start_server, training_rows):
    # no cooldown: each of three drifted windows opens an episode of its own, so three events
    srv = start_server({"DRIFT_WINDOW": "50", "DRIFT_COOLDOWN": "0"})
    send_rows(srv, training_rows[:150] * 1.7, per_request=50)

    def not_sent() -> list[str]:
        lines = requests.get(srv.url + "/metrics").text.splitlines()
        return [line.rsplit(" ", 1)[1] for line in lines if "no_sink" in line and line.startswith("warmstart_events")]

    assert wait_for(lambda: not_sent() == ["3.0"]), not_sent()
    assert srv.log().count("K_SINK is not set") == 1


def test_a_worker_stopped_by_sigterm_bins_the_rows_it_queued_first(start_server, training_rows):
    """Rows wait up to FLUSH_S (0.5 s) in their worker's queue; a worker told to stop
    (SIGTERM: a scale-down, a max-requests recycle) bins them before it exits."""
    import os
    import signal

    srv = start_server({"WORKERS": "1", "DRAIN_S": "0"})
    send_rows(srv, training_rows[:200], per_request=200)
    (worker,) = children(srv.proc.pid)
    os.kill(worker, signal.SIGTERM)  # at once: its drift thread waits 0.5 s for a batch
    assert wait_for(lambda: set(children(srv.proc.pid)) - {worker}, timeout=20)
    srv.wait_ready()
    assert drift(srv)["rows_seen"] == 200


def test_drift_counts_are_exported_and_drift_can_be_switched_off(start_server, training_rows, card):
    srv = start_server({"WORKERS": "2"})
    send_rows(srv, training_rows[:40], per_request=4)
    n_features = len(card["feature_names"])

    def bin_rows() -> float:
        text = requests.get(srv.url + "/metrics").text
        lines = [line for line in text.splitlines() if line.startswith("warmstart_drift_bin_rows_total{")]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    assert wait_for(lambda: bin_rows() == 40 * n_features)
    off = start_server({"DRIFT": "0"})
    send_rows(off, training_rows[:5])
    assert drift(off)["enabled"] is False
    assert "warmstart_drift_bin_rows_total" not in requests.get(off.url + "/metrics").text
    assert json.loads(requests.get(srv.url + "/drift").text)["enabled"] is True


def test_values_count_in_the_bin_their_feature_reference_names(card):
    """Layout.slots against the definition, value by value, on a card whose features
    have different numbers of bins (1, 2, 4 and 10): reference bin k holds
    edges[k-1] <= x < edges[k]; below the training min, above its max and missing
    values have bins of their own."""
    from bisect import bisect_right

    from func.model.card import ModelCard
    from func.observe.drift import Layout

    edge_lists = {"a": [], "b": [0.0], "c": [-1.0, 0.5, 2.0], "d": [float(e) for e in range(1, 10)]}
    data = dict(card)
    data["feature_names"] = list(edge_lists)
    data["reference"] = {
        name: {"bin_edges": edges, "fractions": [1 / (len(edges) + 1)] * (len(edges) + 1), "min": -5.0, "max": 12.0}
        for name, edges in edge_lists.items()
    }
    layout = Layout.of(ModelCard.from_dict(data))
    rng = np.random.default_rng(3)
    specials = [-5.0, 12.0, -5.5, 12.5, np.nan, np.inf, -np.inf, 0.0, -1.0, 0.5, 2.0, 9.0]
    rows = np.where(rng.random((500, 4)) < 0.4, rng.choice(specials, (500, 4)), rng.uniform(-6, 13, (500, 4)))
    slots = layout.slots(rows.astype(np.float32), np.zeros(500, dtype=np.int64))

    for f, (name, edges) in enumerate(edge_lists.items()):
        start = int(layout.starts[f])
        names = layout.bin_names[f]
        for r, value in enumerate(rows[:, f].astype(np.float32).tolist()):
            if np.isnan(value):
                expected = "missing"
            elif value < -5.0:
                expected = "below_min"
            elif value > 12.0:
                expected = "above_max"
            else:
                expected = f"b{bisect_right(edges, value)}"
            assert names[slots[f, r] - start] == expected, (name, value)
