"""Where the Knative Service lives: the Kubernetes API (get and patch one Service, all
the RBAC of knative/rollout allows), or a file (a rendered manifest; tests and people
without a cluster). Either can be a dry run, which prints each patch and applies nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

import yaml

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
    """A Service manifest in a file (YAML or JSON); a patch rewrites the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self) -> dict[str, Any]:
        try:
            docs = [d for d in yaml.safe_load_all(self.path.read_text()) if d]
        except (OSError, yaml.YAMLError) as exc:
            raise RolloutError(f"cannot read the Service manifest {self.path}: {exc}") from exc
        services = [d for d in docs if d.get("kind") == "Service" and d.get("apiVersion", "").startswith(GROUP)]
        if len(services) != 1:
            raise RolloutError(f"{self.path} must hold exactly one Knative Service, found {len(services)}")
        return services[0]

    def patch(self, patch: dict[str, Any]) -> None:
        # whole or not at all: a reader (a person, a test's traffic) never sees half a file
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(merge(self.get(), patch), indent=2) + "\n")
        partial.replace(self.path)


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
