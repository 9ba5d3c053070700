"""The retraining job, run as the JobSink runs it: a drift event file in, a published
model (or a rejection) and a CloudEvent to a real receiver out; then a second server
serves what it published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.retrain import DRIFT_ID, SHIFT, drift_event, sha256, write_csv
from tests.support.server import DEFAULT_MODEL, ROOT, free_port


@pytest.fixture
def shifted(tmp_path, dataset) -> Path:
    from sklearn.datasets import load_breast_cancer

    x, names = dataset
    return write_csv(tmp_path / "shifted.csv", x * SHIFT, load_breast_cancer().target, names)


@pytest.fixture
def job(tmp_path, shifted, receiver):
    """Run `python -m func.retrain` with the environment a JobSink Job would have."""
    store = tmp_path / "store"

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        base = {
            "K_EVENT_PATH": str(drift_event(tmp_path / "event")),
            "TRAIN_DATA_URI": str(shifted),
            "MODEL_PATH": str(DEFAULT_MODEL),
            "MODEL_STORE": store.as_uri(),
            "K_SINK": receiver.url,
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        }
        full = {**os.environ, **base, **env}
        full = {k: v for k, v in full.items() if v != ""}
        return subprocess.run(
            [sys.executable, "-m", "func.retrain", *args],
            cwd=ROOT,
            env=full,
            capture_output=True,
            text=True,
            timeout=300,
            umask=0o022,  # as a Job's container has it
        )

    run.store = store
    return run


def log_lines(result: subprocess.CompletedProcess, level: str) -> list[str]:
    entries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [e["message"] for e in entries if e["level"] == level]


def published(store: Path) -> list[str]:
    """The versions' files in a folder store (not its notes: rejections, claims, champion)."""
    found = store.rglob("*") if store.exists() else []
    return sorted(str(p.relative_to(store)) for p in found if p.name in ("model.onnx", "trained.json"))


def test_drift_event_ends_in_a_better_model_that_a_new_server_serves(job, receiver, shifted, start_server, tmp_path):
    result = job(CE_MODE="structured")
    assert result.returncode == 0, result.stdout + result.stderr

    (event,) = receiver.events
    assert receiver.modes == ["structured"]
    assert event["type"] == "warmstart.model.trained.v1"
    assert event["causationid"] == DRIFT_ID and event["subject"] == "breast-cancer-rf"
    data = event.data
    model_file = job.store / "breast-cancer-rf" / "2" / "model.onnx"
    assert data["model"] == {
        "name": "breast-cancer-rf",
        "version": "2",
        "uri": model_file.as_uri(),
        "sha256": sha256(model_file),
    }
    assert data["parent"] == {"version": "1", "sha256": sha256(DEFAULT_MODEL)}
    assert data["trigger"] == DRIFT_ID
    assert data["data"] == {"uri": str(shifted), "sha256": sha256(shifted), "rows": 569}
    metrics = data["metrics"]
    assert metrics["metric"] == "accuracy"
    assert metrics["candidate"]["accuracy"] > metrics["current"]["accuracy"] + 0.05
    assert published(job.store) == ["breast-cancer-rf/2/model.onnx", "breast-cancer-rf/2/trained.json"]

    srv = start_server(
        {"MODEL_PATH": data["model"]["uri"], "MODEL_SHA256": data["model"]["sha256"], "MODEL_CACHE_DIR": str(tmp_path)}
    )
    lines = shifted.read_text().splitlines()[1:]
    rows = [[float(v) for v in line.split(",")[:-1]] for line in lines]
    labels = [int(line.split(",")[-1]) for line in lines]
    resp = requests.post(srv.url + "/predict", json={"instances": rows}, timeout=30)
    assert resp.status_code == 200 and resp.headers["X-Model-Version"] == "2"
    card = requests.get(srv.url + "/model", timeout=10).json()
    assert card["lineage"]["trigger"] == DRIFT_ID and card["lineage"]["parent"]["version"] == "1"
    assert np.mean(np.array(resp.json()["predictions"]) == labels) > 0.95


def test_the_documented_hist_gradient_boosting_trainer_publishes_a_model(job, receiver):
    result = job(TRAINER="tests.support.trainers:hist_gradient_boosting")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (event,) = receiver.events
    assert event["type"] == "warmstart.model.trained.v1"
    assert published(job.store) == ["breast-cancer-rf/2/model.onnx", "breast-cancer-rf/2/trained.json"]


