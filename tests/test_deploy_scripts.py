"""scripts/deploy.sh, prewarm.sh and rollout.sh in dry-run mode: the exact kn, kubectl and
func commands they would run, their help, their refusals, and shellcheck."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.server import ROOT

SCRIPTS = ["deploy.sh", "prewarm.sh", "rollout.sh"]


def dry(script: str, *args: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *args, "--dry-run"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def refused(script: str, *args: str) -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *args, "--dry-run"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stdout == ""
    return result.stderr


def test_deploy_with_kubectl_applies_the_overlay_and_eventing():
    assert dry("deploy.sh", "--overlay", "prewarm", "--eventing", "-n", "ml") == [
        f"kubectl apply -k {ROOT}/knative/overlays/prewarm --namespace ml",
        f"kubectl apply -k {ROOT}/knative/eventing --namespace ml",
        "kubectl wait ksvc/warmstart --for=condition=Ready --timeout=300s --namespace ml",
    ]


def test_deploy_with_kubectl_sets_the_image_in_a_copy_and_prints_pasteable_commands():
    work = ROOT / ".deploy"
    assert dry("deploy.sh", "--image", "reg.example/warmstart:2", "--overlay", "prewarm") == [
        f"rm -rf {work}",
        f"mkdir -p {work}",
        f"cp -R {ROOT}/knative {work}/knative",
        f"(cd {work}/knative/base && kustomize edit set image warmstart=reg.example/warmstart:2)",
        f"kubectl apply -k {work}/knative/overlays/prewarm",
        "kubectl wait ksvc/warmstart --for=condition=Ready --timeout=300s",
    ]


def test_deploy_with_an_image_leaves_the_repository_manifests_alone(tmp_path):
    """kustomize and kubectl stand-ins record where they ran; the tracked kustomization
    must not be the one edited."""
    calls = tmp_path / "calls"
    for tool in ("kustomize", "kubectl"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $(pwd) $*" >> {calls}\n')
        stub.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    try:
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "deploy.sh"), "--image", "reg.example/warmstart:2"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        kustomize, apply, _ = calls.read_text().splitlines()
        assert kustomize == f"kustomize {ROOT}/.deploy/knative/base edit set image warmstart=reg.example/warmstart:2"
        assert apply.endswith(f"apply -k {ROOT}/.deploy/knative/base")
        assert (ROOT / ".deploy" / "knative" / "base" / "service.yaml").is_file()
    finally:
        shutil.rmtree(ROOT / ".deploy", ignore_errors=True)


def test_deploy_with_func():
    assert dry("deploy.sh", "--func", "--image", "reg.example/warmstart:2") == [
        f"func deploy --path {ROOT} --image reg.example/warmstart:2"
    ]


def test_prewarm_sets_and_clears_min_scale():
    assert dry("prewarm.sh", "--min", "2") == [
        "kn service update warmstart --scale-min 2 --scale-init 2 "
        "--annotation autoscaling.knative.dev/scale-down-delay=10m"
    ]
    assert dry("prewarm.sh", "--clear", "--service", "cancer") == [
        "kn service update cancer --scale-min 0 --annotation autoscaling.knative.dev/scale-down-delay=0s"
    ]


def test_rollout_start_promote_rollback():
    assert dry(
        "rollout.sh",
        "start",
        "--revision",
        "warmstart-v2",
        "--percent",
        "10",
        "--model-version",
        "2",
        "--stable",
        "warmstart-v1",
    ) == [
        "kn service update warmstart --revision-name warmstart-v2 --env MODEL_VERSION=2 "
        "--tag warmstart-v1=stable --tag @latest=canary --traffic warmstart-v1=90 --traffic @latest=10"
    ]
    found = dry("rollout.sh", "start", "--revision", "warmstart-v3", "--percent", "25", "--image", "reg/w:3")
    assert found[0].startswith("kn service describe warmstart -o jsonpath=")
    assert "--traffic CURRENT_REVISION=75 --traffic @latest=25" in found[1]
    assert dry("rollout.sh", "promote") == [
        "kn service update warmstart --untag stable --untag canary --tag @latest=stable --traffic @latest=100"
    ]
    assert dry("rollout.sh", "rollback", "-n", "ml") == [
        "kn service update warmstart --traffic stable=100 --untag canary --namespace ml"
    ]


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("deploy.sh", ["--overlay", "blue"], "--overlay must be base, prewarm or canary"),
        ("deploy.sh", ["--frobnicate"], "unknown option: --frobnicate"),
        ("prewarm.sh", ["--min", "many"], "--min must be a whole number"),
        (
            "rollout.sh",
            ["start", "--revision", "other-v2", "--percent", "10", "--image", "x"],
            "must begin with 'warmstart-'",
        ),
        (
            "rollout.sh",
            ["start", "--revision", "warmstart-v2", "--percent", "100", "--image", "x"],
            "--percent must be 1..99",
        ),
        ("rollout.sh", ["start", "--revision", "warmstart-v2", "--percent", "5"], "what is new?"),
        ("rollout.sh", ["sideways"], "unknown action: sideways"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(script, args, message):
    assert message in refused(script, *args)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    result = subprocess.run(["bash", str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: scripts/")
    assert "--dry-run" in result.stdout


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)"
)
def test_shellcheck_clean():
    paths = sorted(str(p) for folder in ("scripts", "loadtests") for p in (ROOT / folder).glob("*.sh"))
    expected = {"_common.sh", "build_images.sh", "prune_venv.sh", "device_bundle.sh", "many_cores.sh", *SCRIPTS}
    assert expected <= {os.path.basename(p) for p in paths}
    result = subprocess.run(["shellcheck", "-x", *paths], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout
