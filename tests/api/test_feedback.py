"""Ground truth: every predict answer names its prediction id, and POST /feedback (or a
warmstart.feedback.v1 event) scores true labels against the answers this pod gave, into
live accuracy on /metrics, per revision."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from prometheus_client.parser import text_string_to_metric_families

REVISION = "truth-00001"


@pytest.fixture(scope="module")
def truth_server(tmp_path_factory):
    from tests.support.server import ServerProcess

    proc = ServerProcess({"WORKERS": "2", "K_REVISION": REVISION}, log_dir=tmp_path_factory.mktemp("truth")).start()
    proc.wait_ready()
    yield proc
    proc.kill()


def v2_body(rows: np.ndarray, **extra) -> dict:
    return {
        "inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}],
        **extra,
    }


def event(kind: str, data, **attributes) -> CloudEvent:
    return CloudEvent({"type": kind, "source": "/tests", **attributes}, data)


def post_event(url: str, ev: CloudEvent, structured: bool = False) -> requests.Response:
    headers, body = (to_structured if structured else to_binary)(ev)
    return requests.post(url + "/", data=body, headers=headers, timeout=10)


def feedback(url: str, labels: list[tuple[str, object]]) -> requests.Response:
    return requests.post(url + "/feedback", json={"feedback": [{"id": i, "label": y} for i, y in labels]}, timeout=10)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def scores(url: str) -> dict[tuple[str, str], float]:
    """(series, class or outcome) -> value of the feedback series on /metrics."""
    out = {}
    for name, labels, value in parse_metrics(requests.get(url + "/metrics", timeout=10).text):
        if name.startswith("warmstart_feedback"):
            assert labels["revision"] == REVISION and labels["model_version"] == "1"
            out[(name, labels.get("class") or labels.get("outcome") or "")] = value
    return out


def test_every_predict_answer_names_its_prediction_id(truth_server, dataset, card):
    x, _ = dataset
    url, name = truth_server.url, card["name"]
    answers = {
        "own JSON": requests.post(url + "/predict", json={"instances": x[:3].tolist()}),
        "own JSON, one row": requests.post(url + "/predict", json={"features": x[0].tolist()}),
        "POST /": requests.post(url + "/", json={"instances": x[:2].tolist()}),
        "V1": requests.post(url + f"/v1/models/{name}:predict", json={"instances": x[:2].tolist()}),
        "V2": requests.post(url + f"/v2/models/{name}/infer", json=v2_body(x[:2].astype(np.float32))),
        "V2 binary": requests.post(
            url + f"/v2/models/{name}/infer",
            json=v2_body(x[:2].astype(np.float32), parameters={"binary_data_output": True}),
        ),
        "event, binary": post_event(url, event("warmstart.predict.v1", {"instances": x[:2].tolist()})),
        "event, structured": post_event(url, event("warmstart.predict.v1", {"features": x[0].tolist()}), True),
        "explain": requests.post(url + "/explain", json={"instances": x[:1].tolist()}),
    }
    ids = {}
    for what, resp in answers.items():
        assert resp.status_code == 200, (what, resp.text)
        ids[what] = resp.headers.get("X-Prediction-Id")
        assert ids[what], what
    assert len(set(ids.values())) == len(ids), ids  # every request has its own
    assert "X-Prediction-Id" not in requests.get(url + "/model").headers  # no prediction, no id


def test_a_client_brings_its_own_id(truth_server, dataset, card):
    x, _ = dataset
    url = truth_server.url
    own = requests.post(url + "/predict", json={"instances": x[:2].tolist(), "id": "order-37"})
    assert own.headers["X-Prediction-Id"] == "order-37"
    number = requests.post(url + f"/v1/models/{card['name']}:predict", json={"instances": x[:1].tolist(), "id": 12345})
    assert number.headers["X-Prediction-Id"] == "12345"
    v2 = requests.post(url + f"/v2/models/{card['name']}/infer", json=v2_body(x[:1].astype(np.float32), id="req-9"))
    assert v2.headers["X-Prediction-Id"] == "req-9" and v2.json()["id"] == "req-9"
    # a V2 id that cannot be a prediction id (it holds '/') is still echoed; the server makes the id
    v2 = requests.post(url + f"/v2/models/{card['name']}/infer", json=v2_body(x[:1].astype(np.float32), id="a/b"))
    assert v2.json()["id"] == "a/b" and v2.headers["X-Prediction-Id"] not in ("a/b", "")
    bad = requests.post(url + "/predict", json={"instances": x[:1].tolist(), "id": "row/7"})
    assert bad.status_code == 422 and bad.json()["error"]["message"].startswith("id: ")


def test_feedback_scores_live_accuracy_per_class_across_workers(truth_server, dataset):
    """Rows answered by both workers, labelled through both: every label is matched, and
    the per-class counts are exact (correct, by true class, by predicted class)."""
    x, _ = dataset
    url = truth_server.url
    before = scores(url)
    predicted: dict[str, int] = {}
    session = requests.Session()
    for start in range(0, 200, 10):
        # new connections spread the requests over both workers
        resp = requests.post(url + "/predict", json={"instances": x[start : start + 10].tolist()})
        for r, label in enumerate(resp.json()["predictions"]):
            predicted[f"{resp.headers['X-Prediction-Id']}/{r}"] = label
    single = requests.post(url + "/predict", json={"features": x[300].tolist()})
    predicted[single.headers["X-Prediction-Id"]] = single.json()["predictions"][0]
    rng = np.random.default_rng(7)
    truth = {i: int(rng.integers(0, 2)) for i in predicted}
    items = list(truth.items())
    for start in range(0, len(items), 50):
        resp = requests.post(
            url + "/feedback", json={"feedback": [{"id": i, "label": y} for i, y in items[start : start + 50]]}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {
            "accepted": len(items[start : start + 50]),
            "matched": len(items[start : start + 50]),
            "reported": 0,
            "unmatched": 0,
        }
    session.close()
    after = scores(url)

    def moved(series: str, key: str) -> float:
        return after.get((series, key), 0) - before.get((series, key), 0)

    assert moved("warmstart_feedback_total", "matched") == len(truth)
    for c in (0, 1):
        assert moved("warmstart_feedback_labels_total", str(c)) == sum(y == c for y in truth.values())
        assert moved("warmstart_feedback_predicted_total", str(c)) == sum(p == c for p in predicted.values())
        assert moved("warmstart_feedback_correct_total", str(c)) == sum(
            truth[i] == c and predicted[i] == c for i in truth
        )


def test_a_label_sent_twice_is_matched_but_scored_once(truth_server, dataset):
    x, _ = dataset
    url = truth_server.url
    pid = requests.post(url + "/predict", json={"features": x[0].tolist()}).headers["X-Prediction-Id"]
    before = scores(url)
    assert feedback(url, [(pid, 1)]).json() == {"accepted": 1, "matched": 1, "reported": 0, "unmatched": 0}
    # a broker's retry, and the same row as `<id>/0`
    retried = feedback(url, [(pid, 1), (pid + "/0", 1)]).json()
    assert retried == {"accepted": 2, "matched": 2, "reported": 0, "unmatched": 0}
    after = scores(url)
    labelled = sum(after[k] - before.get(k, 0) for k in after if k[0] == "warmstart_feedback_labels_total")
    assert labelled == 1
    assert after[("warmstart_feedback_total", "matched")] - before[("warmstart_feedback_total", "matched")] == 3


def test_a_label_for_an_id_this_pod_never_served_is_accepted_as_unmatched(truth_server):
    resp = feedback(truth_server.url, [("never-served", 0), ("never-served/4", 1), ("x/y/z", 0)])
    assert resp.status_code == 200
    assert resp.json() == {"accepted": 3, "matched": 0, "reported": 0, "unmatched": 3}


@pytest.mark.parametrize(
    "body, where",
    [
        ({"feedback": [{"id": "a", "label": 1}, {"id": "b", "label": 7}]}, "feedback[1].label: 7 is not a class"),
        ({"feedback": [{"id": "a", "label": "1"}]}, "feedback[0].label: expected a class of this model (numbers"),
        ({"feedback": [{"id": "a", "label": True}]}, "feedback[0].label: expected a class"),
        ({"feedback": [{"id": "a"}]}, "feedback[0]: 'label' is missing"),
        ({"feedback": [{"id": "", "label": 0}]}, "feedback[0].id: expected the id of a prediction"),
        ({"feedback": [{"id": None, "label": 0}]}, "feedback[0].id: expected the id of a prediction"),
        ({"feedback": []}, "feedback: expected at least one"),
        ({"feedback": {"id": "a"}}, "feedback: expected a list"),
        ({"labels": []}, "request body: expected"),
        ([1, 2], "request body: expected"),
    ],
)
def test_bad_feedback_is_a_422_that_says_where(truth_server, body, where):
    resp = requests.post(truth_server.url + "/feedback", json=body, timeout=10)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"].startswith(where), resp.json()


def test_feedback_that_is_not_json_is_a_400_or_415(truth_server):
    assert (
        requests.post(
            truth_server.url + "/feedback", data=b"{", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    assert (
        requests.post(truth_server.url + "/feedback", data=b"a", headers={"Content-Type": "text/csv"}).status_code
        == 415
    )


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_a_feedback_event_labels_like_post_feedback(truth_server, dataset, structured):
    x, _ = dataset
    url = truth_server.url
    pid = requests.post(url + "/predict", json={"instances": x[:2].tolist()}).headers["X-Prediction-Id"]
    data = {"feedback": [{"id": f"{pid}/1", "label": 0}, {"id": "elsewhere", "label": 1}]}
    resp = post_event(url, event("warmstart.feedback.v1", data, id="labels-1"), structured)
    assert resp.status_code == 200, resp.text
    reply = from_http(resp.headers, resp.content)
    assert reply["type"] == "warmstart.feedback.accepted.v1" and reply["causationid"] == "labels-1"
    assert reply.data == {"accepted": 2, "matched": 1, "reported": 0, "unmatched": 1}
    one = post_event(url, event("warmstart.feedback.v1", {"id": pid + "/0", "label": 1}))
    assert from_http(one.headers, one.content).data == {"accepted": 1, "matched": 1, "reported": 0, "unmatched": 0}
    bad = post_event(url, event("warmstart.feedback.v1", {"id": pid + "/0", "label": "yes"}))
    assert bad.status_code == 422


def test_feedback_off_is_a_404(start_server):
    server = start_server({"FEEDBACK": "0"})
    resp = requests.post(server.url + "/feedback", json={"feedback": [{"id": "a", "label": 1}]})
    assert resp.status_code == 404 and "FEEDBACK=0" in resp.json()["error"]["message"]
    assert not [
        n for n, _, _ in parse_metrics(requests.get(server.url + "/metrics").text) if n.startswith("warmstart_feedback")
    ]


def test_the_recent_index_has_its_storage_before_it_serves(tmp_path):
    """The shared folder is in memory on a pod: a page of a sparse table would get its
    storage at its first write through the map, a SIGBUS on a full folder (as for the
    counts, func/observe/tallies.py allocate)."""
    import os

    from func.observe.recent import RecentPredictions

    recent = RecentPredictions(str(tmp_path), 4096)
    table = tmp_path / f"recent-{os.getpid()}.bin"
    assert table.stat().st_blocks * 512 >= table.stat().st_size == recent.slots * 32


# -- labels for answers another pod gave, reporting those answers -----------------------


@pytest.fixture(scope="module")
def two_revisions(tmp_path_factory):
    """A stable and a canary pod, as two revisions of a Service: a label sent through the
    Service's URL reaches either, whichever gave the answer."""
    from tests.support.server import ServerProcess

    procs = [
        ServerProcess({"WORKERS": "2", "K_REVISION": name}, log_dir=tmp_path_factory.mktemp(name)).start()
        for name in ("stable-00001", "canary-00002")
    ]
    for proc in procs:
        proc.wait_ready()
    yield procs
    for proc in procs:
        proc.kill()