def test_a_published_version_is_world_readable_with_its_forest(job, receiver):
    """The store is read by a server running as another user than the job; the forest
    beside the model (func/model/forest.py) lets it answer before onnxruntime is up."""
    assert job().returncode == 0
    modes = {str(p.relative_to(job.store)): p.stat().st_mode & 0o777 for p in job.store.rglob("*") if p.is_file()}
    assert modes == {
        "breast-cancer-rf/2/model.onnx": 0o644,
        "breast-cancer-rf/2/model.forest": 0o644,
        "breast-cancer-rf/2/trained.json": 0o644,
    }


def test_the_same_event_twice_publishes_one_version(job, receiver):
    first, second = job(), job()
    assert first.returncode == 0 and second.returncode == 0, second.stdout
    assert published(job.store) == ["breast-cancer-rf/2/model.onnx", "breast-cancer-rf/2/trained.json"]
    assert [e["type"] for e in receiver.events] == ["warmstart.model.trained.v1"] * 2
    assert receiver.events[0]["id"] == receiver.events[1]["id"], "a consumer can drop the repeat"
    assert receiver.events[0].data == receiver.events[1].data


def test_a_run_by_hand_takes_options_instead_of_an_event(job, receiver, shifted, tmp_path):
    store = tmp_path / "by-hand"
    options = [
        "--data",
        str(shifted),
        "--store",
        str(store),
        "--event-id",
        "nightly-2026-11-25",
        "--sink",
        receiver.url,
    ]
    result = job(*options, K_EVENT_PATH="", TRAIN_DATA_URI="", MODEL_STORE="", K_SINK="")
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = receiver.events
    assert event.data["trigger"] == "nightly-2026-11-25"
    assert event.data["model"]["uri"] == f"{store}/breast-cancer-rf/2/model.onnx"
    assert published(store) == ["breast-cancer-rf/2/model.onnx", "breast-cancer-rf/2/trained.json"]


def test_a_worse_candidate_is_rejected_and_nothing_published(job, receiver):
    result = job(TRAINER="tests.support.trainers:swapped_labels")
    assert result.returncode == 0, result.stdout + result.stderr
    assert published(job.store) == []
    (event,) = receiver.events
    assert receiver.modes == ["binary"]
    assert event["type"] == "warmstart.model.rejected.v1"
    data = event.data
    assert data["trigger"] == DRIFT_ID and data["retryable"] is False
    assert data["metrics"]["candidate"]["accuracy"] < data["metrics"]["current"]["accuracy"]
    assert "accuracy" in data["reason"] and "worse" in data["reason"]


@pytest.mark.parametrize(
    ("env", "phrase"),
    [
        ({"TARGET_COLUMN": "label"}, "no target column 'label'"),
        ({"TRAINER": "tests.no_such_module:fit"}, "TRAINER=tests.no_such_module:fit: cannot import"),
        ({"TRAINER": "tests.support.trainers:unfitted"}, "returned an unfitted RandomForestClassifier"),
        ({"TRAINER": "tests.support.trainers:nothing"}, "returned NoneType, not a scikit-learn estimator"),
        ({"MODEL_STORE": "models:/breast-cancer-rf", "MLFLOW_TRACKING_URI": ""}, "MLFLOW_TRACKING_URI"),
        ({"RETRAIN_METRIC": "rmse"}, "RETRAIN_METRIC=rmse: breast-cancer-rf is a classifier; choose one of accuracy"),
    ],
    ids=["target-missing", "trainer-import", "trainer-unfitted", "trainer-none", "registry-unset", "metric-of-task"],
)
def test_bad_input_fails_permanently_and_publishes_nothing(job, receiver, env, phrase):
    result = job(**env)
    assert_failed(result, job.store, receiver, 2, phrase)


@pytest.mark.parametrize("metric", ["balanced_accuracy", "f1", "roc_auc", "log_loss"])
def test_the_comparison_scores_the_metric_retrain_metric_names(job, receiver, metric):
    """log_loss is a loss: the retrained model's is lower, and lower is better."""
    result = job(RETRAIN_METRIC=metric)
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = receiver.events
    assert event["type"] == "warmstart.model.trained.v1", event.data.get("reason")
    scores = event.data["metrics"]
    assert scores["metric"] == metric
    better = scores["current"][metric] - scores["candidate"][metric]
    assert better > 0.05 if metric == "log_loss" else better < -0.05
    assert set(scores["candidate"]) == {"accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss"}


