"""The two ways warmstart is packaged, built as their builders build them and run:
the container image (Dockerfile) and a Knative Functions build (func build, host builder).
Each makes a fresh virtualenv and installs into it, so these are the slow tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from tests.support.server import DEFAULT_MODEL, ROOT, ServerProcess

PIP_TIMEOUT_S = 900


def fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def pip(python: Path, *args: str, cwd: Path | None = None) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def dockerfile_runtime() -> tuple[str, list[str], list[str]]:
    """From the Dockerfile's last stage: the requirements file the deps stage installs,
    the folders copied into the image, and the ENTRYPOINT."""
    text = (ROOT / "Dockerfile").read_text()
    requirements = re.search(r"COPY (requirements[\w.-]*\.txt) /tmp/requirements\.txt", text).group(1)
    final = text[text.rindex("\nFROM ") :]
    copied = re.findall(r"^COPY (?!--from)(\S+) ", final, flags=re.M)
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", final, flags=re.M).group(1)
    return requirements, copied, json.loads(entrypoint)


def predict_and_event(url: str, x) -> None:
    resp = requests.post(url + "/predict", json={"instances": x[:3].tolist()}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 3
    event = CloudEvent({"type": "warmstart.predict.v1", "source": "/tests", "id": "pkg-1"}, {"features": x[0].tolist()})
    headers, body = to_binary(event)
    reply = requests.post(url + "/", data=body, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    answer = from_http(reply.headers, reply.content)
    assert answer["type"] == "warmstart.prediction.v1" and answer["causationid"] == "pkg-1"
    assert answer.data["probability"] == answer.data["probabilities"][0][1]


def test_image_environment_serves_without_scikit_learn(tmp_path, dataset):
    x, _ = dataset
    requirements, copied, entrypoint = dockerfile_runtime()
    assert entrypoint == ["python", "-m", "func"]
    python = fresh_venv(tmp_path / "venv")
    pip(python, "-r", str(ROOT / requirements))
    app = tmp_path / "app"
    for folder in copied:
        shutil.copytree(ROOT / folder, app / folder)
    (app / "models").mkdir()
    shutil.copy(DEFAULT_MODEL, app / "models" / "model.onnx")

    check = subprocess.run([str(python), "-c", "import sklearn"], capture_output=True, text=True)
    assert check.returncode != 0, "scikit-learn must not be in the image"

    cmd = [str(python), *entrypoint[1:]]
    server = ServerProcess({"MODEL_PATH": "models/model.onnx", "WORKERS": "2"}, cmd=cmd, log_dir=tmp_path)
    server.cwd = app
    server.start()
    try:
        server.wait_ready()
        predict_and_event(server.url, x)
        assert server.terminate() == 0
    finally:
        server.kill()


def test_knative_functions_host_build_serves_the_function(tmp_path, dataset):
    """The steps of func's Python host builder: a build folder with the scaffolding (a
    'service' project that depends on func-python and on this project as 'function'),
    `pip install . --target lib`, then `python service/main.py` with PYTHONPATH=lib."""
    x, _ = dataset
    build = tmp_path / "build"
    (build / "service").mkdir(parents=True)
    (build / "f").symlink_to(ROOT)
    (build / "pyproject.toml").write_text(
        '[project]\nname = "service"\nversion = "0.1.0"\n'
        f'dependencies = ["func-python", "function @ file://{build / "f"}"]\n'
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        "[tool.hatch.metadata]\nallow-direct-references = true\n"
        '[tool.hatch.build.targets.wheel]\npackages = ["service"]\n'
    )
    (build / "service" / "__init__.py").write_text("")
    (build / "service" / "main.py").write_text(
        "from func_python.http import serve\nfrom function import new\n\nif __name__ == '__main__':\n    serve(new)\n"
    )
    python = fresh_venv(build / ".venv")
    pip(python, ".", "--target", "lib", cwd=build)
    # The image copies func/ as a folder; `func build` installs the package pyproject.toml
    # describes. Both must carry the same files, or one path serves a different app.
    assert package_files(build / "lib" / "func") == package_files(ROOT / "func")

    # func.yaml's environment, relative paths and all, in the function's folder (the
    # buildpack's working directory); the code comes from lib/, not from the checkout.
    spec = yaml.safe_load((ROOT / "func.yaml").read_text())
    env = {e["name"]: e["value"] for e in spec["run"]["envs"]}
    assert not os.path.isabs(env["MODEL_PATH"])
    server = ServerProcess(
        {**env, "PYTHONPATH": str(build / "lib")},
        cmd=[str(python), str(build / "service" / "main.py")],
        log_dir=tmp_path,
    )
    server.env["LISTEN_ADDRESS"] = f"127.0.0.1:{server.port}"
    server.cwd = build / "f"
    server.start()
    try:
        server.wait_listening(60)
        health = spec["deploy"]["healthEndpoints"]
        deadline = time.monotonic() + 30
        while requests.get(server.url + health["readiness"], timeout=5).status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert requests.get(server.url + health["liveness"], timeout=5).status_code == 200
        predict_and_event(server.url, x)
        assert requests.post(server.url + "/predict", json={"features": [1]}).status_code == 422
        # the pages are package data: the wheel must carry them
        assert "<html" in requests.get(server.url + "/explain", headers={"Accept": "text/html"}).text
    finally:
        server.kill()
    assert os.path.isdir(build / "lib" / "func_python")


def package_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def requirement_names(name: str) -> set[str]:
    """Package names a requirements file installs, following its -r includes."""
    names: set[str] = set()
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(line[3:].strip())
        elif line:
            names.add(re.split(r"[\[=<>~ ]", line)[0].lower())
    return names


def test_trainer_target_runs_the_retraining_job_and_the_default_image_stays_without_scikit_learn():
    text = (ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM (\S+ AS \w+|\S+)\n(.*?)(?=^FROM |\Z)", text, flags=re.M | re.S))
    named = {
        header.split(" AS ")[1]: (header.split(" AS ")[0], body) for header, body in stages.items() if " AS " in header
    }
    base, trainer = named["trainer"]
    assert json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", trainer, flags=re.M).group(1)) == [
        "python",
        "-m",
        "func.retrain",
    ]
    assert "USER 10001" in trainer
    installed = re.search(r"pip install .*-r (requirements[\w.-]*\.txt)", named[base][1]).group(1)
    assert {"scikit-learn", "skl2onnx", "onnx", "s3fs"} <= requirement_names(installed)
    # `docker build .` builds the last stage: the serving image, not the trainer
    requirements, _, entrypoint = dockerfile_runtime()
    assert entrypoint == ["python", "-m", "func"]
    assert not {"scikit-learn", "skl2onnx", "skops", "joblib"} & requirement_names(requirements)