def series(url: str, revision: str) -> dict[tuple[str, str], float]:
    """(series, class or outcome) -> value of one revision's feedback series on a pod's /metrics."""
    out = {}
    for name, labels, value in parse_metrics(requests.get(url + "/metrics", timeout=10).text):
        if name.startswith("warmstart_feedback") and labels["revision"] == revision:
            out[(name, labels.get("class") or labels.get("outcome") or "")] = value
    return out


def test_a_label_reporting_the_answer_another_pod_gave_is_scored_for_that_revision(two_revisions, card):
    stable, canary = two_revisions
    rows = np.array([[card["reference"][n]["mean"] * s for n in card["feature_names"]] for s in (0.5, 1, 1.5, 2)])
    answer = requests.post(canary.url + "/predict", json={"id": "elsewhere", "instances": rows.tolist()}, timeout=10)
    predictions = answer.json()["predictions"]
    truth = [1, 0, 1, 1]
    body = {
        "feedback": [
            {
                "id": f"elsewhere/{r}",
                "label": y,
                "prediction": p,
                "revision": answer.headers["X-Revision"],
                "model_version": answer.headers["X-Model-Version"],
            }
            for r, (y, p) in enumerate(zip(truth, predictions))
        ]
    }
    assert answer.headers["X-Revision"] == "canary-00002"
    resp = requests.post(stable.url + "/feedback", json=body, timeout=10)
    assert resp.json() == {"accepted": 4, "matched": 0, "reported": 4, "unmatched": 0}, resp.text
    scored = series(stable.url, "canary-00002")
    assert scored[("warmstart_feedback_total", "reported")] == 4
    assert sum(v for (name, _), v in scored.items() if name == "warmstart_feedback_labels_total") == 4
    correct = sum(y == p for y, p in zip(truth, predictions))
    assert sum(v for (name, _), v in scored.items() if name == "warmstart_feedback_correct_total") == correct
    for y in (0, 1):
        assert scored[("warmstart_feedback_labels_total", str(y))] == truth.count(y)
        assert scored[("warmstart_feedback_predicted_total", str(y))] == predictions.count(y)
    # stable's own series have scored nothing
    own = series(stable.url, "stable-00001")
    assert own[("warmstart_feedback_total", "reported")] == 0
    assert sum(v for (name, _), v in own.items() if name == "warmstart_feedback_labels_total") == 0

    # The same labels again (a broker's retry): known now, not scored twice.
    again = requests.post(stable.url + "/feedback", json=body, timeout=10)
    assert again.json() == {"accepted": 4, "matched": 4, "reported": 0, "unmatched": 0}
    assert series(stable.url, "canary-00002") == scored
    # The pod that gave the answers has seen none of it.
    assert series(canary.url, "canary-00002")[("warmstart_feedback_total", "matched")] == 0


