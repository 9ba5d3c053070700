"""Where the retraining job publishes a model: MODEL_STORE, a URI prefix or an MLflow registry.

- A URI prefix (`file://`, `s3://`, `gs://`, a path): `<prefix>/<name>/<version>/model.onnx`
  and, written last, `trained.json` (the `warmstart.model.trained.v1` data). A version
  with a `trained.json` is published and never written again; one without is the
  leftover of a job killed half-way, and the next run writes it afresh.
- `models:/<name>` with MLFLOW_TRACKING_URI: a new version of registered model `<name>`,
  tagged with the triggering event id and the trained event data.

Either way, looking the triggering event id up first makes a re-delivered event end in
the version its first delivery published, not in a second one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

from ..model.registry import Registry, RegistryError
from ..model.source import first_line
from .training import BadInput, Unreachable

MODEL_FILE = "model.onnx"
RECORD_FILE = "trained.json"
TRIGGER_TAG = "warmstart.trigger"
RECORD_TAG = "warmstart.trained"


def successor(version: str) -> str:
    """The next version: 7 -> 8, 1.4 -> 1.5, v2 -> v3; a version without a number gets `.1`."""
    match = re.search(r"(\d+)(?!.*\d)", version)
    if not match:
        return f"{version}.1"
    return f"{version[: match.start()]}{int(match[1]) + 1}{version[match.end() :]}"


class FileStore:
    """Immutable versioned files under a URI prefix, through fsspec."""

    def __init__(self, prefix: str, name: str) -> None:
        import fsspec

        try:
            self.fs, root = fsspec.core.url_to_fs(prefix.rstrip("/"))
        except (ImportError, ValueError) as exc:
            raise BadInput(f"MODEL_STORE={prefix}: {exc}") from None
        self.prefix = prefix.rstrip("/")
        self.root = f"{root}/{name}"
        self.name = name

    def uri(self, version: str) -> str:
        return f"{self.prefix}/{self.name}/{version}/{MODEL_FILE}"

    def find(self, trigger: str) -> dict[str, Any] | None:
        """The record of the version this event already published, if any."""
        for path in self._io("list", self.fs.glob, f"{self.root}/*/{RECORD_FILE}"):
            record = json.loads(self._io("read", self.fs.cat_file, path))
            if record.get("trigger") == trigger:
                return record
        return None

    def next_version(self, parent: str) -> str:
        version = successor(parent)
        while self._io("check", self.fs.exists, f"{self.root}/{version}/{RECORD_FILE}"):
            version = successor(version)
        return version

    def publish(self, version: str, model: bytes, record: dict[str, Any]) -> None:
        folder = f"{self.root}/{version}"
        self._put(f"{folder}/{MODEL_FILE}", model)
        self._put(f"{folder}/{RECORD_FILE}", json.dumps(record, indent=2).encode())

    def _put(self, path: str, data: bytes) -> None:
        """Whole or not at all: a rename on a local disk; object stores make a single PUT
        visible only once it is complete."""
        if "file" not in _protocols(self.fs):
            self._io("write", self.fs.pipe_file, path, data)
            return
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _io(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as exc:
            raise Unreachable(f"MODEL_STORE={self.prefix}: cannot {what} {args[0]} ({first_line(exc)})") from None


class RegistryStore:
    """Versions of one registered model in an MLflow registry, over its REST API."""

    def __init__(self, name: str, tracking_uri: str | None) -> None:
        try:
            self.registry = Registry(tracking_uri)
        except RegistryError as exc:
            raise BadInput(f"MODEL_STORE=models:/{name}: {exc}") from None
        self.name = name

    def uri(self, version: str) -> str:
        return f"models:/{self.name}/{version}"

    def find(self, trigger: str) -> dict[str, Any] | None:
        for version in self._call(self.registry.versions, self.name):
            if version.tags.get(TRIGGER_TAG) != trigger or RECORD_TAG not in version.tags:
                continue
            record = json.loads(version.tags[RECORD_TAG])
            # a version numbered otherwise than its card (see publish) does not count
            if record["model"]["version"] == version.version:
                return record
        return None

    def next_version(self, parent: str) -> str:
        """The registry numbers versions itself: the next is one past its latest."""
        numbers = [int(v.version) for v in self._call(self.registry.versions, self.name)]
        return str(max(numbers, default=0) + 1)

    def publish(self, version: str, model: bytes, record: dict[str, Any]) -> None:
        tags = {TRIGGER_TAG: record["trigger"], RECORD_TAG: json.dumps(record, separators=(",", ":"))}
        created = self._call(self.registry.register, self.name, MODEL_FILE, model, tags)
        if created.version != version:
            # Another registration came in between: the card inside says `version`.
            raise Unreachable(
                f"MODEL_STORE=models:/{self.name}: the registry numbered the new version {created.version}, "
                f"not {version} as its card says (a concurrent registration); the retry publishes it anew"
            )

    def _call(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except RegistryError as exc:
            raise (Unreachable if exc.retryable else BadInput)(f"MODEL_STORE=models:/{self.name}: {exc}") from None


def open_store(store: str, name: str, tracking_uri: str | None) -> FileStore | RegistryStore:
    """The store MODEL_STORE names; a `models:/<name>` must name the served model."""
    if store.startswith("models:/"):
        registered = store[len("models:/") :].strip("/")
        if not registered or "/" in registered or "@" in registered:
            raise BadInput(f"MODEL_STORE={store}: name a registered model, models:/<name>, without a version")
        return RegistryStore(registered, tracking_uri)
    return FileStore(store, name)


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
