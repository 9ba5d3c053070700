"""The model a rollout starts from: a `warmstart.model.trained.v1` event (a JobSink
mounts it as a JSON file at $K_EVENT_PATH), or the same fields given by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .service import Model, RolloutError

TRAINED = "warmstart.model.trained.v1"


def model_from_event(path: Path) -> tuple[Model, str]:
    """(the published model, the event's id); RolloutError naming the field otherwise."""
    try:
        event = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RolloutError(f"cannot read the trigger event {path}: {exc}") from exc
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
    return _model(model, {n: where + n for n in FIELDS}), str(event.get("id", ""))


FIELDS = ("uri", "version", "sha256")


def _model(fields: dict[str, Any], names: dict[str, str]) -> Model:
    """Check the fields a rollout needs; `names` says what each is called where it came from."""
    for field in FIELDS:
        if not isinstance(fields.get(field), str | int) or not str(fields[field]).strip():
            raise RolloutError(f"{names[field]} is missing or empty")
    sha256 = str(fields["sha256"]).lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise RolloutError(f"{names['sha256']} must be 64 hex digits, not {fields['sha256']!r}")
    return Model(
        uri=str(fields["uri"]), version=str(fields["version"]), sha256=sha256, name=str(fields.get("name", ""))
    )


def model_by_hand(uri: str | None, version: str | None, sha256: str | None) -> Model:
    """The model from --model-uri, --model-version and --model-sha256."""
    return _model({"uri": uri, "version": version, "sha256": sha256}, {n: f"--model-{n}" for n in FIELDS})
