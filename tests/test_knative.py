"""The Knative artifacts, checked without a cluster: kustomize renders, the upstream CRD
and Kubernetes schemas (strict), and the admission-webhook rules no schema checks."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from tests.support.knative import (
    KNATIVE_GROUPS,
    KUBERNETES_VERSION,
    SCHEMA_DIR,
    needs_kubectl,
    needs_schemas,
    render,
    schema_errors,
)
from tests.support.server import ROOT

TREES = ["base", "overlays/prewarm", "overlays/canary", "eventing", "retrain", "rollout"]
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
ISO_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")


def all_docs() -> list[tuple[str, dict]]:
    return [(tree, doc) for tree in TREES for doc in render(tree)]


@needs_kubectl
@needs_schemas
@pytest.mark.parametrize("tree", TREES)
def test_every_rendered_object_validates(tree):
    import kubernetes_validate

    docs = render(tree)
    assert docs
    for doc in docs:
        name = f"{tree}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].split("/")[0] in KNATIVE_GROUPS:
            assert schema_errors(doc) == [], name
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@needs_schemas
def test_strict_mode_catches_a_misspelt_field():
    (doc,) = [d for d in render("base") if d["kind"] == "Service"]
    doc["spec"]["template"]["spec"]["containerConcurency"] = 4
    assert any("containerConcurency" in e for e in schema_errors(doc))


def services() -> list[tuple[str, dict]]:
    return [(tree, doc) for tree, doc in all_docs() if doc["kind"] == "Service" and "knative" in doc["apiVersion"]]


@needs_kubectl
@needs_schemas
def test_services_follow_the_serving_webhook_rules():
    rules = json.loads((SCHEMA_DIR / "knative-autoscaling-annotations.json").read_text())["annotations"]
    for tree, svc in services():
        assert not any(k.startswith("autoscaling.knative.dev/") for k in svc["metadata"].get("annotations", {})), tree
        template = svc["spec"]["template"]
        assert template["metadata"]["name"].startswith(svc["metadata"]["name"] + "-"), tree
        spec = template["spec"]
        assert 0 <= spec["containerConcurrency"] <= 1000
        assert spec["timeoutSeconds"] <= 600
        assert len(spec["containers"]) == 1 and len(spec["containers"][0]["ports"]) == 1
        for key, value in template["metadata"]["annotations"].items():
            if not key.startswith("autoscaling.knative.dev/"):
                continue  # prometheus.io/* and other tools' annotations
            assert key in rules, f"{tree}: unknown annotation {key}"
            rule, kind = rules[key], rules[key]["type"]
            assert isinstance(value, str), f"{tree}: {key} must be a string"
            if "allowed" in rule:
                assert value in rule["allowed"], f"{tree}: {key}={value}"
            elif kind.startswith("int"):
                assert int(value) >= 0, f"{tree}: {key}={value}"
            elif kind.startswith("float"):
                assert float(value) > 0, f"{tree}: {key}={value}"
            elif kind == "Go duration string":
                assert GO_DURATION.match(value), f"{tree}: {key}={value}"


@needs_kubectl
def test_base_scales_to_zero_with_probes_on_the_health_endpoints():
    (svc,) = [d for d in render("base") if d["kind"] == "Service"]
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    container = svc["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
    assert container["securityContext"]["runAsNonRoot"] is True
    # a read-only root, and /tmp (the shared folder, gunicorn's heartbeats) an emptyDir
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = container["volumeMounts"]
    (volume,) = svc["spec"]["template"]["spec"]["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/tmp"} and "emptyDir" in volume
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODEL_PATH"] == "/app/models/model.onnx" and env["MODEL_VERSION"] == "1"
    assert container["resources"]["limits"]["memory"]


@needs_kubectl
def test_prewarm_keeps_a_pod_warm():
    (svc,) = [d for d in render("overlays/prewarm") if d["kind"] == "Service"]
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["autoscaling.knative.dev/min-scale"]) >= 1
    assert int(annotations["autoscaling.knative.dev/initial-scale"]) >= 1
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "10m"
    assert annotations["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "15m"


@needs_kubectl
def test_canary_splits_traffic_between_two_tagged_revisions():
    (svc,) = [d for d in render("overlays/canary") if d["kind"] == "Service"]
    traffic = svc["spec"]["traffic"]
    assert sum(t["percent"] for t in traffic) == 100
    assert {t["tag"] for t in traffic} == {"stable", "canary"}
    assert {t["revisionName"] for t in traffic} == {"warmstart-v1", svc["spec"]["template"]["metadata"]["name"]}
    container = svc["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e["value"] for e in container["env"]}["MODEL_VERSION"] == "2"
    assert container["image"] and container["readinessProbe"], "the patch must keep the rest of the container"


@needs_kubectl
def test_triggers_follow_the_eventing_webhook_rules():
    docs = render("eventing")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    triggers = [d for d in docs if d["kind"] == "Trigger"]
    assert sorted(t["spec"]["filter"]["attributes"]["type"] for t in triggers) == [
        "warmstart.batch.v1",
        "warmstart.feedback.v1",
        "warmstart.predict.v1",
    ]
    for owner in [d for d in docs if d["kind"] in ("Trigger", "Broker")]:
        spec = owner["spec"]
        if owner["kind"] == "Trigger":
            assert ("broker" in spec) != ("brokerRef" in spec)
            assert spec["subscriber"]["ref"] == {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "name": "warmstart",
            }
        delivery = spec["delivery"]
        assert delivery["retry"] >= 0
        assert delivery["backoffPolicy"] in ("linear", "exponential")
        assert ISO_DURATION.match(delivery["backoffDelay"])
        dead = delivery["deadLetterSink"]["ref"]
        assert (dead["kind"], dead["name"]) in kinds, "the dead-letter sink must be deployed with the broker"
    (binding,) = [d for d in docs if d["kind"] == "SinkBinding"]
    assert binding["spec"]["subject"]["name"] == "warmstart"


@needs_kubectl
@needs_schemas
def test_the_jobsink_runs_the_retraining_job_as_a_valid_kubernetes_job():
    import kubernetes_validate

    from func.retrain.job import EXIT_PERMANENT

    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("retrain")}
    job = docs["JobSink", "warmstart-retrain"]["spec"]["job"]
    # the JobSink schema keeps the Job as it is: check it as the Job the sink creates
    kubernetes_validate.validate(
        {"apiVersion": "batch/v1", "kind": "Job", **job, "metadata": {"name": "retrain", **job["metadata"]}},
        KUBERNETES_VERSION,
        strict=True,
    )
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["K_EVENT_PATH"] == "/etc/jobsink-event/event"
    assert {"TRAIN_DATA_URI", "MODEL_PATH"} <= env.keys()  # MODEL_STORE: the shared ConfigMap
    assert pod["restartPolicy"] == "Never", "podFailurePolicy needs it"
    (fail,) = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail["onExitCodes"] == {"containerName": container["name"], "operator": "In", "values": [EXIT_PERMANENT]}
    # least privilege: no API access at all
    account = docs["ServiceAccount", pod["serviceAccountName"]]
    assert account["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is False
    assert not any(kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding") for kind, _ in docs)
    binding = docs["SinkBinding", "warmstart-retrain"]["spec"]["subject"]
    assert binding["kind"] == "Job"
    assert binding["selector"]["matchLabels"].items() <= job["metadata"]["labels"].items()


@needs_kubectl
def test_drift_feeds_the_jobsink_and_trained_models_feed_the_rollout():
    triggers = {t["spec"]["filter"]["attributes"]["type"]: t for t in render("retrain") if t["kind"] == "Trigger"}
    assert triggers["warmstart.drift.detected.v1"]["spec"]["subscriber"]["ref"] == {
        "apiVersion": "sinks.knative.dev/v1alpha1",
        "kind": "JobSink",
        "name": "warmstart-retrain",
    }
    assert triggers["warmstart.model.trained.v1"]["spec"]["subscriber"]["ref"]["name"] == "warmstart-rollout"
    dead_letters = {(d["kind"], d["metadata"]["name"]) for d in render("eventing")}
    for trigger in triggers.values():
        dead = trigger["spec"]["delivery"]["deadLetterSink"]["ref"]
        assert (dead["kind"], dead["name"]) in dead_letters, "knative/eventing deploys the dead-letter sink"


@needs_schemas
def test_func_yaml_is_valid_for_the_functions_cli():
    schema = json.loads((SCHEMA_DIR / "func_yaml-schema.json").read_text())
    doc = json.loads(json.dumps(yaml.safe_load((ROOT / "func.yaml").read_text()), default=str))
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in validator.iter_errors(doc)] == []
    assert doc["runtime"] == "python"
    assert doc["deploy"]["healthEndpoints"] == {"liveness": "/health/liveness", "readiness": "/health/readiness"}
    scale = doc["deploy"]["options"]["scale"]
    (svc,) = [d for d in render("base") if d["kind"] == "Service"]
    assert str(scale["target"]) == svc["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/target"]


@needs_kubectl
def test_serving_retraining_and_rollout_take_the_store_settings_from_one_place():
    """A canary whose model lives in MLflow or S3 loads with the shipped manifests: the
    Service, the retraining Job and the rollout Job all take one ConfigMap (MODEL_STORE,
    MLFLOW_TRACKING_URI) and the store's credentials, defined once, in knative/base."""
    configs = [(tree, d) for tree in [*TREES, "rollout"] for d in render(tree) if d["kind"] == "ConfigMap"]
    defined = {(tree, d["metadata"]["name"]) for tree, d in configs if tree in ("base", "retrain", "rollout")}
    assert defined == {("base", "warmstart-store")}
    (config,) = [d for tree, d in configs if tree == "base"]
    assert config["data"]["MODEL_STORE"] and config["data"]["MLFLOW_TRACKING_URI"].startswith("http")

    (service,) = [d for d in render("base") if d["kind"] == "Service"]
    retrain = {(d["kind"], d["metadata"]["name"]): d for d in render("retrain")}["JobSink", "warmstart-retrain"]
    rollout = {(d["kind"], d["metadata"]["name"]): d for d in render("rollout")}["JobSink", "warmstart-rollout"]
    containers = {
        "serving": service["spec"]["template"]["spec"]["containers"][0],
        "retraining": retrain["spec"]["job"]["spec"]["template"]["spec"]["containers"][0],
        "rollout": rollout["spec"]["job"]["spec"]["template"]["spec"]["containers"][0],
    }
    for who, container in containers.items():
        sources = container.get("envFrom", [])
        assert {"configMapRef": {"name": "warmstart-store"}} in sources, who
        assert {"secretRef": {"name": "warmstart-store-credentials", "optional": True}} in sources, who
        named = {e["name"] for e in container.get("env", [])}
        assert not named & {"MODEL_STORE", "MLFLOW_TRACKING_URI"}, f"{who} sets a store setting a second time"