def test_an_unknown_retrain_metric_is_a_settings_error(job, receiver):
    result = job(RETRAIN_METRIC="auc")
    assert result.returncode == 2
    assert "--metric/RETRAIN_METRIC=auc: expected one of accuracy, balanced_accuracy" in result.stderr
    assert published(job.store) == [] and receiver.events == []


def test_too_few_rows_for_a_held_out_split(job, receiver, tmp_path, dataset):
    x, names = dataset
    few = write_csv(tmp_path / "few.csv", x[:60], np.arange(60) % 2, names)
    assert_failed(job(TRAIN_DATA_URI=str(few)), job.store, receiver, 2, "60 rows are too few")


def test_malformed_event_file(job, receiver, tmp_path):
    bad = tmp_path / "bad-event"
    bad.write_text('{"specversion": "1.0", "id": ')
    assert_failed(job(K_EVENT_PATH=str(bad)), job.store, receiver, 2, f"K_EVENT_PATH={bad}: not JSON")


def test_an_event_nested_too_deep_is_bad_input(job, receiver, tmp_path):
    deep = tmp_path / "deep-event"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert_failed(
        job(K_EVENT_PATH=str(deep)), job.store, receiver, 2, f"K_EVENT_PATH={deep}: not JSON (nested too deep)"
    )


def test_a_corrupt_record_in_the_store_is_skipped_with_a_log_line(job, receiver, tmp_path):
    corrupt = job.store / "breast-cancer-rf" / "7" / "trained.json"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text('{"model": {"version": "7"')
    for event_id in ("drift-1", "drift-2"):  # it must not poison later runs either
        result = job(K_EVENT_PATH=str(drift_event(tmp_path / event_id, event_id)), RETRAIN_COOLDOWN="0")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        (warning,) = [w for w in log_lines(result, "warning") if "skipping" in w]
        assert f"skipping {corrupt}: not JSON" in warning
    assert [e["type"] for e in receiver.events] == ["warmstart.model.trained.v1"] * 2
    assert [e.data["model"]["version"] for e in receiver.events] == ["2", "3"]


@pytest.mark.parametrize("tolerance", ["nan", "inf", "-inf"])
def test_a_tolerance_that_is_not_a_finite_number_is_refused_at_start(job, receiver, tolerance):
    """nan rejected every candidate and inf published every one."""
    result = job(RETRAIN_TOLERANCE=tolerance)
    assert result.returncode == 2
    assert f"error: --tolerance/RETRAIN_TOLERANCE={float(tolerance)}: expected a finite number" in result.stderr
    assert "Traceback" not in result.stderr and published(job.store) == [] and receiver.events == []


def test_unreadable_data_is_retryable(job, receiver):
    url = f"http://127.0.0.1:{free_port()}/train.csv"
    event = assert_failed(job(TRAIN_DATA_URI=url), job.store, receiver, 3, f"TRAIN_DATA_URI={url}: cannot read")
    assert event.data["retryable"] is True


def assert_failed(result, store, receiver, code: int, phrase: str):
    assert result.returncode == code, result.stdout + result.stderr
    (error,) = log_lines(result, "error")
    assert phrase in error
    assert "Traceback" not in result.stdout + result.stderr
    assert published(store) == []
    (event,) = receiver.events
    assert event["type"] == "warmstart.model.rejected.v1"
    assert phrase in event.data["reason"]
    return event


