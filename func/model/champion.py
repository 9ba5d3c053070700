"""The champion: the published model the loop serves and retrains from, named in its store.

- A folder or object store (the retraining job's MODEL_STORE is a URI prefix, versions at
  `<prefix>/<name>/<version>/model.onnx`): the pointer `<prefix>/<name>/champion.json`,
  `{"name", "version", "uri", "sha256", "promoted"}`, replaced whole (a rename on a local
  disk; an object store shows a single PUT only once it is complete).
- An MLflow registry (`models:/<name>/<version>`): the alias `champion`, so the champion
  is `models:/<name>@champion`.

A promotion moves it (`python -m func.rollout promote`, or the canary analysis when it
promotes); a Service serves it with MODEL_PATH naming the pointer or the alias; the
retraining job's parent is it. Only the standard library and, for a pointer file, fsspec
(with the store's backend): the rollout job imports this and has no NumPy.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ..atomic_file import write_atomically
from .registry import Registry, RegistryError, parse_reference
from .source import first_line

MODEL_FILE = "model.onnx"
# the retraining job's record of a published version, written last beside its model file
RECORD_FILE = "trained.json"
POINTER_FILE = "champion.json"
ALIAS = "champion"


class ChampionError(Exception):
    """The champion could not be read or moved; the message names the store and why."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def is_pointer(location: str) -> bool:
    """Whether MODEL_PATH names a champion pointer file rather than a model."""
    return urllib.parse.unquote(urllib.parse.urlsplit(location).path).rstrip("/").endswith("/" + POINTER_FILE) or (
        location == POINTER_FILE
    )


def pointer_for(model_uri: str) -> str | None:
    """Where the champion of the store that would hold `model_uri` is: a pointer file or
    a registry alias; None for a URI outside a store's layout."""
    if model_uri.startswith("models:/"):
        try:
            name, _, _ = parse_reference(model_uri)
        except ValueError:
            return None
        return f"models:/{name}@{ALIAS}"
    version_folder, _, file = model_uri.rstrip("/").rpartition("/")
    model_folder, _, version = version_folder.rpartition("/")
    if file != MODEL_FILE or not version or not model_folder.rpartition("/")[2]:
        return None
    return f"{model_folder}/{POINTER_FILE}"


def in_store(prefix: str, name: str) -> str:
    """The pointer file of model `name` in the store at URI prefix `prefix`."""
    return f"{prefix.rstrip('/')}/{name}/{POINTER_FILE}"


def read(pointer: str) -> dict[str, Any] | None:
    """The model a pointer file names, or None if the store has no champion yet."""
    fs, path = _filesystem(pointer)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise ChampionError(f"{pointer}: cannot read the champion ({first_line(exc)})", retryable=True) from None
    try:
        found = json.loads(raw)
        if not all(isinstance(found.get(k), str) and found[k] for k in ("uri", "version", "sha256")):
            raise ValueError("uri, version and sha256 must be non-empty strings")
    except (ValueError, AttributeError) as exc:
        raise ChampionError(f"{pointer}: not a champion pointer ({first_line(exc)})", retryable=False) from None
    return found


def move(model: dict[str, str], tracking_uri: str | None) -> str | None:
    """Make `model` ({"name", "version", "uri", "sha256"}) the champion of the store that
    published it; returns the pointer or alias moved, None if no store published it (a
    file in the image, a folder without the job's trained.json). Moving it again to the
    same model changes nothing."""
    pointer = pointer_for(model["uri"])
    if pointer is None:
        return None
    if pointer.startswith("models:/"):
        name, version, alias = parse_reference(model["uri"])
        try:
            registry = Registry(tracking_uri)
            if version is None:  # served through an alias: the version it names now
                version = registry.resolve(model["uri"]).version
            registry.set_alias(name, ALIAS, version)
        except RegistryError as exc:
            raise ChampionError(f"{pointer}: cannot move the alias ({exc})", exc.retryable) from None
        return pointer
    published = f"{model['uri'].rstrip('/').rpartition('/')[0]}/{RECORD_FILE}"
    fs, path = _filesystem(published)
    try:
        if not fs.exists(path):
            return None
    except Exception as exc:
        raise ChampionError(f"{published}: cannot look it up ({first_line(exc)})", retryable=True) from None
    record = {k: model.get(k, "") for k in ("name", "version", "uri", "sha256")}
    record["name"] = record["name"] or pointer.rpartition("/")[0].rpartition("/")[2]
    record["promoted"] = now_iso()
    write(pointer, json.dumps(record, indent=2).encode())
    return pointer


def now_iso() -> str:
    """Now, in UTC, to the second, as promotions and publications record it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write(uri: str, data: bytes) -> None:
    fs, path = _filesystem(uri)
    try:
        write_whole(fs, path, data)
    except Exception as exc:
        raise ChampionError(f"{uri}: cannot write ({first_line(exc)})", retryable=True) from None


def write_whole(fs: Any, path: str, data: bytes) -> None:
    """Replace the file at `path` whole or not at all: a rename on a local disk; object
    stores make a single PUT visible only once it is complete."""
    if "file" not in ((fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)):
        fs.pipe_file(path, data)
        return
    write_atomically(Path(path), data)


def _filesystem(uri: str) -> tuple[Any, str]:
    try:
        import fsspec

        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ChampionError(f"{uri}: no fsspec backend for this store ({first_line(exc)})", retryable=False) from None
