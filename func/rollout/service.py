"""The Knative Service changes of a rollout, as JSON merge patches (RFC 7386) built from
the Service as it is now. Knative's CRD has no merge keys: a list in a patch replaces the
whole list, so a patch always carries the complete container list and traffic block.

Every function here is pure, and applying the same patch twice changes nothing, so
re-running a step (a retried job, a person repeating a command) is harmless.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

STABLE, CANARY = "stable", "canary"
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


class RolloutError(Exception):
    """A request the rollout refuses (bad event, unknown revision): no traffic changes."""


@dataclass(frozen=True)
class Model:
    """The published model a canary serves (from `warmstart.model.trained.v1`)."""

    uri: str
    version: str
    sha256: str = ""
    name: str = ""


@dataclass(frozen=True)
class Split:
    stable: str
    canary: str | None
    percent: int  # the canary's share


def revision_name(service: str, model: Model) -> str:
    """`<service>-v<version>-<digest prefix>`: a new name per published model (Knative
    refuses a changed template under an old revision name), the same name for the same
    model (so a repeated start is the same patch)."""
    version = _DNS_LABEL.sub("-", model.version.lower()).strip("-") or "x"
    digest = f"-{model.sha256[:8].lower()}" if model.sha256 else ""
    return f"{service}-v{version}{digest}"[:63].rstrip("-")


def split(service: dict[str, Any]) -> Split:
    """Which revision is stable, which is the canary and its share. Before any rollout the
    stable one is the revision taking all traffic, else the latest ready, else the
    template's name (knative/base names its revisions)."""
    traffic = service.get("spec", {}).get("traffic") or []
    tagged = {t.get("tag"): t for t in traffic if t.get("revisionName")}
    if STABLE in tagged:
        canary = tagged.get(CANARY)
        return Split(
            tagged[STABLE]["revisionName"],
            canary and canary["revisionName"],
            int(canary and canary.get("percent", 0) or 0),
        )
    whole = [t["revisionName"] for t in traffic if t.get("revisionName") and t.get("percent") == 100]
    current = (
        (whole and whole[0])
        or service.get("status", {}).get("latestReadyRevisionName")
        or service["spec"]["template"].get("metadata", {}).get("name")
    )
    if not current:
        raise RolloutError(
            "cannot tell which revision serves now: no traffic by revision name, no status, no template name"
        )
    return Split(current, None, 0)


def traffic(stable: str, canary: str | None, percent: int) -> list[dict[str, Any]]:
    entries = [{"revisionName": stable, "percent": 100 - percent, "tag": STABLE, "latestRevision": False}]
    if canary:
        entries.append({"revisionName": canary, "percent": percent, "tag": CANARY, "latestRevision": False})
    return entries


def start_patch(service: dict[str, Any], revision: str, model: Model) -> dict[str, Any]:
    """A new revision serving `model`, tagged canary with 0 % of the traffic (its tag URL
    answers, so the smoke test can run before any user reaches it)."""
    now = split(service)
    if now.canary and now.canary != revision:
        raise RolloutError(f"a rollout of {now.canary} is in progress; promote or roll it back first")
    if now.stable == revision:
        raise RolloutError(f"{revision} already serves as stable; nothing to roll out")
    template = service["spec"]["template"]
    containers = copy.deepcopy(template["spec"]["containers"])
    env = {"MODEL_PATH": model.uri, "MODEL_VERSION": model.version}
    if model.sha256:
        env["MODEL_SHA256"] = model.sha256
    containers[0]["env"] = _with_env(containers[0].get("env", []), env)
    return {
        "spec": {
            "template": {"metadata": {"name": revision}, "spec": {"containers": containers}},
            "traffic": traffic(now.stable, revision, now.percent if now.canary == revision else 0),
        }
    }


def template_model(service: dict[str, Any]) -> Model | None:
    """The model the Service's template serves (MODEL_PATH, MODEL_VERSION, MODEL_SHA256 of
    its first container): after a start, the canary's; after a promotion, the stable's."""
    containers = service.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    env = {e.get("name"): e.get("value") for e in containers[0].get("env", []) if isinstance(e.get("value"), str)}
    if not env.get("MODEL_PATH"):
        return None
    return Model(env["MODEL_PATH"], env.get("MODEL_VERSION", ""), env.get("MODEL_SHA256", ""))


def _with_env(env: list[dict[str, Any]], values: dict[str, str]) -> list[dict[str, Any]]:
    """`env` with `values` set: existing entries replaced in place, new ones appended."""
    out = list(env)
    for name, value in values.items():
        entry = {"name": name, "value": value}
        index = next((i for i, e in enumerate(out) if e["name"] == name), None)
        if index is None:
            out.append(entry)
        else:
            out[index] = entry
    return out


def step_patch(stable: str, canary: str, percent: int) -> dict[str, Any]:
    return {"spec": {"traffic": traffic(stable, canary, percent)}}


def promote_patch(canary: str) -> dict[str, Any]:
    """All traffic to the canary, which becomes `stable`; the canary tag goes."""
    return {"spec": {"traffic": traffic(canary, None, 0)}}


def rollback_patch(stable: str) -> dict[str, Any]:
    """All traffic back to `stable`; the canary tag goes. The template still describes
    the canary's revision (Knative keeps it, with no traffic); the next rollout replaces it."""
    return {"spec": {"traffic": traffic(stable, None, 0)}}


def merge(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386) and return the result; `target` is not changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out
