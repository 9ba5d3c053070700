"""The prediction log (PREDICTION_LOG): every row a pod predicted and every label it was
given reach Parquet parts under the prefix, exactly once across workers, on local files
and on S3; rows still buffered at SIGTERM are written before the pod exits; a store that
refuses writes costs rows, counted, and never a prediction."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from tests.support.mounts import in_mount_namespace, needs_mounts
from tests.support.server import wait_for
from tests.support.services import S3_ENV

REVISION = "log-00001"


def read_log(root: str | Path, kind: str, filesystem=None) -> pa.Table:
    """Every complete part of one kind (a reader skips names starting with '_')."""
    return ds.dataset(f"{root}/{kind}", format="parquet", filesystem=filesystem).to_table()


def send_rows(url: str, x: np.ndarray, requests_count: int) -> dict[str, np.ndarray]:
    """Requests of 1 to 4 rows, each on a new connection (both workers take some):
    row id -> the row sent."""
    sent = {}
    for i in range(requests_count):
        n = 1 + i % 4
        rows = x[i : i + n]
        body = {"features": rows[0].tolist()} if n == 1 else {"instances": rows.tolist()}
        resp = requests.post(url + "/predict", json=body, timeout=10)
        assert resp.status_code == 200, resp.text
        pid = resp.headers["X-Prediction-Id"]
        for r in range(n):
            sent[pid if n == 1 else f"{pid}/{r}"] = rows[r]
    return sent


def log_counts(url: str) -> dict[tuple[str, str], float]:
    text = requests.get(url + "/metrics", timeout=10).text
    return {
        (s.labels["kind"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "warmstart_prediction_log_rows_total"
    }


def assert_logged_exactly(table: pa.Table, sent: dict[str, np.ndarray], card: dict) -> None:
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(sent), "every row once, none twice"
    assert set(ids) == set(sent)
    features = table.column("features").flatten()
    logged = np.column_stack([c.to_numpy() for c in features])
    order = [ids.index(i) for i in sent]
    np.testing.assert_array_equal(logged[order], np.array(list(sent.values()), dtype=np.float32))
    assert [f.name for f in table.schema.field("features").type] == card["feature_names"]
    assert set(table.column("revision").to_pylist()) == {REVISION}
    assert set(table.column("model_name").to_pylist()) == {card["name"]}
    assert set(table.column("model_version").to_pylist()) == {card["version"]}
    assert len(set(table.column("model_sha256").to_pylist()).pop()) == 64


def test_two_workers_log_every_row_once_and_their_labels(start_server, tmp_path, dataset, card):
    x, _ = dataset
    log = tmp_path / "log"
    srv = start_server(
        {"WORKERS": "2", "PREDICTION_LOG": str(log), "PREDICTION_LOG_FLUSH_S": "0.2", "K_REVISION": REVISION}
    )
    sent = send_rows(srv.url, x, 60)
    first = next(iter(sent))
    labels = [{"id": first, "label": 0}, {"id": "from-elsewhere/3", "label": 1}, {"id": first, "label": 1}]
    assert requests.post(srv.url + "/feedback", json={"feedback": labels}).json()["accepted"] == 3
    # written while the server runs, by each worker on its own timer
    wait_for(lambda: log_counts(srv.url).get(("predictions", "written")) == len(sent), timeout=20)
    assert log_counts(srv.url)[("predictions", "written")] == len(sent)
    wait_for(lambda: log_counts(srv.url).get(("feedback", "written")) == 3, timeout=20)
    assert_logged_exactly(read_log(log, "predictions"), sent, card)
    writers = {p.name.split("-")[1] for p in (log / "predictions").rglob("*.parquet")}
    assert len(writers) == 2, "each worker writes parts of its own"
    feedback = read_log(log, "feedback").to_pylist()
    assert [(f["id"], f["label"], f["matched"]) for f in feedback] == [
        (first, 0, True),
        ("from-elsewhere/3", 1, False),
        (first, 1, True),
    ]
    assert feedback[1]["request_id"] == "from-elsewhere" and feedback[1]["row"] == 3
    assert srv.terminate() == 0
    assert not [p for p in log.rglob("*") if p.name.startswith("_")], "no temporary part is left"


def test_rows_accepted_before_sigterm_reach_the_store(start_server, tmp_path, dataset, card):
    """Parts are due only every 10 minutes: what the workers hold when SIGTERM comes is
    written as they stop, so a pod scaled to zero loses none of its rows."""
    x, _ = dataset
    log = tmp_path / "log"
    srv = start_server(
        {"WORKERS": "2", "PREDICTION_LOG": str(log), "PREDICTION_LOG_FLUSH_S": "600", "K_REVISION": REVISION}
    )
    sent = send_rows(srv.url, x, 40)
    assert not log.exists() or not list(log.rglob("*.parquet"))
    assert srv.terminate() == 0
    assert_logged_exactly(read_log(log, "predictions"), sent, card)


def test_a_log_on_s3(start_server, s3_endpoint, dataset, card):
    import s3fs

    x, _ = dataset
    requests.put(f"{s3_endpoint}/truth", timeout=10).raise_for_status()
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint}
    srv = start_server(
        {
            **env,
            "WORKERS": "2",
            "PREDICTION_LOG": "s3://truth/log",
            "PREDICTION_LOG_FLUSH_S": "0.2",
            "K_REVISION": REVISION,
        }
    )
    sent = send_rows(srv.url, x, 20)
    resp = requests.post(srv.url + "/feedback", json={"id": next(iter(sent)), "label": 1})
    assert resp.json() == {"accepted": 1, "matched": 1, "reported": 0, "unmatched": 0}
    assert srv.terminate() == 0
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    assert_logged_exactly(read_log("truth/log", "predictions", fs), sent, card)
    assert read_log("truth/log", "feedback", fs).column("label").to_pylist() == [1]
    assert not [p for p in fs.find("truth/log") if p.rsplit("/", 1)[1].startswith("_")]


@needs_mounts
def test_a_read_only_log_store_costs_rows_counted_never_a_prediction(start_server, tmp_path, dataset):
    x, _ = dataset
    log = tmp_path / "log"
    log.mkdir()
    q = shlex.quote(str(log))
    cmd = in_mount_namespace(f"mount --bind {q} {q} && mount -o remount,bind,ro {q}")
    srv = start_server({"WORKERS": "2", "PREDICTION_LOG": str(log), "PREDICTION_LOG_FLUSH_S": "0.1"}, cmd=cmd)
    sent = send_rows(srv.url, x, 30)  # every one answered 200
    wait_for(lambda: log_counts(srv.url).get(("predictions", "failed")) == len(sent), timeout=20)
    counts = log_counts(srv.url)
    assert counts[("predictions", "failed")] == len(sent) and ("predictions", "written") not in counts
    assert "prediction log:" in srv.log() and "rows lost" in srv.log()
    assert list(log.iterdir()) == []
    assert srv.terminate() == 0


def test_a_full_buffer_drops_rows_counted_and_the_prediction_is_answered(start_server, tmp_path, dataset):
    x, _ = dataset
    srv = start_server(
        {
            "WORKERS": "1",
            "PREDICTION_LOG": str(tmp_path / "log"),
            "PREDICTION_LOG_BUFFER": "8",
            "PREDICTION_LOG_FLUSH_S": "600",
        }
    )
    assert requests.post(srv.url + "/predict", json={"instances": x[:6].tolist()}).status_code == 200
    assert requests.post(srv.url + "/predict", json={"instances": x[:6].tolist()}).status_code == 200  # over 8
    assert log_counts(srv.url)[("predictions", "dropped")] == 6
    assert srv.terminate() == 0
    assert read_log(tmp_path / "log", "predictions").num_rows == 6


def test_a_batch_job_logs_its_rows_once_even_when_delivered_twice(start_server, tmp_path, dataset, card):
    x, names = dataset
    data = tmp_path / "data"
    data.mkdir()
    src = data / "in.parquet"
    pq.write_table(pa.table({name: x[:500, j] for j, name in enumerate(names)}), src)
    log = tmp_path / "log"
    srv = start_server({"BATCH_ALLOW": str(data), "PREDICTION_LOG": str(log), "PREDICTION_LOG_SAMPLE": "0.1"})
    event = CloudEvent(
        {"type": "warmstart.batch.v1", "source": "/tests", "id": "nightly-1"},
        {"input": str(src), "output": str(data / "out.parquet")},
    )
    for _ in range(2):  # a broker's redelivery
        headers, body = to_binary(event)
        assert requests.post(srv.url + "/", data=body, headers=headers, timeout=60).status_code == 200
    logged = read_log(log, "predictions")
    # every 10th row of the job (PREDICTION_LOG_SAMPLE=0.1), once
    assert sorted(logged.column("id").to_pylist(), key=lambda i: int(i.split("/")[1])) == [
        f"nightly-1/{r}" for r in range(0, 500, 10)
    ]
    output = pq.read_table(data / "out.parquet")
    by_id = dict(zip(output.column("prediction_id").to_pylist(), output.column("prediction").to_pylist()))
    assert all(by_id[i] == p for i, p in zip(logged.column("id").to_pylist(), logged.column("prediction").to_pylist()))
