"""The model a rollout starts from: a `warmstart.model.trained.v1` event (a JobSink
mounts it as a JSON file at $K_EVENT_PATH), or the same fields given by hand.

Whoever can send an event to the broker can name a model, and the sha256 comes from the
same event, so it proves nothing: the model's URI must lie under one of the allowed
store prefixes (--allow, ROLLOUT_ALLOW, else MODEL_STORE), pickles (which run code when
loaded) are refused, and the version, which every answer carries in a header, must be
printable Latin-1.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .service import Model, RolloutError

TRAINED = "warmstart.model.trained.v1"
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
# Room for any version scheme (1, 1.4.2, 2026-11-25-rc1, a git sha), not for a payload.
MAX_VERSION_CHARS = 128


def allowed_prefixes(text: str | None) -> tuple[str, ...]:
    """ROLLOUT_ALLOW's comma-separated prefixes."""
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def model_from_event(path: Path, allow: Sequence[str]) -> tuple[Model, str]:
    """(the published model, the event's id); RolloutError naming the field otherwise."""
    try:
        event = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RolloutError(f"cannot read the trigger event {path}: {exc}") from exc
    except RecursionError:
        raise RolloutError(f"cannot read the trigger event {path}: JSON nested too deep") from None
    if not isinstance(event, dict):
        raise RolloutError(f"trigger event {path}: expected a JSON object (a structured CloudEvent)")
    if event.get("type") != TRAINED:
        raise RolloutError(f"trigger event {path}: type is {event.get('type')!r}, expected {TRAINED!r}")
    data = event.get("data")
    if isinstance(data, str):  # a producer that sent its JSON as a string
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise RolloutError(f"trigger event {path}: data is not JSON: {exc}") from exc
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise RolloutError(f"trigger event {path}: data.model must be an object with uri, version and sha256")
    where = f"trigger event {path}: data.model."
    return _model(model, {n: where + n for n in FIELDS}, allow), str(event.get("id", ""))


FIELDS = ("uri", "version", "sha256")


def _model(fields: dict[str, Any], names: dict[str, str], allow: Sequence[str]) -> Model:
    """Check the fields a rollout needs; `names` says what each is called where it came from."""
    for field in FIELDS:
        if not isinstance(fields.get(field), str | int) or not str(fields[field]).strip():
            raise RolloutError(f"{names[field]} is missing or empty")
    sha256 = str(fields["sha256"]).lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise RolloutError(f"{names['sha256']} must be 64 hex digits, not {fields['sha256']!r}")
    uri, version = str(fields["uri"]), str(fields["version"])
    _check_uri(uri, names["uri"], allow)
    _check_version(version, names["version"])
    return Model(uri=uri, version=version, sha256=sha256, name=str(fields.get("name", "")))


def _check_uri(uri: str, name: str, allow: Sequence[str]) -> None:
    """Under an allowed prefix, at a path boundary, with no `.` or `..` segment."""
    if not allow:
        raise RolloutError(
            f"{name}={uri!r}: no store is allowed; set ROLLOUT_ALLOW (or --allow) to the URI prefixes "
            "models are published under (MODEL_STORE of the retraining job)"
        )
    path = urllib.parse.unquote(urllib.parse.urlsplit(uri).path)
    if any(segment in (".", "..") for segment in path.split("/")):
        raise RolloutError(f"{name}={uri!r}: a path with '.' or '..' segments is refused")
    if not any(uri.startswith(prefix if prefix.endswith("/") else f"{prefix}/") for prefix in allow):
        raise RolloutError(f"{name}={uri!r} is not under an allowed store prefix ({', '.join(allow)})")
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise RolloutError(f"{name}={uri!r}: pickle files run code when loaded; publish ONNX or skops models")


def _check_version(version: str, name: str) -> None:
    """The version goes into X-Model-Version on every answer: a header value."""
    if len(version) > MAX_VERSION_CHARS:
        raise RolloutError(f"{name} is {len(version)} characters long; at most {MAX_VERSION_CHARS}")
    bad = next((c for c in version if not (" " <= c <= "~" or "\xa0" <= c <= "\xff")), None)
    if bad is not None:
        raise RolloutError(f"{name}={version!r}: {bad!r} cannot be sent in a header (printable Latin-1 only)")


def model_by_hand(uri: str | None, version: str | None, sha256: str | None, allow: Sequence[str]) -> Model:
    """The model from --model-uri, --model-version and --model-sha256."""
    return _model({"uri": uri, "version": version, "sha256": sha256}, {n: f"--model-{n}" for n in FIELDS}, allow)
