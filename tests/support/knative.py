"""The Knative manifests as the tests read them: rendered with kubectl kustomize, checked
against the upstream CRD schemas (KNATIVE_SCHEMA_DIR)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support.server import ROOT

SCHEMA_DIR = Path(os.environ.get("KNATIVE_SCHEMA_DIR", ROOT.parent / "shared" / "schemas"))


KNATIVE_GROUPS = ("serving.knative.dev", "eventing.knative.dev", "sources.knative.dev", "sinks.knative.dev")


KUBERNETES_VERSION = "1.33"


needs_schemas = pytest.mark.skipif(
    not SCHEMA_DIR.is_dir(), reason=f"Knative schemas not found at {SCHEMA_DIR}; set KNATIVE_SCHEMA_DIR"
)


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def render(tree: str) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "knative" / tree)], capture_output=True, text=True, check=True
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def strict(schema: dict) -> dict:
    """additionalProperties: false on every typed object below the top that does not
    preserve unknown fields: unknown fields fail as `kubectl apply --validate=strict` would."""
    schema = copy.deepcopy(schema)

    def walk(node: dict, top: bool) -> None:
        if not isinstance(node, dict):
            return
        if (
            not top
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties", "definitions"):
            for child in (node.get(key) or {}).values():
                walk(child, False)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], False)
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key) or []:
                walk(child, False)

    walk(schema, True)
    return schema


def schema_errors(doc: dict) -> list[str]:
    group, version = doc["apiVersion"].split("/")
    schema = json.loads((SCHEMA_DIR / f"{group}_{version}_{doc['kind'].lower()}.json").read_text())
    validator = jsonschema.Draft7Validator(strict(schema))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
