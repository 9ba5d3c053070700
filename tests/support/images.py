"""The container images for tests: podman, the names scripts/build_images.sh gives them,
and the work a serving image must do (every protocol, /metrics, batch jobs in each
format), shared with loadtests/loaded_libs.py, which measures the same work's libraries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import requests
import yaml
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from tests.support.server import ROOT

BUILD_SCRIPT = ROOT / "scripts" / "build_images.sh"
SERVICE = ROOT / "knative" / "base" / "service.yaml"
# what scripts/build_images.sh tags; `--names` prints them, one per target
TARGETS = ("function", "trainer", "rollout")
MODEL = "breast-cancer-rf"
BATCH_ROWS = 300
FORMATS = (".csv", ".jsonl", ".parquet")


def podman_problem() -> str | None:
    """Why the image tests cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed: run scripts/build_images.sh --install as root (Debian), or install podman"
    return None


def podman(
    *args: str, timeout: float = 300, check: bool = False, stdin: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "scripts" / "containers.conf")}
    result = subprocess.run(["podman", *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def deployed_container() -> tuple[list[str], list[str]]:
    """podman options for what knative/base/service.yaml sets on the container: the user,
    read-only root, /tmp in memory with its size limit, capabilities, privilege escalation;
    and its environment."""
    spec = yaml.safe_load(SERVICE.read_text())["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    assert security["capabilities"]["drop"] == ["ALL"] and not security["allowPrivilegeEscalation"]
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    (tmp,) = spec["volumes"]
    size = tmp["emptyDir"]["sizeLimit"].removesuffix("Mi")
    options = [
        f"--user={security['runAsUser']}",
        "--read-only",
        f"--tmpfs=/tmp:rw,size={size}m,mode=1777",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
    ]
    env = [f"--env={e['name']}={e['value']}" for e in container["env"]]
    return options, env


def imported_modules(log: str) -> set[str]:
    """Module names from `-X importtime` lines (PYTHONPROFILEIMPORTTIME=1) in a log:
    `import time: self | cumulative | name`."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def bytecode_report(image: str, modules: set[str]) -> dict[str, list[str]]:
    """Of `modules`, as the image holds them: `without_bytecode`, those whose source (in the
    venv or func/) has no bytecode beside it, which each start on a read-only root would
    compile again; `venv_sources`, the venv's that still have their source, where the image
    ships the imported ones as bytecode alone (scripts/compile_imported.py --sourceless)."""
    probe = (
        "import importlib.util, json, os, sys\n"
        "report = {'without_bytecode': [], 'venv_sources': []}\n"
        "for name in json.load(sys.stdin):\n"
        "    try:\n"
        "        spec = importlib.util.find_spec(name)\n"
        "    except Exception:\n"
        "        continue\n"
        "    origin = spec and spec.origin or ''\n"
        "    if origin.startswith(('/venv/', '/app/func/')) and origin.endswith('.py')"
        " and not os.path.exists(spec.cached):\n"
        "        report['without_bytecode'].append(name)\n"
        "    if origin.startswith('/venv/') and origin.endswith('.py'):\n"
        "        report['venv_sources'].append(name)\n"
        "print(json.dumps({key: sorted(names) for key, names in report.items()}))\n"
    )
    result = podman(
        "run", "--rm", "-i", "--read-only", "--entrypoint=python", image, "-c", probe,
        stdin=json.dumps(sorted(modules)), timeout=120, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def image_names() -> dict[str, str]:
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--names"], capture_output=True, text=True, check=True)
    names = dict(line.split("=", 1) for line in out.stdout.split())
    assert set(names) == set(TARGETS), out.stdout
    return names


def missing_images(names: dict[str, str]) -> list[str]:
    return [n for n in names.values() if subprocess.run(["podman", "image", "exists", n]).returncode != 0]


def rows(n: int) -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data
    return x[np.arange(n) % len(x)]


def feature_names() -> list[str]:
    from sklearn.datasets import load_breast_cancer

    return [str(n) for n in load_breast_cancer().feature_names]


def write_batch_inputs(folder: Path) -> list[str]:
    """One input of BATCH_ROWS rows in each batch format, with an id column: their names."""
    columns = {"patient_id": [f"p{i}" for i in range(BATCH_ROWS)]}
    x = rows(BATCH_ROWS)
    for j, name in enumerate(feature_names()):
        columns[name] = x[:, j]
    table = pa.table(columns)
    pacsv.write_csv(table, folder / "in.csv")
    pq.write_table(table, folder / "in.parquet")
    (folder / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    for path in folder.iterdir():
        path.chmod(0o644)
    return [f"in{suffix}" for suffix in FORMATS]


def predict_event(url: str, body: dict, event_id: str, session: requests.Session) -> dict:
    event = CloudEvent({"type": "warmstart.predict.v1", "source": "/tests/image", "id": event_id}, body)
    headers, data = to_binary(event)
    resp = session.post(url + "/", data=data, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    reply = from_http(resp.headers, resp.content)
    assert reply["type"] == "warmstart.prediction.v1" and reply["causationid"] == event_id
    return reply.data


def v2_binary(url: str, x: np.ndarray, session: requests.Session) -> list[int]:
    tensor = x.astype("<f4")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ]
        }
    ).encode()
    resp = session.post(
        url + f"/v2/models/{MODEL}/infer",
        data=header + tensor.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    (label,) = [o for o in resp.json()["outputs"] if o["name"] == "label"]
    return label["data"]


def batch_job(url: str, source: str, output: str, event_id: str, session: requests.Session) -> dict:
    event = CloudEvent(
        {"type": "warmstart.batch.v1", "source": "/tests/image", "id": event_id}, {"input": source, "output": output}
    )
    headers, data = to_binary(event)
    resp = session.post(url + "/", data=data, headers=headers, timeout=120)
    assert resp.status_code == 200, f"{source} -> {output}: {resp.text}"
    reply = from_http(resp.headers, resp.content)
    assert reply["type"] == "warmstart.batch.completed.v1", reply
    return reply.data


def read_predictions(path: Path) -> list[int]:
    if path.suffix == ".csv":
        table = pacsv.read_csv(path)
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
    else:
        table = pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines()])
    assert table.column("patient_id").to_pylist() == [f"p{i}" for i in range(BATCH_ROWS)]
    return table.column("prediction").to_pylist()


def exercise_every_path(
    url: str, inputs: list[str], jobs: Path, served_jobs: str | None = None, session: requests.Session | None = None
) -> None:
    """Every protocol on the same rows must give the same labels; then a batch job from
    each format to each format, run by the server from `served_jobs` (the folder `jobs` as
    the server sees it), whose outputs must hold the same labels; then /metrics."""
    session = session or requests.Session()
    served = served_jobs or str(jobs)
    x = rows(BATCH_ROWS)
    few = x[:5]
    own = session.post(url + "/predict", json={"instances": few.tolist()}, timeout=30)
    assert own.status_code == 200, own.text
    labels = own.json()["predictions"]
    v1 = session.post(url + f"/v1/models/{MODEL}:predict", json={"instances": few.tolist()}, timeout=30)
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == labels
    assert v2_binary(url, few, session) == labels
    assert predict_event(url, {"instances": few.tolist()}, "image-predict", session)["predictions"] == labels

    expected = session.post(url + "/predict", json={"instances": x.tolist()}, timeout=60).json()["predictions"]
    for source in inputs:
        for suffix in FORMATS:
            name = f"out-{Path(source).suffix[1:]}{suffix}"
            done = batch_job(url, f"{served}/{source}", f"{served}/{name}", f"image-{name}", session)
            assert done["rows"] == BATCH_ROWS, done
            assert read_predictions(jobs / name) == expected, name

    metrics = session.get(url + "/metrics", timeout=30)
    assert metrics.status_code == 200
    assert "warmstart_requests_total" in metrics.text
