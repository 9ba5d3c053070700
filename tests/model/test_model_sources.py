"""MODEL_PATH as a URI: models served from file://, http(s)://, s3:// and an MLflow
registry, fetched once per pod into the cache, and every fetch error a 503 with one
log line (as for a local file)."""

from __future__ import annotations

import hashlib
import shutil

import requests

from tests.model.test_model_loading import assert_not_ready_with_one_log_line
from tests.support.services import S3_ENV, register_in_mlflow


def predict(srv) -> requests.Response:
    resp = requests.post(srv.url + "/predict", json={"features": [15.0] * 30}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp


def test_model_from_a_file_uri(start_server, default_model):
    srv = start_server({"MODEL_PATH": default_model.as_uri()})
    assert predict(srv).headers["X-Model-Name"] == "breast-cancer-rf"


def test_model_from_a_url_is_fetched_once_per_pod(start_server, file_server, default_model, tmp_path):
    shutil.copy(default_model, file_server.root / "model.onnx")
    env = {
        "MODEL_PATH": f"{file_server.url}/model.onnx",
        "MODEL_SHA256": hashlib.sha256(default_model.read_bytes()).hexdigest(),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "WORKERS": "2",
    }
    srv = start_server(env)
    assert predict(srv).headers["X-Model-Version"] == "1"
    assert file_server.gets == {"/model.onnx": 1}, "two workers, one fetch"
    # a restarted container of the same pod finds the file in the cache
    srv.kill()
    again = start_server(env)
    predict(again)
    assert file_server.gets == {"/model.onnx": 1}


def test_model_url_not_found_is_not_ready(start_server, file_server, tmp_path):
    srv = start_server(
        {"MODEL_PATH": f"{file_server.url}/gone.onnx", "MODEL_CACHE_DIR": str(tmp_path / "cache")}, ready=False
    )
    assert_not_ready_with_one_log_line(srv, f"MODEL_PATH={file_server.url}/gone.onnx: not found")


def test_unreachable_store_is_not_ready(start_server, tmp_path):
    from tests.support.server import free_port

    url = f"http://127.0.0.1:{free_port()}/model.onnx"
    srv = start_server({"MODEL_PATH": url, "MODEL_CACHE_DIR": str(tmp_path / "cache")}, ready=False)
    assert_not_ready_with_one_log_line(srv, f"MODEL_PATH={url}: cannot fetch")


def test_fetched_model_with_the_wrong_digest_is_refused_and_not_cached(
    start_server, file_server, default_model, tmp_path
):
    shutil.copy(default_model, file_server.root / "model.onnx")
    cache = tmp_path / "cache"
    env = {"MODEL_PATH": f"{file_server.url}/model.onnx", "MODEL_SHA256": "ab" * 32, "MODEL_CACHE_DIR": str(cache)}
    srv = start_server(env, ready=False)
    assert_not_ready_with_one_log_line(srv, "sha256 is", "MODEL_SHA256 requires " + "ab" * 32)
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == []


def test_model_from_s3(start_server, s3_endpoint, default_model, tmp_path):
    s3 = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint}
    requests.put(f"{s3_endpoint}/models", timeout=10).raise_for_status()
    put = requests.put(f"{s3_endpoint}/models/bc/1/model.onnx", data=default_model.read_bytes(), timeout=10)
    put.raise_for_status()
    srv = start_server({**s3, "MODEL_PATH": "s3://models/bc/1/model.onnx", "MODEL_CACHE_DIR": str(tmp_path / "c")})
    assert predict(srv).headers["X-Model-Name"] == "breast-cancer-rf"

    missing = start_server({**s3, "MODEL_PATH": "s3://models/bc/9/model.onnx"}, ready=False)
    assert_not_ready_with_one_log_line(missing, "MODEL_PATH=s3://models/bc/9/model.onnx: not found")


def test_model_from_the_mlflow_registry_by_version_and_alias(start_server, mlflow_url, default_model, tmp_path):
    version = register_in_mlflow(mlflow_url, "sources-test", default_model, alias="champion")
    env = {"MLFLOW_TRACKING_URI": mlflow_url, "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    by_version = start_server({**env, "MODEL_PATH": f"models:/sources-test/{version}"})
    assert predict(by_version).headers["X-Model-Name"] == "breast-cancer-rf"
    by_alias = start_server({**env, "MODEL_PATH": "models:/sources-test@champion"})
    predict(by_alias)

    unknown = start_server({**env, "MODEL_PATH": "models:/sources-test/99"}, ready=False)
    assert_not_ready_with_one_log_line(unknown, "models:/sources-test/99", "answered 404")


def test_registry_reference_without_a_tracking_uri_is_not_ready(start_server):
    srv = start_server({"MODEL_PATH": "models:/anything/1", "MLFLOW_TRACKING_URI": ""}, ready=False)
    assert_not_ready_with_one_log_line(srv, "MLFLOW_TRACKING_URI")


def test_a_champion_pointer_serves_the_model_it_names_checked_against_its_digest(start_server, default_model, tmp_path):
    import hashlib
    import json

    store = tmp_path / "store" / "breast-cancer-rf"
    pointer = store / "champion.json"
    store.mkdir(parents=True)
    digest = hashlib.sha256(default_model.read_bytes()).hexdigest()
    pointer.write_text(json.dumps({"version": "1", "uri": default_model.as_uri(), "sha256": digest}))
    srv = start_server({"MODEL_PATH": str(pointer), "MODEL_CACHE_DIR": str(tmp_path / "cache")})
    assert predict(srv).headers["X-Model-Version"] == "1"

    pointer.write_text(json.dumps({"version": "1", "uri": default_model.as_uri(), "sha256": "0" * 64}))
    wrong = start_server({"MODEL_PATH": str(pointer), "MODEL_CACHE_DIR": str(tmp_path / "other")}, ready=False)
    assert_not_ready_with_one_log_line(
        wrong, f"MODEL_PATH={pointer} ({default_model.as_uri()}): sha256 is {digest}", "the champion pointer requires"
    )
    absent = start_server({"MODEL_PATH": str(tmp_path / "none" / "champion.json")}, ready=False)
    assert_not_ready_with_one_log_line(absent, "no such champion pointer; a promotion writes it")
