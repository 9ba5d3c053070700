"""Where the retraining job publishes a model: MODEL_STORE, a URI prefix or an MLflow registry.

- A URI prefix (`file://`, `s3://`, `gs://`, a path): `<prefix>/<name>/<version>/model.onnx`,
  a tree ensemble's `model.forest` (func/model/forest.py) and, written last,
  `trained.json` (the `warmstart.model.trained.v1` data). A version with a
  `trained.json` is published and never written again; one without is the leftover of
  a job killed half-way, and the next run writes it afresh.
- `models:/<name>` with MLFLOW_TRACKING_URI: a new version of registered model `<name>`,
  its folder holding `model.onnx` and a tree ensemble's `model.forest`, tagged with the
  triggering event id and the trained event data.

Either way, looking the triggering event id up first makes a re-delivered event end in
the version its first delivery published, not in a second one, and a rejection is
recorded too, keyed by the event id, so a re-delivered rejected event is not trained
again.

One drift episode makes one version: before training, a job claims its parent's digest
with a marker, and another job for the same parent, while the marker is fresh or within
RETRAIN_COOLDOWN of a version published from it, stops without training. Folder and
object stores keep the markers and rejections as small files (`<prefix>/<name>/candidates/`,
`<prefix>/<name>/rejected/`); the registry as tags on the registered model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ..model import champion
from ..model.champion import MODEL_FILE, RECORD_FILE, now_iso, write_whole
from ..model.forest import forest_or_reason, forest_path
from ..model.registry import Registry, RegistryError
from ..model.source import first_line
from .training import BadInput, Unreachable

log = logging.getLogger("warmstart.retrain")

TRIGGER_TAG = "warmstart.trigger"
RECORD_TAG = "warmstart.trained"
NOTE_TAG = "warmstart."


def successor(version: str) -> str:
    """The next version: 7 -> 8, 1.4 -> 1.5, v2 -> v3; a version without a number gets `.1`."""
    match = re.search(r"(\d+)(?!.*\d)", version)
    if not match:
        return f"{version}.1"
    return f"{version[: match.start()]}{int(match[1]) + 1}{version[match.end() :]}"


def _age_s(stamp: str | None) -> float:
    """Seconds since an ISO time this module wrote; a missing or odd one is very old."""
    try:
        return time.time() - datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")


class Ledger(ABC):
    """What both stores keep besides versions: rejections and claims on a parent, as
    small JSON notes under a key, and the records of published versions."""

    # the corrupt records this run has logged already: each is named once per run
    skipped: set[str]

    @abstractmethod
    def _records(self) -> Iterator[dict[str, Any]]: ...

    def _record(self, raw: bytes | str, where: str) -> dict[str, Any] | None:
        """A published version's record, or None (with a log line) if it is not one: a
        corrupt file in the store must not fail every later run."""
        try:
            record = json.loads(raw)
            problem = "" if _is_record(record) else "not a trained-model record (no model.version)"
        except (ValueError, RecursionError) as exc:
            record, problem = None, f"not JSON ({first_line(exc)})"
        if not problem:
            return record
        if where not in self.skipped:
            self.skipped.add(where)
            log.warning("skipping %s: %s", where, problem)
        return None

    @abstractmethod
    def _note(self, key: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _put_note(self, key: str, value: dict[str, Any]) -> None: ...

    @abstractmethod
    def _drop_note(self, key: str) -> None: ...

    def find(self, trigger: str) -> dict[str, Any] | None:
        """The record of the version this event already published, if any."""
        return next((r for r in self._records() if r.get("trigger") == trigger), None)

    def recent(self, parent_sha256: str, cooldown_s: float) -> dict[str, Any] | None:
        """The record of a version published from this parent within the cooldown."""
        found = [
            r
            for r in self._records()
            if (r.get("parent") or {}).get("sha256") == parent_sha256 and _age_s(r.get("published")) < cooldown_s
        ]
        return max(found, key=lambda r: r["published"], default=None)

    def rejected(self, trigger: str) -> dict[str, Any] | None:
        """The rejection this event already ended in (its warmstart.model.rejected.v1 data)."""
        return self._note(f"rejected/{_digest(trigger)}")

    def record_rejection(self, trigger: str, data: dict[str, Any]) -> None:
        self._put_note(f"rejected/{_digest(trigger)}", data)

    def claim(self, parent_sha256: str, trigger: str, cooldown_s: float) -> dict[str, Any] | None:
        """Mark a candidate for this parent in flight for `trigger`; if another event's
        candidate is in flight (its marker younger than the cooldown), return its marker
        instead. Written, then read back: of two jobs claiming at once, the one whose
        marker stays wins (on an object store, two exactly together may both proceed)."""
        key = f"candidates/{parent_sha256}"
        held = self._note(key)
        if held and held.get("trigger") != trigger and _age_s(held.get("started")) < cooldown_s:
            return held
        self._put_note(key, {"trigger": trigger, "started": now_iso()})
        held = self._note(key)
        return held if held and held.get("trigger") != trigger else None

    def release(self, parent_sha256: str, trigger: str) -> None:
        key = f"candidates/{parent_sha256}"
        held = self._note(key)
        if held and held.get("trigger") == trigger:
            self._drop_note(key)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FileStore(Ledger):
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
        self.skipped = set()

    def uri(self, version: str) -> str:
        return f"{self.prefix}/{self.name}/{version}/{MODEL_FILE}"

    def champion(self) -> str | None:
        """The store's champion pointer (func/model/champion.py), if a promotion wrote it."""
        pointer = champion.in_store(self.prefix, self.name)
        try:
            return pointer if champion.read(pointer) is not None else None
        except champion.ChampionError as exc:
            raise (Unreachable if exc.retryable else BadInput)(f"MODEL_STORE={self.prefix}: {exc}") from None

    def _records(self) -> Iterator[dict[str, Any]]:
        for path in self._io("list", self.fs.glob, f"{self.root}/*/{RECORD_FILE}"):
            record = self._record(self._io("read", self.fs.cat_file, path), path)
            if record is not None:
                yield record

    def _note(self, key: str) -> dict[str, Any] | None:
        path = f"{self.root}/{key}.json"
        if not self._io("check", self.fs.exists, path):
            return None
        return json.loads(self._io("read", self.fs.cat_file, path))

    def _put_note(self, key: str, value: dict[str, Any]) -> None:
        self._put(f"{self.root}/{key}.json", json.dumps(value, indent=2).encode())

    def _drop_note(self, key: str) -> None:
        self._io("remove", self.fs.rm_file, f"{self.root}/{key}.json")

    def next_version(self, parent: str) -> str:
        version = successor(parent)
        while self._io("check", self.fs.exists, f"{self.root}/{version}/{RECORD_FILE}"):
            version = successor(version)
        return version

    def publish(self, version: str, model: bytes, record: dict[str, Any]) -> None:
        folder = f"{self.root}/{version}"
        self._put(f"{folder}/{MODEL_FILE}", model)
        forest = _forest(model)
        if forest is not None:
            self._put(f"{folder}/{forest_path(MODEL_FILE).name}", forest)
        self._put(f"{folder}/{RECORD_FILE}", json.dumps(record, indent=2).encode())

    def _put(self, path: str, data: bytes) -> None:
        self._io("write", lambda p: write_whole(self.fs, p, data), path)

    def _io(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as exc:
            raise Unreachable(f"MODEL_STORE={self.prefix}: cannot {what} {args[0]} ({first_line(exc)})") from None


class RegistryStore(Ledger):
    """Versions of one registered model in an MLflow registry, over its REST API."""

    def __init__(self, name: str, tracking_uri: str | None) -> None:
        try:
            self.registry = Registry(tracking_uri)
        except RegistryError as exc:
            raise BadInput(f"MODEL_STORE=models:/{name}: {exc}") from None
        self.name = name
        self.skipped = set()

    def uri(self, version: str) -> str:
        return f"models:/{self.name}/{version}"

    def champion(self) -> str | None:
        """`models:/<name>@champion`, if a promotion set the alias."""
        alias = f"models:/{self.name}@{champion.ALIAS}"
        try:
            self.registry.resolve(alias)
        except RegistryError as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "INVALID_PARAMETER_VALUE" in str(exc):
                return None
            raise (Unreachable if exc.retryable else BadInput)(f"MODEL_STORE=models:/{self.name}: {exc}") from None
        return alias

    def _records(self) -> Iterator[dict[str, Any]]:
        for version in self._call(self.registry.versions, self.name):
            if RECORD_TAG not in version.tags:
                continue
            record = self._record(version.tags[RECORD_TAG], f"{self.uri(version.version)} tag {RECORD_TAG}")
            # a version numbered otherwise than its card (see publish) does not count
            if record is not None and record["model"]["version"] == version.version:
                yield record

    def _note(self, key: str) -> dict[str, Any] | None:
        value = self._call(self.registry.model_tags, self.name).get(NOTE_TAG + key.replace("/", "."))
        return json.loads(value) if value else None

    def _put_note(self, key: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, separators=(",", ":"))
        self._call(self.registry.set_model_tag, self.name, NOTE_TAG + key.replace("/", "."), text)

    def _drop_note(self, key: str) -> None:
        self._call(self.registry.delete_model_tag, self.name, NOTE_TAG + key.replace("/", "."))

    def next_version(self, parent: str) -> str:
        """The registry numbers versions itself: the next is one past its latest."""
        numbers = [int(v.version) for v in self._call(self.registry.versions, self.name)]
        return str(max(numbers, default=0) + 1)

    def publish(self, version: str, model: bytes, record: dict[str, Any]) -> None:
        tags = {TRIGGER_TAG: record["trigger"], RECORD_TAG: json.dumps(record, separators=(",", ":"))}
        forest = _forest(model)
        beside = {forest_path(MODEL_FILE).name: forest} if forest is not None else {}
        created = self._call(self.registry.register, self.name, MODEL_FILE, model, tags, beside)
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


def _forest(model: bytes) -> bytes | None:
    """The forest file the server answers from while onnxruntime starts (func/model/forest.py),
    or None, with one log line, for a model that cannot have one."""
    forest = forest_or_reason(model, hashlib.sha256(model).hexdigest())
    if isinstance(forest, str):
        log.info("no forest file published beside the model, onnxruntime alone will serve it: %s", forest)
        return None
    return forest


def _is_record(record: Any) -> bool:
    model = record.get("model") if isinstance(record, dict) else None
    return isinstance(model, dict) and isinstance(model.get("version"), str)


def open_store(store: str, name: str, tracking_uri: str | None) -> FileStore | RegistryStore:
    """The store MODEL_STORE names; a `models:/<name>` must name the served model."""
    if store.startswith("models:/"):
        registered = store[len("models:/") :].strip("/")
        if not registered or "/" in registered or "@" in registered:
            raise BadInput(f"MODEL_STORE={store}: name a registered model, models:/<name>, without a version")
        return RegistryStore(registered, tracking_uri)
    return FileStore(store, name)
