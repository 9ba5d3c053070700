"""The MLflow model registry over its REST API, without the mlflow package.

The mlflow package pulls in hundreds of megabytes and seconds of imports; warmstart needs
five REST calls to find a registered version's files, one upload path to register a
new version (its model file and the files beside it), and a few to move an alias and
keep tags on a registered model, so it speaks the documented REST API with the
standard library.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

ARTIFACTS_SCHEME = "mlflow-artifacts:"
# models:/<name>/<version> or models:/<name>@<alias>, as MLflow itself spells them
REFERENCE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))/?$")
TIMEOUT_S = 30.0


class RegistryError(Exception):
    """A registry call failed; the message names the call and the registry's answer."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        # Unreachable or 5xx: may pass later. A 4xx answer will not change on a retry.
        self.retryable = retryable


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    source: str
    run_id: str
    tags: dict[str, str]


def parse_reference(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of a `models:/` URI; ValueError says what a valid one looks like."""
    match = REFERENCE.match(uri)
    if not match:
        raise ValueError(f"{uri!r} is not a registry reference; use models:/<name>/<version> or models:/<name>@<alias>")
    return urllib.parse.unquote(match["name"]), match["version"], match["alias"]


class Registry:
    """One MLflow tracking server (`MLFLOW_TRACKING_URI`, an http(s) URL)."""

    def __init__(self, tracking_uri: str | None, timeout: float = TIMEOUT_S) -> None:
        if not tracking_uri or urllib.parse.urlsplit(tracking_uri).scheme not in ("http", "https"):
            raise RegistryError(
                f"MLFLOW_TRACKING_URI={tracking_uri or ''!r}: a models:/ reference needs the http(s) URL "
                "of an MLflow tracking server",
                retryable=False,
            )
        self.base = tracking_uri.rstrip("/")
        self.timeout = timeout

    def resolve(self, uri: str) -> ModelVersion:
        """The registered version a `models:/` URI names (an alias is looked up now)."""
        name, version, alias = parse_reference(uri)
        if alias is not None:
            answer = self._call("GET", "mlflow/registered-models/alias", {"name": name, "alias": alias})
        else:
            answer = self._call("GET", "mlflow/model-versions/get", {"name": name, "version": version})
        return _version(answer["model_version"])

    def download_uri(self, version: ModelVersion) -> str:
        answer = self._call(
            "GET", "mlflow/model-versions/get-download-uri", {"name": version.name, "version": version.version}
        )
        return answer["artifact_uri"]

    def artifact_url(self, uri: str) -> str:
        """The HTTP URL of an `mlflow-artifacts:` URI on the server's artifact proxy."""
        path = uri[len(ARTIFACTS_SCHEME) :].lstrip("/")
        return f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(path)}"

    def list_artifacts(self, uri: str) -> list[str]:
        """Names of the files directly under an `mlflow-artifacts:` folder."""
        path = uri[len(ARTIFACTS_SCHEME) :].lstrip("/")
        answer = self._call("GET", "mlflow-artifacts/artifacts", {"path": path})
        return [f["path"].rsplit("/", 1)[-1] for f in answer.get("files", []) if not f.get("is_dir")]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of a registered model; none if the model is not registered."""
        found: list[ModelVersion] = []
        token = ""
        while True:
            params = {"filter": f"name='{name}'", "max_results": "200"}
            if token:
                params["page_token"] = token
            answer = self._call("GET", "mlflow/model-versions/search", params)
            found += [_version(v) for v in answer.get("model_versions", [])]
            token = answer.get("next_page_token", "")
            if not token:
                return found

    def register(
        self, name: str, filename: str, data: bytes, tags: dict[str, str], beside: dict[str, bytes] | None = None
    ) -> ModelVersion:
        """Upload `data` as a run's artifact and register it as a new version of `name`;
        `beside`, files uploaded into the version's folder with it ({name: bytes}: a
        model's `model.forest`), all before the version exists, so a server that sees
        the version finds them.

        MLflow accepts a version's source only inside a run's artifacts, so each
        registration gets a run of its own in the default experiment, tagged like the version."""
        run = self._call(
            "POST",
            "mlflow/runs/create",
            body={"experiment_id": "0", "run_name": f"warmstart-{name}", "tags": _tag_list(tags)},
        )["run"]["info"]
        folder = f"{run['artifact_uri']}/model"
        for other, content in (beside or {}).items():
            self._upload(f"{folder}/{other}", content)
        self._upload(f"{folder}/{filename}", data)
        self._call("POST", "mlflow/runs/update", body={"run_id": run["run_id"], "status": "FINISHED"})
        self._create_model(name)
        answer = self._call(
            "POST",
            "mlflow/model-versions/create",
            body={"name": name, "source": folder, "run_id": run["run_id"], "tags": _tag_list(tags)},
        )
        return _version(answer["model_version"])

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `models:/<name>@<alias>` at `version` (moving it if it named another)."""
        self._call("POST", "mlflow/registered-models/alias", body={"name": name, "alias": alias, "version": version})

    def model_tags(self, name: str) -> dict[str, str]:
        """The registered model's own tags; none if it is not registered."""
        try:
            answer = self._call("GET", "mlflow/registered-models/get", {"name": name})
        except RegistryError as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc):
                return {}
            raise
        return {t["key"]: t["value"] for t in answer["registered_model"].get("tags", [])}

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        """Tag the registered model, registering it first if it is not."""
        self._create_model(name)
        self._call("POST", "mlflow/registered-models/set-tag", body={"name": name, "key": key, "value": value})

    def delete_model_tag(self, name: str, key: str) -> None:
        self._call("DELETE", "mlflow/registered-models/delete-tag", body={"name": name, "key": key})

    def _create_model(self, name: str) -> None:
        try:
            self._call("POST", "mlflow/registered-models/create", body={"name": name})
        except RegistryError as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise

    def _upload(self, uri: str, data: bytes) -> None:
        request = urllib.request.Request(self.artifact_url(uri), data=data, method="PUT")
        self._send(request, f"PUT {uri}")

    def _call(
        self, method: str, endpoint: str, params: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        url = f"{self.base}/api/2.0/{endpoint}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        raw = self._send(request, f"{method} {endpoint}")
        return json.loads(raw) if raw.strip() else {}

    def _send(self, request: urllib.request.Request, what: str) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                answer = json.loads(detail)
                detail = f"{answer.get('error_code', '')}: {answer.get('message', '')}"
            except ValueError:
                pass
            raise RegistryError(
                f"MLflow registry at {self.base}: {what} answered {exc.code} ({detail[:300]})",
                retryable=exc.code >= 500 or exc.code == 429,
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(f"MLflow registry at {self.base} is unreachable ({reason})", retryable=True) from None


def _version(data: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        name=data["name"],
        version=str(data["version"]),
        source=data.get("source", ""),
        run_id=data.get("run_id", ""),
        tags={t["key"]: t["value"] for t in data.get("tags", [])},
    )


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]