def test_the_job_registers_a_version_in_mlflow_that_a_server_serves(job, receiver, mlflow_url, start_server, tmp_path):
    env = {"MODEL_STORE": "models:/retrain-test", "MLFLOW_TRACKING_URI": mlflow_url}
    first, again = job(**env), job(**env)
    assert first.returncode == 0 and again.returncode == 0, first.stdout + again.stdout
    trained = receiver.of_type("warmstart.model.trained.v1")
    assert len(trained) == 2 and trained[0].data == trained[1].data, "one version for one event"
    model = trained[0].data["model"]
    assert model["uri"] == f"models:/retrain-test/{model['version']}"
    versions = requests.get(
        mlflow_url + "/api/2.0/mlflow/model-versions/search", params={"filter": "name='retrain-test'"}, timeout=30
    ).json()["model_versions"]
    assert [v["version"] for v in versions] == [model["version"]]
    folder = versions[0]["source"].removeprefix("mlflow-artifacts:/")
    files = requests.get(mlflow_url + "/api/2.0/mlflow-artifacts/artifacts", params={"path": folder}, timeout=30)
    assert sorted(f["path"] for f in files.json()["files"]) == ["model.forest", "model.onnx"], "the forest beside it"

    srv = start_server(
        {
            "MODEL_PATH": model["uri"],
            "MODEL_SHA256": model["sha256"],
            "MLFLOW_TRACKING_URI": mlflow_url,
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        }
    )
    resp = requests.post(srv.url + "/predict", json={"features": [15.0] * 30}, timeout=10)
    assert resp.status_code == 200 and resp.headers["X-Model-Version"] == model["version"]
    assert "answering from the mapped forest" in srv.log()


def test_a_server_fed_shifted_rows_starts_the_job_that_retrains_it(start_server, receiver, job, tmp_path, dataset):
    """The loop from its first station: drift detected by a real server, sent to a real
    receiver, written to a file as the JobSink writes it, then the job."""
    from cloudevents.conversion import to_structured

    x, _ = dataset
    srv = start_server({"K_SINK": receiver.url, "DRIFT_WINDOW": "200"})
    for start in range(0, 400, 50):
        rows = (x[start : start + 50] * SHIFT).tolist()
        assert requests.post(srv.url + "/predict", json={"instances": rows}, timeout=10).status_code == 200
    deadline = time.monotonic() + 30
    while not receiver.of_type("warmstart.drift.detected.v1"):
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.1)
    drift = receiver.of_type("warmstart.drift.detected.v1")[0]
    _, body = to_structured(drift)
    event_file = tmp_path / "jobsink-event"
    event_file.write_bytes(body)

    result = job(K_EVENT_PATH=str(event_file))
    assert result.returncode == 0, result.stdout + result.stderr
    (trained,) = receiver.of_type("warmstart.model.trained.v1")
    assert trained.data["trigger"] == drift["id"]
    assert trained.data["parent"]["sha256"] == drift.data["model"]["sha256"]
    assert published(job.store) == ["breast-cancer-rf/2/model.onnx", "breast-cancer-rf/2/trained.json"]