def test_a_reported_answer_of_this_very_revision_is_scored_in_its_own_series(two_revisions):
    """Another replica of the same revision, or an answer older than the recent index."""
    stable, _ = two_revisions
    before = series(stable.url, "stable-00001")
    item = {"id": "other-replica", "label": 1, "prediction": 0, "revision": "stable-00001"}
    assert requests.post(stable.url + "/feedback", json=item, timeout=10).json()["reported"] == 1
    after = series(stable.url, "stable-00001")
    assert after[("warmstart_feedback_total", "reported")] == before[("warmstart_feedback_total", "reported")] + 1
    assert after[("warmstart_feedback_labels_total", "1")] == before[("warmstart_feedback_labels_total", "1")] + 1
    assert after[("warmstart_feedback_predicted_total", "0")] == before[("warmstart_feedback_predicted_total", "0")] + 1
    assert after[("warmstart_feedback_correct_total", "1")] == before[("warmstart_feedback_correct_total", "1")]


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ({"prediction": 0}, "feedback[0].revision: missing"),
        ({"revision": "canary-00002"}, "feedback[0].prediction: missing"),
        ({"prediction": 2, "revision": "canary-00002"}, "feedback[0].prediction: 2 is not a class of this model"),
        ({"prediction": 0, "revision": "Canary_2"}, "feedback[0].revision: expected the X-Revision header"),
        ({"prediction": 0, "revision": "canary-00002\n"}, "feedback[0].revision: expected the X-Revision header"),
        ({"prediction": 0, "revision": "c", "model_version": "1\n2"}, "feedback[0].model_version: expected"),
        ({"model_version": "1"}, "feedback[0].model_version: given without the 'prediction' and 'revision'"),
    ],
)
def test_a_report_that_is_not_whole_or_not_well_formed_is_422_naming_it(two_revisions, item, says):
    stable, _ = two_revisions
    resp = requests.post(stable.url + "/feedback", json={"feedback": [{"id": "x", "label": 1, **item}]}, timeout=10)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"].startswith(says), resp.text


def test_a_reported_row_labelled_twice_in_one_request_is_scored_once(two_revisions):
    """As match() scores a known row's first label only: `<id>` and `<id>/0` are one row."""
    stable, _ = two_revisions
    before = series(stable.url, "canary-00002")
    report = {"label": 0, "prediction": 0, "revision": "canary-00002", "model_version": "1"}
    body = {"feedback": [{"id": "twice", **report}, {"id": "twice/0", **report}]}
    resp = requests.post(stable.url + "/feedback", json=body, timeout=10)
    assert resp.json() == {"accepted": 2, "matched": 0, "reported": 2, "unmatched": 0}
    after = series(stable.url, "canary-00002")
    labelled = ("warmstart_feedback_labels_total", "0")
    assert after[labelled] == before.get(labelled, 0) + 1  # scored once
    assert after[("warmstart_feedback_total", "reported")] == before[("warmstart_feedback_total", "reported")] + 2
