"""Feedback bodies: the true outcome of earlier predictions, checked against the card.

`{"feedback": [{"id": "<id>/<r>", "label": ...}, ...]}`, or one `{"id", "label"}`
object. A label is a class of the model (of the type the card's classes have) or, for
a regressor, a finite number. An item may also report the answer it labels, as the
client received it: `prediction` and the `revision` that gave it (X-Revision), with its
`model_version` (X-Model-Version) if known; a pod that did not give that answer itself
(another replica, another revision) scores the label against the reported one, for
that revision.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInput, PayloadTooLarge
from ..model.card import ModelCard
from .rows import json_type, short

ID_MAX_CHARS = 256
# A Knative revision is a Kubernetes object name (an RFC 1123 subdomain).
REVISION_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
_REVISION = re.compile(REVISION_PATTERN)
VERSION_MAX_CHARS = 128
_VERSION = re.compile(r"[^\x00-\x1f\x7f]*")  # no control characters


@dataclass
class Feedback:
    """Labels as received: the row ids, the labels (the card's own class values), and
    their codes (a class's index in the card, or a regressor's value)."""

    ids: list[str]
    labels: list[Any]
    codes: np.ndarray
    # The answers the items report (codes as `codes`; NaN where none is reported), and
    # who gave them: (revision, model_version) per item, None where none is reported.
    reported: np.ndarray
    answered_by: list[tuple[str, str] | None]


def decode_feedback(body: Any, card: ModelCard, max_rows: int) -> Feedback:
    if isinstance(body, dict) and "feedback" in body:
        items, where = body["feedback"], "feedback"
        if not isinstance(items, list):
            raise InvalidInput(f"feedback: expected a list of {{id, label}} objects, got {json_type(items)}")
        if not items:
            raise InvalidInput("feedback: expected at least one {id, label} object, got an empty list")
        if len(items) > max_rows:
            raise PayloadTooLarge(f"feedback: {len(items)} labels is more than MAX_ROWS={max_rows}")
    elif isinstance(body, dict) and "id" in body:
        items, where = [body], ""
    else:
        raise InvalidInput(
            'request body: expected {"feedback": [{"id": ..., "label": ...}, ...]} or one {"id", "label"} object'
        )
    classes = _classes(card.class_labels) if card.is_classifier else None
    ids, labels, codes = [], [], np.empty(len(items))
    reported, answered_by = np.full(len(items), np.nan), []
    for i, item in enumerate(items):
        at = f"{where}[{i}]" if where else "request body"
        if not isinstance(item, dict):
            raise InvalidInput(f"{at}: expected an object with 'id' and 'label', got {json_type(item)}")
        ids.append(_id(item.get("id"), f"{at}.id" if where else "id"))
        if "label" not in item:
            raise InvalidInput(f"{at}: 'label' is missing: the true class or value of the prediction")
        where_label = f"{at}.label" if where else "label"
        if classes is not None:
            label, codes[i] = classes.code(item["label"], where_label)
        else:
            label = codes[i] = _value(item["label"], where_label)
        labels.append(label)
        answered_by.append(_reported(item, classes, reported, i, f"{at}." if where else ""))
    return Feedback(ids, labels, codes, reported, answered_by)


def _reported(item: dict, classes: _Classes | None, reported: np.ndarray, i: int, at: str) -> tuple[str, str] | None:
    """The (revision, model_version) that gave the answer the item reports, its code put
    in reported[i]; None where the item reports none."""
    if "prediction" not in item and "revision" not in item:
        if "model_version" in item:
            raise InvalidInput(f"{at}model_version: given without the 'prediction' and 'revision' it goes with")
        return None
    if "prediction" not in item or "revision" not in item:
        missing = "prediction" if "prediction" not in item else "revision"
        raise InvalidInput(
            f"{at}{missing}: missing; an answer is reported with both 'prediction' (as the response gave it) "
            "and 'revision' (its X-Revision header)"
        )
    if classes is not None:
        reported[i] = classes.code(item["prediction"], f"{at}prediction")[1]
    else:
        reported[i] = _value(item["prediction"], f"{at}prediction")
    revision = item["revision"]
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision):
        raise InvalidInput(
            f"{at}revision: expected the X-Revision header of the response (a Knative revision name: lower-case "
            f"letters, digits, '-' and '.'), got {short(revision)}"
        )
    version = item.get("model_version", "")
    if not isinstance(version, str) or len(version) > VERSION_MAX_CHARS or not _VERSION.fullmatch(version):
        raise InvalidInput(
            f"{at}model_version: expected the X-Model-Version header of the response, a string of at most "
            f"{VERSION_MAX_CHARS} characters and no control characters, got {short(version)}"
        )
    return revision, version


def _id(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not 0 < len(value) <= ID_MAX_CHARS:
        raise InvalidInput(
            f"{where}: expected the id of a prediction (X-Prediction-Id, or '<id>/<row>'), "
            f"a string of 1 to {ID_MAX_CHARS} characters, got {short(value)}"
        )
    return value


def _value(label: Any, where: str) -> float:
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        raise InvalidInput(
            f"{where}: this model is a regressor; expected a number, got {json_type(label)} {short(label)}"
        )
    value = float(label) if abs(label) < 1e308 else math.inf
    if not math.isfinite(value):
        raise InvalidInput(f"{where}: {short(label)} is not a finite number")
    return value


@functools.lru_cache(maxsize=8)
def _classes(class_labels: tuple[Any, ...]) -> _Classes:
    """One per model's classes, not one per request."""
    return _Classes(class_labels)


class _Classes:
    """The card's classes, and how a JSON label names one: by a string, a boolean or a
    number, as the classes are."""

    def __init__(self, class_labels: tuple[Any, ...]) -> None:
        self.labels = class_labels
        if any(isinstance(c, str) for c in class_labels):
            self.kind = "strings"
        elif class_labels and all(isinstance(c, (bool, np.bool_)) for c in class_labels):
            self.kind = "booleans"
        else:
            self.kind = "numbers"
        self.index = {c: i for i, c in enumerate(class_labels)}
        self.shown = ", ".join(short(c) for c in class_labels[:10]) + (", ..." if len(class_labels) > 10 else "")

    def code(self, label: Any, where: str) -> tuple[Any, int]:
        """(the card's class value, its index) of a label; 422 naming what is wrong."""
        if _kind(label) != self.kind:
            raise InvalidInput(
                f"{where}: expected a class of this model ({self.kind}: {self.shown}), "
                f"got {json_type(label)} {short(label)}"
            )
        if isinstance(label, float) and label.is_integer() and abs(label) < 2**63:
            label = int(label)
        i = self.index.get(label)
        if i is None:
            raise InvalidInput(f"{where}: {short(label)} is not a class of this model (classes: {self.shown})")
        return self.labels[i], i


def _kind(label: Any) -> str:
    if isinstance(label, str):
        return "strings"
    if isinstance(label, bool):
        return "booleans"
    if isinstance(label, (int, float)):
        return "numbers"
    return json_type(label)