def test_a_regressor_is_compared_on_rmse(job, receiver, tmp_path):
    from sklearn.datasets import load_diabetes

    from func.model.export import build_card, to_onnx_bytes
    from tests.support.trainers import forest_regressor

    data = load_diabetes()
    names = [str(n) for n in data.feature_names]
    served = forest_regressor(data.data, data.target)
    model = tmp_path / "diabetes.onnx"
    model.write_bytes(to_onnx_bytes(served, build_card(served, data.data, names, "diabetes", "4")))
    # every feature moved by two of its standard deviations: the served trees split in the wrong places
    fresh = tmp_path / "fresh.csv"
    lines = [",".join([*names, "progression"])]
    lines += [
        ",".join([*(repr(float(v) + 0.1) for v in row), repr(float(t))]) for row, t in zip(data.data, data.target)
    ]
    fresh.write_text("\n".join(lines) + "\n")

    result = job(
        K_EVENT_PATH="",
        MODEL_PATH=str(model),
        TRAIN_DATA_URI=str(fresh),
        TARGET_COLUMN="progression",
        TRAINER="tests.support.trainers:forest_regressor",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = receiver.events
    assert event["type"] == "warmstart.model.trained.v1"
    assert event.data["model"]["version"] == "5"
    metrics = event.data["metrics"]
    assert metrics["metric"] == "rmse"
    assert metrics["candidate"]["rmse"] < 0.7 * metrics["current"]["rmse"]
    assert metrics["candidate"]["r2"] > metrics["current"]["r2"] and "mae" in metrics["candidate"]


def tie_dataset(path: Path, x: np.ndarray, y: np.ndarray, names: list[str]) -> Path:
    """x and y with one held-out row replaced by a row on which the default trainer's
    forest splits its votes 50/50: scikit-learn answers [0.5, 0.5] (class 0), onnxruntime
    [0.49999994, 0.50000006] (class 1), as its float32 sum of 100 tree weights rounds.
    The seeded split depends only on the labels, so the replaced row stays held out and
    the forest is the one the job trains."""
    import onnxruntime as ort

    from func.model.export import build_card, to_onnx_bytes
    from func.retrain.training import Dataset, default_trainer, split

    train, test, _, _ = split(Dataset("index", "", np.arange(len(y))[:, None], y), 0.2, True)
    train, test = train.ravel(), test.ravel()
    forest = default_trainer(x[train], y[train])
    onnx_model = ort.InferenceSession(to_onnx_bytes(forest, build_card(forest, x, names, "tie", "1")))
    steps = np.linspace(0, 1, 201)[:, None]
    for i in train[y[train] == 0]:
        for j in train[y[train] == 1]:
            line = x[i] + steps * (x[j] - x[i])
            ties = line[forest.predict_proba(line)[:, 0] == 0.5]
            if len(ties) and onnx_model.run(None, {"input": ties[:1].astype(np.float32)})[0][0] != 0:
                x = x.copy()
                x[test[0]] = ties[0]
                return write_csv(path, x, y, names)
    raise AssertionError("no row with a split vote on which ONNX picks the other class")


def test_a_probability_tie_on_a_held_out_row_passes_the_export_check(job, receiver, tmp_path, dataset):
    from sklearn.datasets import load_breast_cancer

    x, names = dataset
    data = tie_dataset(tmp_path / "tie.csv", x * SHIFT, load_breast_cancer().target, names)
    result = job(TRAIN_DATA_URI=str(data))
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = receiver.events
    assert event["type"] == "warmstart.model.trained.v1"
    assert published(job.store) == ["breast-cancer-rf/2/model.onnx", "breast-cancer-rf/2/trained.json"]


def test_a_rejected_event_redelivered_sends_its_rejection_again_without_training(job, receiver):
    first = job(TRAINER="tests.support.trainers:swapped_labels")
    # the default trainer would publish: the recorded rejection stands instead
    again = job()
    assert first.returncode == again.returncode == 0, again.stdout + again.stderr
    assert published(job.store) == []
    assert [e["type"] for e in receiver.events] == ["warmstart.model.rejected.v1"] * 2
    assert receiver.events[0]["id"] == receiver.events[1]["id"] and receiver.events[0].data == receiver.events[1].data
    assert any(f"event {DRIFT_ID} was rejected before" in m for m in log_lines(again, "info"))


def test_different_rejections_of_one_event_have_different_ids(job, receiver):
    url = f"http://127.0.0.1:{free_port()}/train.csv"
    unreachable, missing, unreachable_again = (
        job(TRAIN_DATA_URI=url),
        job(TARGET_COLUMN="label"),
        job(TRAIN_DATA_URI=url),
    )
    assert (unreachable.returncode, missing.returncode, unreachable_again.returncode) == (3, 2, 3)
    first, second, third = receiver.of_type("warmstart.model.rejected.v1")
    assert first["id"] != second["id"], "two outcomes of one event are two events"
    assert first["id"] == third["id"], "the same outcome again is the same event"


def second_event(tmp_path: Path) -> str:
    return str(drift_event(tmp_path / "event-2", "drift-8b1c"))


def test_a_second_event_of_one_episode_publishes_nothing_within_the_cooldown(job, receiver, tmp_path):
    first, second = job(), job(K_EVENT_PATH=second_event(tmp_path))
    assert first.returncode == second.returncode == 0, second.stdout + second.stderr
    assert published(job.store) == ["breast-cancer-rf/2/model.onnx", "breast-cancer-rf/2/trained.json"]
    assert [e["type"] for e in receiver.events] == ["warmstart.model.trained.v1"]
    (said,) = [m for m in log_lines(second, "info") if "nothing to train" in m]
    assert "version 2 was published from the same parent (version 1)" in said and DRIFT_ID in said

    # past the cooldown, the same parent may be retrained
    third = job(K_EVENT_PATH=str(drift_event(tmp_path / "event-3", "drift-9d2e")), RETRAIN_COOLDOWN="0")
    assert third.returncode == 0 and receiver.events[-1].data["model"]["version"] == "3"


def test_an_event_while_a_candidate_from_the_same_parent_is_in_flight_trains_nothing(job, receiver, tmp_path):
    import threading

    done: list = []
    slow = threading.Thread(target=lambda: done.append(job(TRAINER="tests.support.trainers:slow_forest")))
    slow.start()
    deadline = time.monotonic() + 60
    while not list(job.store.glob("breast-cancer-rf/candidates/*.json")):
        assert time.monotonic() < deadline and slow.is_alive(), done and done[0].stdout
        time.sleep(0.1)
    second = job(K_EVENT_PATH=second_event(tmp_path))
    slow.join(120)
    assert second.returncode == 0 and done[0].returncode == 0, second.stdout + done[0].stdout
    (said,) = [m for m in log_lines(second, "info") if "nothing to train" in m]
    assert f"in flight for event {DRIFT_ID}" in said
    assert published(job.store) == ["breast-cancer-rf/2/model.onnx", "breast-cancer-rf/2/trained.json"]
    assert [e.data["trigger"] for e in receiver.events] == [DRIFT_ID]
    assert list(job.store.glob("breast-cancer-rf/candidates/*")) == [], "the claim ends with the run"


def test_the_parent_is_the_champion_and_a_server_serves_the_champion_pointer(job, receiver, tmp_path, start_server):
    from func.model import champion

    assert job().returncode == 0
    v2 = receiver.events[0].data["model"]
    pointer = champion.move(v2, None)
    assert pointer == (job.store / "breast-cancer-rf" / "champion.json").as_uri()

    srv = start_server({"MODEL_PATH": pointer, "MODEL_CACHE_DIR": str(tmp_path / "serving-cache")})
    resp = requests.post(srv.url + "/predict", json={"features": [15.0] * 30}, timeout=10)
    assert resp.status_code == 200 and resp.headers["X-Model-Version"] == "2"

    # MODEL_PATH still names version 1: the store's champion, version 2, is the parent
    later = job(K_EVENT_PATH=second_event(tmp_path))
    assert later.returncode == 0, later.stdout + later.stderr
    trained = receiver.events[-1].data
    assert trained["parent"] == {"version": "2", "sha256": v2["sha256"]} and trained["model"]["version"] == "3"


def test_the_parent_is_the_registrys_champion_alias(job, receiver, mlflow_url, tmp_path):
    from func.model import champion

    env = {"MODEL_STORE": "models:/champion-test", "MLFLOW_TRACKING_URI": mlflow_url}
    assert job(**env).returncode == 0
    first = receiver.events[0].data["model"]
    assert champion.move(first, mlflow_url) == "models:/champion-test@champion"
    alias = requests.get(
        mlflow_url + "/api/2.0/mlflow/registered-models/alias",
        params={"name": "champion-test", "alias": "champion"},
        timeout=30,
    ).json()
    assert alias["model_version"]["version"] == first["version"]

    later = job(K_EVENT_PATH=second_event(tmp_path), **env)
    assert later.returncode == 0, later.stdout + later.stderr
    trained = receiver.events[-1].data
    assert trained["parent"] == {"version": first["version"], "sha256": first["sha256"]}


def test_the_s3_stores_champion_pointer_names_the_parent_and_the_served_model(
    job, receiver, s3_endpoint, start_server, tmp_path, monkeypatch
):
    from func.model import champion
    from tests.support.services import S3_ENV

    s3 = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint}
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    requests.put(f"{s3_endpoint}/loop", timeout=10).raise_for_status()
    env = {**s3, "MODEL_STORE": "s3://loop/models"}
    assert job(**env).returncode == 0
    v2 = receiver.events[0].data["model"]
    assert v2["uri"] == "s3://loop/models/breast-cancer-rf/2/model.onnx"
    assert champion.move(v2, None) == "s3://loop/models/breast-cancer-rf/champion.json"

    srv = start_server({**s3, "MODEL_PATH": "s3://loop/models/breast-cancer-rf/champion.json"})
    resp = requests.post(srv.url + "/predict", json={"features": [15.0] * 30}, timeout=10)
    assert resp.status_code == 200 and resp.headers["X-Model-Version"] == "2"

    later = job(K_EVENT_PATH=second_event(tmp_path), **env)
    assert later.returncode == 0, later.stdout + later.stderr
    assert receiver.events[-1].data["parent"] == {"version": "2", "sha256": v2["sha256"]}


