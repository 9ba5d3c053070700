"""Where the Knative Service lives: the Kubernetes API (get and patch one Service, all
the RBAC of knative/rollout allows), or a file (a rendered manifest; tests and people
without a cluster). Either can be a dry run, which prints each patch and applies nothing.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

from ruamel.yaml import YAMLError

from ..atomic_file import write_atomically
from .service import RolloutError, merge

GROUP, VERSION, PLURAL = "serving.knative.dev", "v1", "services"


class ServiceStore(Protocol):
    def get(self) -> dict[str, Any]: ...

    def patch(self, patch: dict[str, Any]) -> None: ...


class KubernetesService:
    """One Knative Service through the official client: in-cluster credentials (the
    job's ServiceAccount) or, outside a cluster, the kubeconfig."""

    def __init__(self, name: str, namespace: str | None) -> None:
        from kubernetes import client, config  # only this store needs the client

        try:
            config.load_incluster_config()
            default_namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
        except config.ConfigException:
            config.load_kube_config()
            default_namespace = config.list_kube_config_contexts()[1]["context"].get("namespace", "default")
        self.name, self.namespace = name, namespace or default_namespace
        self.api = client.CustomObjectsApi()
        self._errors = client.exceptions.ApiException

    def get(self) -> dict[str, Any]:
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        except self._errors as exc:
            raise RolloutError(
                f"cannot read Knative Service {self.namespace}/{self.name}: {exc.status} {exc.reason}"
            ) from exc

    def patch(self, patch: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, patch, _content_type="application/merge-patch+json"
        )


class FileService:
    """A Service manifest in a file, JSON or YAML; a patch rewrites the file in the same
    format. YAML goes through ruamel.yaml's round trip, so the comments, the key order
    and the other documents of the file stay as they were."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._service(self._read())))

    def patch(self, patch: dict[str, Any]) -> None:
        docs = self._read()
        if docs is None:  # JSON
            text = json.dumps(merge(self.get(), patch), indent=2) + "\n"
        else:
            _merge_into(self._service(docs), patch)
            out = io.StringIO()
            _yaml().dump_all(docs, out)
            text = out.getvalue()
        # whole or not at all: a reader (a person, a test's traffic) never sees half a file
        write_atomically(self.path, text.encode())

    def _read(self) -> list[Any] | None:
        """The YAML documents of the file, or None for a JSON file."""
        try:
            text = self.path.read_text()
            if text.lstrip().startswith("{"):
                return None
            return [d for d in _yaml().load_all(text) if d]
        except (OSError, YAMLError) as exc:
            raise RolloutError(f"cannot read the Service manifest {self.path}: {exc}") from None

    def _service(self, docs: list[Any] | None) -> Any:
        if docs is None:
            try:
                docs = [json.loads(self.path.read_text())]
            except (OSError, ValueError, RecursionError) as exc:
                raise RolloutError(f"cannot read the Service manifest {self.path}: {exc}") from None
        services = [
            d
            for d in docs
            if isinstance(d, dict) and d.get("kind") == "Service" and str(d.get("apiVersion", "")).startswith(GROUP)
        ]
        if len(services) != 1:
            raise RolloutError(f"{self.path} must hold exactly one Knative Service, found {len(services)}")
        return services[0]


def _yaml() -> Any:
    from ruamel.yaml import YAML

    loader = YAML()  # round trip: comments and key order are kept
    loader.preserve_quotes = True
    return loader


def _merge_into(target: Any, patch: dict[str, Any]) -> None:
    """Apply a JSON merge patch to `target` in place (see service.merge), keeping the
    nodes it changes: a list or mapping is updated item by item, not replaced, so the
    comments on what stays are kept."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        elif isinstance(value, dict):
            target[key] = {}
            _merge_into(target[key], value)
        else:
            target[key] = _updated(target.get(key), value)


def _updated(old: Any, new: Any) -> Any:
    """`new`, in `old`'s nodes where both are mappings or both are lists."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [k for k in old if k not in new]:
            del old[key]
        for key, value in new.items():
            old[key] = _updated(old.get(key), value)
        return old
    if isinstance(old, list) and isinstance(new, list):
        del old[len(new) :]
        for i, value in enumerate(new):
            if i < len(old):
                old[i] = _updated(old[i], value)
            else:
                old.append(value)
        return old
    return new


class Recorded:
    """Wraps a store: every patch is written as one JSON line to `out` (with the Service
    it is for) before it is applied; a dry run applies nothing."""

    def __init__(self, store: ServiceStore, name: str, out: TextIO = sys.stdout, dry_run: bool = False) -> None:
        self.store, self.name, self.out, self.dry_run = store, name, out, dry_run
        self._patched: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        # a dry run goes on from the Service as its patches would have left it
        return self._patched if self._patched is not None else self.store.get()

    def patch(self, patch: dict[str, Any]) -> None:
        self.out.write(json.dumps({"service": self.name, "dry_run": self.dry_run, "patch": patch}) + "\n")
        self.out.flush()
        if self.dry_run:
            self._patched = merge(self.get(), patch)
        else:
            self.store.patch(patch)
