"""MODEL_PATH as a URI: models served from file://, http(s)://, s3:// and an MLflow
registry, fetched once per pod into the cache, and every fetch error a 503 with one
log line (as for a local file)."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
import requests

from func.model.source import Fetch, FetchError, local_model_file
from tests.support.server import assert_not_ready_with_one_log_line, error_lines
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
    assert file_server.gets == {"/model.onnx": 1, "/model.forest": 1}, "two workers, one fetch, one try for a forest"
    # a restarted container of the same pod finds the file in the cache
    srv.kill()
    again = start_server(env)
    predict(again)
    assert file_server.gets == {"/model.onnx": 1, "/model.forest": 1}


def test_a_models_forest_is_fetched_with_it_and_answers_first(start_server, file_server, default_model, tmp_path):
    from func.model.forest import write_forest

    data = default_model.read_bytes()
    (file_server.root / "model.onnx").write_bytes(data)
    assert write_forest(file_server.root / "model.onnx", data, hashlib.sha256(data).hexdigest()) is None
    cache = tmp_path / "cache"
    env = {"MODEL_PATH": f"{file_server.url}/model.onnx", "MODEL_CACHE_DIR": str(cache), "WORKERS": "2"}
    srv = start_server(env)
    predict(srv)
    assert file_server.gets == {"/model.onnx": 1, "/model.forest": 1}
    assert [p.read_bytes() for p in cache.glob("*.forest")] == [(file_server.root / "model.forest").read_bytes()]
    assert srv.log().count("answering from the mapped forest") == 2


def test_model_url_not_found_is_not_ready(start_server, file_server, tmp_path):
    srv = start_server(
        {"MODEL_PATH": f"{file_server.url}/gone.onnx", "MODEL_CACHE_DIR": str(tmp_path / "cache")}, ready=False
    )
    assert_not_ready_with_one_log_line(srv, f"MODEL_PATH={file_server.url}/gone.onnx: not found")


def test_unreachable_store_is_not_ready(start_server, tmp_path):
    from tests.support.server import free_port

    url = f"http://127.0.0.1:{free_port()}/model.onnx"
    env = {"MODEL_PATH": url, "MODEL_CACHE_DIR": str(tmp_path / "cache"), "MODEL_FETCH_ATTEMPTS": "2"}
    srv = start_server(env, ready=False)
    assert_not_ready_with_one_log_line(srv, f"MODEL_PATH={url}: unreachable (", "Connection refused", "(2 attempts)")


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


def forest_of(model: Path) -> bytes:
    from func.model.forest import forest_or_reason

    data = model.read_bytes()
    forest = forest_or_reason(data, hashlib.sha256(data).hexdigest())
    assert isinstance(forest, bytes), forest
    return forest


def assert_answers_from_the_forest_first(srv, cache: Path, forest: bytes) -> None:
    """Both workers started on the fetched forest, the one file beside the cached model."""
    predict(srv)
    assert [p.read_bytes() for p in cache.glob("*.forest")] == [forest]
    assert srv.log().count("answering from the mapped forest") == 2, srv.log()[-3000:]


def test_a_registered_versions_forest_is_fetched_with_it_and_answers_first(
    start_server, mlflow_url, default_model, tmp_path
):
    from func.model.registry import Registry

    forest = forest_of(default_model)
    created = Registry(mlflow_url).register(
        "forest-test", "model.onnx", default_model.read_bytes(), {}, beside={"model.forest": forest}
    )
    cache = tmp_path / "cache"
    env = {"MLFLOW_TRACKING_URI": mlflow_url, "MODEL_CACHE_DIR": str(cache), "WORKERS": "2"}
    srv = start_server({**env, "MODEL_PATH": f"models:/forest-test/{created.version}"})
    assert_answers_from_the_forest_first(srv, cache, forest)


def test_a_registered_version_in_s3_brings_its_forest(start_server, mlflow_url, s3_endpoint, default_model, tmp_path):
    """A version whose source is in its own store (s3://), not behind the artifact proxy."""
    forest = forest_of(default_model)
    requests.put(f"{s3_endpoint}/registry", timeout=10).raise_for_status()
    for name, data in (("model.onnx", default_model.read_bytes()), ("model.forest", forest)):
        requests.put(f"{s3_endpoint}/registry/bc/1/{name}", data=data, timeout=10).raise_for_status()
    api = mlflow_url + "/api/2.0/mlflow"
    requests.post(api + "/registered-models/create", json={"name": "s3-forest-test"}, timeout=30).raise_for_status()
    created = requests.post(
        api + "/model-versions/create", json={"name": "s3-forest-test", "source": "s3://registry/bc/1"}, timeout=30
    )
    created.raise_for_status()
    cache = tmp_path / "cache"
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint, "MLFLOW_TRACKING_URI": mlflow_url, "WORKERS": "2"}
    version = created.json()["model_version"]["version"]
    srv = start_server({**env, "MODEL_CACHE_DIR": str(cache), "MODEL_PATH": f"models:/s3-forest-test/{version}"})
    assert_answers_from_the_forest_first(srv, cache, forest)