def test_the_retraining_job_trains_on_the_log_it_is_given(start_server, job, receiver, tmp_path, dataset):
    """No glue: a server logs shifted rows, a labelling pipeline sends their outcomes,
    and the retraining job named the log as TRAIN_DATA_URI trains a better model on them."""
    from sklearn.datasets import load_breast_cancer

    x, _ = dataset
    y = load_breast_cancer().target
    log = tmp_path / "log"
    srv = start_server({"WORKERS": "2", "PREDICTION_LOG": str(log), "K_REVISION": "warmstart-00001"})
    labels = []
    for a in range(0, len(x), 50):
        resp = requests.post(srv.url + "/predict", json={"instances": (x[a : a + 50] * SHIFT).tolist()}, timeout=30)
        pid = resp.headers["X-Prediction-Id"]
        labels += [{"id": f"{pid}/{r}", "label": int(label)} for r, label in enumerate(y[a : a + 50])]
    assert requests.post(srv.url + "/feedback", json={"feedback": labels}, timeout=30).status_code == 200
    assert srv.terminate() == 0

    result = job(TRAIN_DATA_URI=str(log), TRAIN_DATA_SINCE="1d")
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = receiver.events
    assert event["type"] == "warmstart.model.trained.v1"
    assert event.data["data"]["uri"] == str(log) and event.data["data"]["rows"] == len(x)
    metrics = event.data["metrics"]
    assert metrics["candidate"]["roc_auc"] > metrics["current"]["roc_auc"] + 0.05


