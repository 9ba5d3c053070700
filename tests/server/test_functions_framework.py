"""The same app served as a functions-framework HTTP function."""

from __future__ import annotations

import sys
from pathlib import Path

import requests


def test_functions_framework_target_serves_the_same_api(start_server, dataset):
    x, _ = dataset
    cli = Path(sys.executable).parent / "functions-framework"
    source = "func/server/framework.py"
    ff = start_server(cmd=[str(cli), "--source", source, "--target", "predict", "--host", "127.0.0.1"])
    # functions-framework takes its port from --port or PORT, which the fixture sets
    core = start_server()
    body = {"instances": x[:10].tolist()}
    got = requests.post(ff.url + "/predict", json=body)
    assert got.status_code == 200, got.text
    assert got.json() == requests.post(core.url + "/predict", json=body).json()
    assert got.headers["X-Model-Name"] == "breast-cancer-rf"
    bad = requests.post(ff.url + "/predict", json={"features": [None] * 30})
    assert bad.status_code == 422
