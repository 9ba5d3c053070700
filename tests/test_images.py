"""The Dockerfile's images, built with podman (scripts/build_images.sh) and run as they are
deployed: the function image as knative/base/service.yaml runs it (uid 10001, read-only
root, /tmp a small tmpfs, no capabilities), the trainer as the retraining JobSink runs it,
the rollout job on a Service file. `pytest -m image` runs these alone; without podman they
skip, saying how to get it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.images import (
    BUILD_SCRIPT,
    SERVICE,
    bytecode_report,
    deployed_container,
    exercise_every_path,
    image_names,
    imported_modules,
    podman,
    podman_problem,
    rows,
    write_batch_inputs,
)
from tests.support.otlp import OtlpReceiver
from tests.support.retrain import DRIFT_ID, SHIFT, drift_event, write_csv
from tests.support.server import free_port

pytestmark = pytest.mark.image

BUILD_TIMEOUT_S = 1800
# Kubernetes' default terminationGracePeriodSeconds; knative/base sets none.
GRACE_S = 30


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    """Build (or find cached) every target of this checkout's Dockerfile; their names.
    With WARMSTART_TEST_REMOVE_IMAGES=1 (.ci/run: a throwaway machine with a small disk)
    they and their build layers are removed once this module is done, 1.7 GB."""
    problem = podman_problem()
    if problem:
        pytest.skip(problem)
    built = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert built.returncode == 0, built.stdout + built.stderr
    names = image_names()
    yield names
    if os.environ.get("WARMSTART_TEST_REMOVE_IMAGES") == "1":
        podman("rmi", "--force", *names.values(), timeout=120)
        podman("image", "prune", "--force", timeout=120)


class Container:
    def __init__(self, name: str, port: int):
        self.name, self.url = name, f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        result = podman("logs", self.name, timeout=30)
        return result.stdout + result.stderr

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            try:
                status = requests.get(self.url + "/health/readiness", timeout=2)
            except requests.ConnectionError:
                status = None
            if status is not None and status.status_code == 200:
                return
            if status is not None and "failed to load" in status.text:  # waiting will not change it
                break
            time.sleep(0.2)
        answer = status.text if status is not None else "no answer"
        raise AssertionError(f"not ready (waited up to {timeout}s): {answer}\n{self.logs()}")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Path:
    """The batch folder mounted into the container; uid 10001 writes the outputs there."""
    folder = tmp_path_factory.mktemp("jobs")
    folder.chmod(0o777)
    return folder


@pytest.fixture(scope="module")
def function(images, jobs):
    options, env = deployed_container()
    port = free_port()
    name = f"warmstart-test-{port}"
    podman(
        "run", "--detach", f"--name={name}", *options, *env,
        f"--publish=127.0.0.1:{port}:8080", f"--volume={jobs}:/jobs", "--env=BATCH_ALLOW=/jobs/",
        # every process logs each import: which ones the image compiled is checked below
        "--env=PYTHONPROFILEIMPORTTIME=1",
        images["function"], check=True,
    )  # fmt: skip
    container = Container(name, port)
    yield container
    podman("rm", "--force", "--time=0", name, timeout=60)


def test_function_image_serves_every_protocol_and_batch_jobs_as_knative_runs_it(images, function, jobs):
    """Ready as uid 10001 on a read-only root (its model readable, its shared folder in the
    /tmp tmpfs); own JSON, V1, V2 binary and a CloudEvent agree; a batch job from and to
    each format on the mounted folder; /metrics; an explanation. Every module the server
    imported for all of it has bytecode in the image (scripts/compile_imported.py), so no
    start compiles any."""
    function.wait_ready()
    inputs = write_batch_inputs(jobs)
    exercise_every_path(function.url, inputs, jobs, served_jobs="/jobs")
    explained = requests.post(function.url + "/explain", json={"instances": rows(2).tolist()}, timeout=60)
    assert explained.status_code == 200, explained.text
    imported = imported_modules(function.logs())
    assert "func.api.app" in imported and "pyarrow.parquet" in imported, sorted(imported)[:20]
    assert bytecode_report(images["function"], imported) == {"without_bytecode": [], "venv_sources": []}


def test_function_image_sends_traces_without_protobuf_or_requests(images):
    """Tracing is a setting, not a rebuild: with an OTLP endpoint set, the image's own
    exporter (func/observe/otlp_*.py) delivers a request's spans, with bytecode for all it
    imports, and the image holds neither protobuf nor requests (9 MB it no longer needs)."""
    receiver = OtlpReceiver()
    options, env = deployed_container()
    port, name = free_port(), f"warmstart-trace-{free_port()}"
    try:
        podman(
            "run", "--detach", f"--name={name}", *options, *env, "--network=host", f"--env=PORT={port}",
            f"--env=OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint}",
            "--env=OTEL_BSP_SCHEDULE_DELAY=100", "--env=PYTHONPROFILEIMPORTTIME=1", images["function"], check=True,
        )  # fmt: skip
        container = Container(name, port)
        container.wait_ready()
        answer = requests.post(container.url + "/predict", json={"instances": rows(1).tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not receiver.named("POST /predict", "decode", "infer", "encode"):
            time.sleep(0.1)
        assert receiver.named("POST /predict", "decode", "infer", "encode"), container.logs()
        imported = imported_modules(container.logs())
        assert "func.observe.otlp_export" in imported and "opentelemetry.sdk.trace" in imported
        assert bytecode_report(images["function"], imported) == {"without_bytecode": [], "venv_sources": []}
    finally:
        podman("rm", "--force", "--time=0", name, timeout=60)
        receiver.close()
    absent = podman(
        "run", "--rm", "--read-only", "--entrypoint=python", images["function"], "-c",
        "import importlib.util; print([m for m in ('google', 'requests', 'urllib3') if importlib.util.find_spec(m)])",
        check=True,
    )  # fmt: skip
    assert absent.stdout.strip() == "[]", absent.stdout


def test_function_image_holds_no_installer_tests_or_headers(images):
    """As uid 10001 (the image's USER): no pip, setuptools or scikit-learn, no test suites,
    no C headers in site-packages (scripts/prune_venv.sh)."""
    listing = podman(
        "run", "--rm", "--read-only", "--entrypoint=python", images["function"], "-c",
        "import importlib.util, json, os, sysconfig; site = sysconfig.get_paths()['purelib'];"
        "print(json.dumps([os.getuid(), [m for m in ('pip', 'setuptools', 'sklearn') if importlib.util.find_spec(m)],"
        "sorted(os.path.relpath(d, site) for d, _, _ in os.walk(site) if os.path.basename(d) == 'tests'),"
        "sorted(f for _, _, fs in os.walk(site) for f in fs if f.endswith(('.h', '.hpp')))]))",
        check=True,
    )  # fmt: skip
    assert json.loads(listing.stdout) == [10001, [], [], []], listing.stdout


def test_function_image_exits_0_on_sigterm_within_the_grace_period(function):
    function.wait_ready()
    started = time.monotonic()
    podman("kill", "--signal=TERM", function.name, check=True)
    waited = podman("wait", function.name, timeout=GRACE_S + 30, check=True)
    elapsed = time.monotonic() - started
    assert waited.stdout.strip() == "0", function.logs()
    assert elapsed < GRACE_S, f"exited after {elapsed:.1f}s, past the {GRACE_S}s grace period"
    assert "Traceback" not in function.logs()


def test_trainer_image_retrains_on_mounted_data_and_publishes_to_a_mounted_store(images, tmp_path, receiver):
    """As the JobSink runs it: uid 10001, read-only root, the drift event at
    /etc/jobsink-event/event; the data mounted read-only, the store a mounted folder. The
    parent is the model the image carries. The sink is on this host's loopback, so the
    job shares the host's network."""
    from sklearn.datasets import load_breast_cancer

    data = tmp_path / "data"
    data.mkdir()
    names = [str(n) for n in load_breast_cancer().feature_names]
    write_csv(data / "shifted.csv", load_breast_cancer().data * SHIFT, load_breast_cancer().target, names)
    drift_event(data / "event")
    for path in data.iterdir():
        path.chmod(0o644)
    store = tmp_path / "store"
    store.mkdir(mode=0o777)
    store.chmod(0o777)
    run = podman(
        "run", "--rm", "--user=10001", "--read-only", "--tmpfs=/tmp:rw,mode=1777", "--cap-drop=ALL",
        "--security-opt=no-new-privileges", "--network=host",
        f"--volume={data}:/data:ro", f"--volume={data / 'event'}:/etc/jobsink-event/event:ro",
        f"--volume={store}:/store",
        "--env=K_EVENT_PATH=/etc/jobsink-event/event", "--env=TRAIN_DATA_URI=/data/shifted.csv",
        "--env=MODEL_STORE=file:///store", f"--env=K_SINK={receiver.url}", "--env=MODEL_CACHE_DIR=/tmp/models",
        images["trainer"], timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    (event,) = receiver.events
    assert event["type"] == "warmstart.model.trained.v1" and event["causationid"] == DRIFT_ID
    published = store / "breast-cancer-rf" / "2" / "model.onnx"
    assert event.data["model"]["uri"] == "file:///store/breast-cancer-rf/2/model.onnx"
    # the trees as mapped arrays beside the model: a pod answers from them while onnxruntime starts
    assert sorted(p.name for p in published.parent.iterdir()) == ["model.forest", "model.onnx", "trained.json"]
    metrics = event.data["metrics"]
    assert metrics["candidate"]["roc_auc"] > metrics["current"]["roc_auc"]

    import onnxruntime as ort

    session = ort.InferenceSession(str(published))
    labels = session.run(None, {session.get_inputs()[0].name: (rows(50) * SHIFT).astype(np.float32)})[0]
    assert np.mean(labels == load_breast_cancer().target[:50]) > 0.9


def test_rollout_image_answers_help_and_dry_runs_against_a_service_file(images, tmp_path):
    helped = podman("run", "--rm", "--read-only", images["rollout"], "--help", check=True)
    assert "usage:" in helped.stdout and "start" in helped.stdout

    before = SERVICE.read_text()
    done = podman(
        "run", "--rm", "--read-only", f"--volume={SERVICE}:/work/service.yaml:ro", images["rollout"],
        "start", "--service-file=/work/service.yaml", "--dry-run", "--allow=s3://models/", "--model-uri=s3://models/rf/2/model.onnx",
        "--model-version=2", f"--model-sha256={'a' * 64}",
        check=True,
    )  # fmt: skip
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines and all(line["dry_run"] and line["service"] == "warmstart" for line in lines), done.stdout
    traffic = lines[-1]["patch"]["spec"]["traffic"]
    assert {t["tag"]: t["percent"] for t in traffic} == {"stable": 90, "canary": 10}
    assert SERVICE.read_text() == before