def test_a_registered_version_without_a_forest_serves_and_asks_for_it_once(
    start_server, mlflow_url, default_model, tmp_path
):
    version = register_in_mlflow(mlflow_url, "no-forest-test", default_model)
    env = {
        "MODEL_PATH": f"models:/no-forest-test/{version}",
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "WORKERS": "2",
    }
    srv = start_server(env)
    predict(srv)
    asked = "no forest file fetched, onnxruntime alone will serve the model"
    assert srv.log().count(asked) == 1, "two workers, one try"
    assert "not found" in srv.log() and "answering from the mapped forest" not in srv.log()
    # a restarted container of the same pod does not ask again
    srv.kill()
    again = start_server(env)
    predict(again)
    assert asked not in again.log()


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


class MisbehavingStore:
    """A model store on a loopback port that misbehaves as told: `plan[path]` lists what
    each GET of `path` gets in turn (the last one repeats): "ok" (the file from `files`,
    whole, Range headers ignored), an HTTP status code, ("redirect", location), or
    "stall" (the head and half the body, then nothing). Without a plan: "ok" for a file
    in `files`, else 404."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list] = {}
        self.gets: dict[str, int] = {}
        self.stop = threading.Event()
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                n = store.gets[self.path] = store.gets.get(self.path, 0) + 1
                steps = store.plan.get(self.path, ["ok" if self.path in store.files else 404])
                step = steps[min(n, len(steps)) - 1]
                body = store.files.get(self.path, b"")
                if isinstance(step, tuple):
                    self.send_response(302)
                    self.send_header("Location", step[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif isinstance(step, int):
                    self.send_error(step)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if step == "stall":
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        store.stop.wait(60)
                    else:
                        self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def store(default_model):
    served = MisbehavingStore()
    served.files["/model.onnx"] = default_model.read_bytes()
    yield served
    served.close()


def fetch_error(url: str, cache: Path, **fetch) -> FetchError:
    with pytest.raises(FetchError) as caught:
        local_model_file(url, str(cache), None, None, Fetch(**fetch))
    return caught.value


def test_a_store_that_answers_503_once_is_retried_and_fetched_once_per_pod(start_server, store, tmp_path):
    store.plan["/model.onnx"] = [503, "ok"]
    env = {"MODEL_PATH": f"{store.url}/model.onnx", "MODEL_CACHE_DIR": str(tmp_path / "cache"), "WORKERS": "2"}
    srv = start_server(env)
    predict(srv)
    assert store.gets == {"/model.onnx": 2, "/model.forest": 1}, "one 503, then one fetch for both workers"
    assert "503" in srv.log() and "attempt 1 of 5" in srv.log()


def test_a_failed_fetch_is_not_repeated_by_each_worker_in_turn(start_server, store, tmp_path):
    store.plan["/model.onnx"] = [500]
    env = {
        "MODEL_PATH": f"{store.url}/model.onnx",
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "WORKERS": "2",
        "MODEL_FETCH_ATTEMPTS": "2",
    }
    srv = start_server(env, ready=False)
    deadline = time.monotonic() + 60
    while len(error_lines(srv)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    errors = [e["message"] for e in error_lines(srv)]
    assert len(errors) == 2 and all("unreachable (the store answered 500" in e for e in errors), errors
    assert store.gets == {"/model.onnx": 2}, "one worker's two attempts; the other took its answer"
    assert requests.get(srv.url + "/health/readiness", timeout=5).status_code == 503


@pytest.mark.parametrize(
    ("plan", "says", "retryable"),  # a redirect loop, a redirect to file://
    [
        ([404], "not found", False),
        ([500], "unreachable (the store answered 500", True),
        ([("redirect", "/model.onnx")], "refused redirect", False),
        ([("redirect", "file:///etc/passwd")], "refused redirect", False),
        ([403], "refused (the store answered 403", False),
    ],
)
def test_fetch_errors_say_what_the_store_did(store, tmp_path, plan, says, retryable):
    store.plan["/model.onnx"] = plan
    error = fetch_error(f"{store.url}/model.onnx", tmp_path / "cache", attempts=2)
    assert says in str(error) and error.retryable is retryable
    if retryable:
        assert "(2 attempts)" in str(error)


def test_a_stalled_store_times_out_with_a_log_line_and_leaves_no_part_file(start_server, store, tmp_path):
    store.plan["/model.onnx"] = ["stall"]
    cache = tmp_path / "cache"
    error = fetch_error(f"{store.url}/model.onnx", cache, attempts=1, timeout=0.5)
    assert "unreachable (timed out" in str(error) and error.retryable
    assert [p.name for p in cache.iterdir() if p.suffix == ".part"] == []


def test_sigterm_during_a_fetch_leaves_no_part_file(start_server, store, tmp_path):
    store.plan["/model.onnx"] = ["stall"]
    cache = tmp_path / "cache"
    srv = start_server({"MODEL_PATH": f"{store.url}/model.onnx", "MODEL_CACHE_DIR": str(cache)}, ready=False)
    deadline = time.monotonic() + 30
    while not list(cache.glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(cache.glob("*.part")), srv.log()
    assert "fetching MODEL_PATH=" in srv.log(), "a fetch in progress says so"
    assert srv.terminate() == 0
    assert list(cache.glob("*.part")) == []


def test_a_large_model_from_a_server_that_ignores_range_requests(store, tmp_path):
    big = bytes(range(256)) * (30_000)  # 7.7 MB, larger than one block of fsspec's HTTP reader
    store.files["/big.onnx"] = big
    path = local_model_file(f"{store.url}/big.onnx", str(tmp_path / "cache"), None, None)
    assert path.read_bytes() == big
    assert store.gets == {"/big.onnx": 1, "/big.forest": 1}