def served_and_labelled(srv, rows: np.ndarray, labels: np.ndarray) -> None:
    """Rows through /predict, 50 a request, then their true labels as feedback."""
    feedback = []
    for a in range(0, len(rows), 50):
        resp = requests.post(srv.url + "/predict", json={"instances": rows[a : a + 50].tolist()}, timeout=30)
        pid = resp.headers["X-Prediction-Id"]
        feedback += [{"id": f"{pid}/{r}", "label": int(label)} for r, label in enumerate(labels[a : a + 50])]
    assert requests.post(srv.url + "/feedback", json={"feedback": feedback}, timeout=30).status_code == 200


def test_a_drift_event_trains_on_the_log_since_the_drift_was_detected(start_server, job, receiver, tmp_path, dataset):
    """The world before the drift would teach the candidate (and its card's drift
    reference) what no longer holds, and the drifted window mixes both: a run started by
    a drift event reads the log from the moment that window closed, as the event says."""
    from sklearn.datasets import load_breast_cancer

    x, _ = dataset
    y = load_breast_cancer().target
    log = tmp_path / "log"
    env = {"PREDICTION_LOG": str(log), "PREDICTION_LOG_FLUSH_S": "0.2", "DRIFT_WINDOW": "250", "K_SINK": receiver.url}
    srv = start_server(env)
    served_and_labelled(srv, x[:250], y[:250])  # the world before the drift: the first window
    served_and_labelled(srv, x[250:500] * SHIFT, y[250:500])  # the window that drifts
    deadline = time.monotonic() + 30
    while not receiver.of_type("warmstart.drift.detected.v1"):
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.1)
    served_and_labelled(srv, x[:300] * SHIFT, y[:300])  # the world since
    assert srv.terminate() == 0
    drift = receiver.of_type("warmstart.drift.detected.v1")[0]
    assert drift.data["window"]["started_at"] <= drift.data["window"]["closed_at"]
    (tmp_path / "served-drift").write_text(json.dumps({**drift.get_attributes(), "data": drift.data}))
    receiver.events.clear()

    result = job(K_EVENT_PATH=str(tmp_path / "served-drift"), TRAIN_DATA_URI=str(log))
    assert result.returncode == 0, result.stdout + result.stderr
    (event,) = receiver.of_type("warmstart.model.trained.v1")
    assert event.data["data"]["rows"] == 300, result.stdout
    assert "since drift was detected" in result.stdout


def test_too_few_labelled_rows_in_a_log_is_retried_later(start_server, job, tmp_path, dataset):
    """Labels arrive after predictions: a log with too few of them yet is exit 3 (the Job
    retries), not 2 (bad input, which fails the Job for good)."""
    from sklearn.datasets import load_breast_cancer

    x, _ = dataset
    log = tmp_path / "log"
    srv = start_server({"PREDICTION_LOG": str(log)})
    served_and_labelled(srv, x[:30], load_breast_cancer().target[:30])
    assert srv.terminate() == 0
    result = job(TRAIN_DATA_URI=str(log), TRAIN_DATA_SINCE="1d")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "30 labelled rows so far" in result.stdout
