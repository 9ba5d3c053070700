"""The Grafana dashboard of knative/observability: Grafana's dashboard model reads every
field of it, kustomize ships it to the Grafana sidecar, and every query in it answers
from a real Prometheus scraping two warmstart revisions."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import requests

from tests.support.batch import batch_event, send, table, write
from tests.support.knative import needs_kubectl
from tests.support.prometheus import Prometheus, needs_prometheus
from tests.support.server import ROOT

DASHBOARD = ROOT / "knative" / "observability" / "dashboard.json"
REVISIONS = ("warmstart-v1", "warmstart-v2")
# What Grafana puts in place of its variables: the `revision` variable with both revisions
# selected, and the rate interval of a Prometheus scraping every 15 s (4 x the interval).
GRAFANA_VARIABLES = {"$revision": "(" + "|".join(REVISIONS) + ")", "$__rate_interval": "1m"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    return [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana's variables substituted."""
    found = []
    for panel in panels(dash):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            found.append((panel["title"], expr))
    return found


def lost_in_round_trip(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Paths of `ours` that Grafana's model dropped or changed on the way through it: a
    field the model does not know (a typo, a field of another panel type) is dropped."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [path]
        lost = [f"{path}.{key}" for key in ours if key not in theirs]
        kept = [key for key in ours if key in theirs]
        return lost + [p for key in kept for p in lost_in_round_trip(ours[key], theirs[key], f"{path}.{key}")]
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [path]
        return [p for i, (a, b) in enumerate(zip(ours, theirs)) for p in lost_in_round_trip(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [f"{path}: {ours!r} became {theirs!r}"]


def through_grafana_model(dash: dict[str, Any]) -> dict[str, Any]:
    """The dashboard read into the typed models of grafana-foundation-sdk (Grafana 11.6's
    schema: dashboard, each panel type's options and field config, Prometheus queries)
    and written back."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    return json.loads(json.dumps(Dashboard.from_json(dash), cls=JSONEncoder))


def test_grafana_dashboard_model_knows_every_field_of_the_dashboard():
    dash = dashboard()
    assert lost_in_round_trip(dash, through_grafana_model(dash)) == []


def test_grafana_model_check_catches_a_misspelt_panel_option():
    dash = dashboard()
    dash["panels"][1]["options"]["legend"]["placemnt"] = "bottom"
    assert lost_in_round_trip(dash, through_grafana_model(dash)) == [".panels[1].options.legend.placemnt"]


def test_dashboard_has_a_revision_variable_every_query_filters_by():
    from grafana_foundation_sdk.cog import runtime

    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["revision"]["query"]["query"] == "label_values(warmstart_model_info, revision)"
    assert variables["revision"]["includeAll"] and variables["revision"]["multi"]
    for panel in panels(dash):
        if panel["type"] != "row":
            assert runtime.panelcfg_config(panel["type"]) is not None, f"{panel['title']}: unknown type {panel['type']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel.get("targets", []):
            assert 'revision=~"$revision"' in target["expr"], (panel["title"], target["expr"])
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))


def test_drift_psi_panel_draws_the_threshold():
    psi = next(p for p in panels(dashboard()) if p["title"].startswith("Drift PSI"))
    defaults = psi["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    assert {"color": "red", "value": 0.2} in defaults["thresholds"]["steps"]


@needs_kubectl
def test_kustomize_ships_the_dashboard_file_in_a_configmap_for_the_grafana_sidecar():
    import kubernetes_validate
    import yaml

    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "knative" / "observability")], capture_output=True, text=True, check=True
    ).stdout
    [configmap] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["warmstart.json"]) == dashboard()
    kubernetes_validate.validate(configmap, "1.33", strict=True)


def traffic(stable: str, canary: str, benign: list, malignant: list, seconds: float) -> None:
    """Both revisions answer one-row and many-row requests and some bad ones; the canary
    sees scaled malignant-looking rows only, so its drift windows drift. Every answer of
    both gets its true label back (and one label no pod knows)."""
    started, i = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        mixed = benign[i % len(benign)] if i % 2 else malignant[i % len(malignant)]
        answer = requests.post(stable + "/predict", json={"features": mixed})
        label(stable, [(answer.headers["X-Prediction-Id"], int(i % 2))])
        requests.post(stable + "/predict", json={"instances": benign[i % 50 : i % 50 + 8]})
        answer = requests.post(
            canary + "/predict", json={"instances": [[v * 1.6 for v in malignant[i % len(malignant)]]] * 5}
        )
        label(canary, [(f"{answer.headers['X-Prediction-Id']}/{r}", 0) for r in range(5)] + [("unknown", 1)])
        requests.post((stable, canary)[i % 2] + "/predict", json={"features": [1.0]})
        i += 1
        time.sleep(0.01)


def label(url: str, labels: list[tuple[str, int]]) -> None:
    requests.post(url + "/feedback", json={"feedback": [{"id": i, "label": y} for i, y in labels]})


@needs_prometheus
def test_every_dashboard_query_returns_data_from_two_revisions(start_server, tmp_path, dataset):
    from sklearn.datasets import load_breast_cancer

    x, names = dataset
    y = load_breast_cancer().target
    benign, malignant = x[y == 1].tolist(), x[y == 0].tolist()
    env = {"WORKERS": "2", "DRIFT_WINDOW": "50", "BATCH_ALLOW": f"{tmp_path}/", "PREDICTION_LOG_FLUSH_S": "0.5"}
    stable = start_server({**env, "K_REVISION": "warmstart-v1", "PREDICTION_LOG": str(tmp_path / "log-v1")})
    canary = start_server({**env, "K_REVISION": "warmstart-v2", "PREDICTION_LOG": str(tmp_path / "log-v2")})
    prometheus = Prometheus(tmp_path, {"stable": f"127.0.0.1:{stable.port}", "canary": f"127.0.0.1:{canary.port}"})
    try:
        prometheus.wait_ready()
        for server in (stable, canary):
            src = write(tmp_path / f"{server.port}.csv", table(x, names, 200))
            job = {"input": str(src), "output": str(tmp_path / f"{server.port}-out.csv")}
            assert send(server.url, batch_event(job, f"job-{server.port}")).status_code == 200
        traffic(stable.url, canary.url, benign, malignant, seconds=4)

        revisions = requests.get(
            prometheus.url + "/api/v1/label/revision/values", params={"match[]": "warmstart_model_info"}, timeout=5
        ).json()["data"]
        assert sorted(revisions) == list(REVISIONS)
        empty = [(title, expr) for title, expr in queries(dashboard()) if not prometheus.wait_for(expr, timeout=20)]
        assert empty == [], "\n".join(f"{title}: {expr}" for title, expr in empty)
        assert all(not re.search(r"\$\w", expr) for _, expr in queries(dashboard()))
    finally:
        prometheus.stop()
