"""Request bodies <-> arrays. Every protocol decodes into one validated float32 array
through `rows_from_json` / `check_rows`, and every answer is built from one Prediction.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from ..errors import InvalidInput, MalformedRequest, PayloadTooLarge
from ..model.card import ModelCard
from ..model.runtime import Prediction
from . import fast_rows

# JSON booleans count as 1 and 0, as NumPy and scikit-learn treat them (one-hot features
# often arrive that way); strings never count, even "1.5".
_NUMBER_KINDS = "biuf"


def parse_json(body: bytes) -> Any:
    """Parse a JSON body. NaN and Infinity literals (which Python's json module writes)
    parse, so validation can answer 422 naming the value instead of a bare 400."""
    if not body:
        raise MalformedRequest("request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        too_large: list[str] = []
        try:
            # Strict UTF-8 (a byte order mark allowed, as json.loads allows it): json.loads
            # would let encoded surrogates through, and guess UTF-16 or UTF-32.
            text = body.decode("utf-8-sig")
            value = json.loads(text, parse_int=functools.partial(_integer, too_large))
        # RecursionError: orjson stops at 1,024 levels of nesting, and json's recursive
        # parser would overflow the stack on the same body.
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise MalformedRequest(f"request body is not valid JSON: {exc}") from None
        if too_large or _SURROGATE_ESCAPE.search(body):
            _refuse_unusable(value)
        return value


# An escaped UTF-16 surrogate, paired or lone: only then can a string hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Integer literals of up to 308 digits always convert to a float64; of 310 or more never.
_FLOAT_DIGITS = 309


@dataclass(frozen=True)
class _TooLarge:
    """Where json.loads read an integer literal past a float64's range."""

    literal: str


def _integer(too_large: list[str], literal: str) -> int | _TooLarge:
    """json.loads's reading of an integer literal. Past a float64's range (2^1024 and
    more) no step after the parse could use it (every conversion to a number fails): it
    is kept as a _TooLarge, and noted, for _refuse_unusable to find."""
    digits = len(literal) - literal.startswith("-")
    if digits < _FLOAT_DIGITS:
        return int(literal)
    if digits == _FLOAT_DIGITS:
        try:
            float(int(literal))
            return int(literal)
        except OverflowError:
            pass
    too_large.append(literal)
    return _TooLarge(literal)


def _refuse_unusable(value: Any) -> None:
    """Name where json.loads read what orjson refuses and no later step can use: an
    integer past a float64's range, or a string holding a lone UTF-16 surrogate ("\\ud800",
    which no encoder can write back). Walked only when the parse saw one may be there."""
    # (value, parent entry, key): the path is built only for the message
    stack: list[tuple[Any, Any, Any]] = [(value, None, None)]
    while stack:
        entry = stack.pop()
        item = entry[0]
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                if _lone_surrogate(key):
                    raise MalformedRequest(
                        f"{_json_path(entry)}: the key {_shown(key)} holds a lone UTF-16 surrogate, "
                        "which is not a character; JSON text must be Unicode"
                    )
                stack.append((child, entry, key))
        elif isinstance(item, list):
            if not _PLAIN.issuperset(map(type, item)):  # rows of numbers: nothing to find
                stack.extend((child, entry, i) for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, str):
            if _lone_surrogate(item):
                raise MalformedRequest(
                    f"{_json_path(entry)}: the string {_shown(item)} holds a lone UTF-16 surrogate, "
                    "which is not a character; JSON text must be Unicode"
                )
        elif isinstance(item, _TooLarge):
            digits = item.literal.lstrip("-")
            raise InvalidInput(
                f"{_json_path(entry)}: the integer {item.literal[: len(item.literal) - len(digits) + 12]}... "
                f"({len(digits)} digits) is too large for a number; the largest is about 1.8e308"
            )


_PLAIN = frozenset({float, int, bool, type(None)})


def _lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _shown(text: str) -> str:
    """A string in quotes, its surrogates escaped as they were sent, at most 40 characters."""
    escaped = text.encode("utf-8", "backslashreplace").decode()
    return f'"{escaped}"' if len(escaped) <= 38 else f'"{escaped[:35]}..."'


def _json_path(entry: tuple[Any, Any, Any]) -> str:
    """Where an entry of _refuse_unusable's walk sits: `instances[0][29]`, `data.id`."""
    parts = []
    while entry[1] is not None:
        key = entry[2]
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        entry = entry[1]
    path = "".join(reversed(parts)).lstrip(".")
    return path or "request body"


def dump_json(body: Any) -> bytes:
    return orjson.dumps(body, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY)


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: arrays of strings or Python objects (the labels of
    a classifier trained on string classes) and NumPy scalars outside arrays."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def rows_from_json(instances: Any, card: ModelCard, max_rows: int, where: str = "instances") -> np.ndarray:
    """Turn JSON rows (lists in feature order, or objects keyed by feature name) into a
    validated float32 array of shape (n, n_features)."""
    if not isinstance(instances, list):
        raise InvalidInput(f"{where}: expected a list of rows, got {json_type(instances)}")
    if not instances:
        raise InvalidInput(f"{where}: expected at least one row, got an empty list")
    if len(instances) > max_rows:
        raise PayloadTooLarge(f"{where}: {len(instances)} rows is more than MAX_ROWS={max_rows}")
    if isinstance(instances[0], dict):
        instances = _rows_by_name(instances, card, where)
    try:
        array = np.asarray(instances)
    except ValueError:
        array = None  # ragged rows: find which one below
    if array is None or array.ndim != 2 or array.dtype.kind not in _NUMBER_KINDS:
        problem = _first_row_problem(instances, card, where)
        if problem:
            raise InvalidInput(problem)
        array = np.asarray(instances, dtype=np.float64)  # integers beyond int64, say
    return check_rows(_as_read(array), card, where, instances)


def row_from_json(features: Any, card: ModelCard, where: str = "features") -> np.ndarray:
    """One row (a list in feature order, or an object keyed by feature name)."""
    if isinstance(features, dict):
        return rows_from_json([features], card, 1, where)
    if not isinstance(features, list):
        raise InvalidInput(f"{where}: expected a list of {card.n_features} numbers, got {json_type(features)}")
    try:
        array = np.asarray([features])
    except ValueError:
        array = None  # a nested list of another length, say
    # NumPy's type inference is the fast check; the per-value walk runs only to explain.
    if array is None or array.ndim != 2 or array.dtype.kind not in _NUMBER_KINDS or array.shape[1] != card.n_features:
        problem = _row_problem(features, card, where)
        if problem:
            raise InvalidInput(problem)
        array = np.asarray([features], dtype=np.float64)  # integers beyond int64, say
    return check_rows(_as_read(array), card, where, [features], one_row=True)


def _as_read(array: np.ndarray) -> np.ndarray:
    """JSON numbers as float64, integers too, before float32: NumPy reads rows of integers
    only as int64, and past 2^53 int64 -> float32 can round otherwise than float64 ->
    float32, which rows with any fraction in them (and the simdjson path) go through."""
    return array.astype(np.float64) if array.dtype.kind in "iu" else array


def check_rows(
    array: np.ndarray,
    card: ModelCard,
    where: str,
    source: Any = None,
    one_row: bool = False,
    first_row: int = 0,
    table: Table | None = None,
) -> np.ndarray:
    """Check a 2-D numeric array against the card and return it as float32.

    `source`, when given, is the original nested list, so a message can quote the value
    that was wrong rather than its float32 rendering. `one_row` names positions `where[c]`
    rather than `where[r][c]`; `first_row` is the index of the array's first row in a
    larger input (a chunk of a batch job), and `table` says where its columns are in the
    file and which cells were empty.
    """
    if array.ndim != 2:
        raise InvalidInput(f"{where}: expected a 2-D array of rows, got {array.ndim} dimension(s)")
    if array.shape[1] != card.n_features:
        raise InvalidInput(
            f"{where}: expected {card.n_features} features per row, got {array.shape[1]} "
            f"(features in order: {', '.join(card.feature_names[:5])}, ...)"
        )
    if array.dtype.kind not in _NUMBER_KINDS:
        raise InvalidInput(f"{where}: expected numbers, got values of type {array.dtype}")
    with np.errstate(over="ignore"):  # past float32's range: inf, refused below by its value
        rows = array.astype(np.float32, copy=False)
    finite = np.isfinite(rows)
    if not finite.all():
        r, c = (int(i) for i in np.argwhere(~finite)[0])
        value = source[r][c] if source is not None else array[r, c].item()
        shown = "null" if value is None else repr(value)
        reason = (
            "is out of float32 range"
            if isinstance(value, (int, float)) and math.isfinite(value)
            else "is not a finite number"
        )
        if table is not None and table.empty is not None and table.empty[r, c]:
            shown, reason = "the cell", "is empty; expected a number"
        column = table.numbers[c] if table is not None else c
        position = f"{where}[{c}]" if one_row else f"{where}[{r + first_row}][{column}]"
        raise InvalidInput(f"{position} ({card.feature_names[c]}): {shown} {reason}")
    return rows


@dataclass
class Table:
    """What a message about a table's cell needs beyond the array: each feature's column
    number in the file, and which cells were empty (None when none were)."""

    numbers: list[int]
    empty: np.ndarray | None = None


def rows_from_columns(
    columns: dict[str, Any], names: list[str], card: ModelCard, where: str, first_row: int = 0
) -> np.ndarray:
    """A chunk of a table (CSV, JSONL, Parquet) with one column per feature name, in any
    order and with extra columns beside them, as validated float32 rows. `names` are all
    the file's columns in order: a message's position `row[r][c]` counts them. A None (a
    null, or an empty CSV cell) is reported as empty."""
    missing = [name for name in card.feature_names if name not in columns]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InvalidInput(f"{where}: missing feature column(s) {', '.join(map(repr, missing[:5]))}{more}")
    rows = _finite_float32_rows(columns, card)
    if rows is not None:
        return rows
    table = Table([names.index(name) for name in card.feature_names])
    array = np.empty((len(columns[card.feature_names[0]]), card.n_features), dtype=np.float64)
    for c, name in enumerate(card.feature_names):
        column = np.asarray(columns[name])
        # Text columns of numbers ("1001.0" in a CSV whose column also holds text) convert.
        if column.dtype.kind not in _NUMBER_KINDS:
            values = column.tolist()
            blank = [v is None or (isinstance(v, str) and not v.strip()) for v in values]
            if any(blank):
                if table.empty is None:
                    table.empty = np.zeros(array.shape, dtype=bool)
                table.empty[:, c] = blank
            try:
                column = np.array([np.nan if b else v for v, b in zip(values, blank)]).astype(np.float64)
            except (TypeError, ValueError):
                r, value = _first_non_number(values, blank)
                raise InvalidInput(
                    f"{where} row[{r + first_row}][{table.numbers[c]}] ({name}): "
                    f"expected a number, got {json_type(value)} {short(value)}"
                ) from None
        array[:, c] = column
    return check_rows(array, card, f"{where} row", first_row=first_row, table=table)


def _finite_float32_rows(columns: dict[str, Any], card: ModelCard) -> np.ndarray | None:
    """The rows as float32 in one pass over numeric columns, or None when a column is not
    numbers or a value is not finite in float32: the general path then names the cell.

    The general path fills a float64 array and copies it to float32: in a batch job of
    1M rows of 30 float64 features this pass costs 0.05 s of CPU where that one costs
    0.09 s. The values are the same: a float column is rounded to float32 once either
    way, and any other column goes through float64 first, as there.
    """
    rows = np.empty((len(columns[card.feature_names[0]]), card.n_features), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for c, name in enumerate(card.feature_names):
            column = np.asarray(columns[name])
            if column.dtype.kind not in _NUMBER_KINDS:
                return None
            rows[:, c] = column if column.dtype.kind == "f" else column.astype(np.float64)
    return rows if np.isfinite(rows).all() else None


def _first_non_number(values: list[Any], blank: list[bool]) -> tuple[int, Any]:
    for r, (value, empty) in enumerate(zip(values, blank)):
        if empty:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            return r, value
    return 0, values[0]


def _rows_by_name(instances: list[Any], card: ModelCard, where: str) -> list[list[Any]]:
    names = card.feature_names
    pick = itemgetter(*names)
    out = []
    for r, row in enumerate(instances):
        if not isinstance(row, dict):
            raise InvalidInput(f"{where}[{r}]: expected an object like row 0, got {json_type(row)}")
        if len(row) != len(names) or not all(k in row for k in names):
            raise InvalidInput(_named_row_problem(row, card, f"{where}[{r}]"))
        out.append(list(pick(row)) if len(names) > 1 else [pick(row)])
    return out


def _named_row_problem(row: dict[str, Any], card: ModelCard, where: str) -> str:
    known = set(card.feature_names)
    unknown = [k for k in row if k not in known]
    if unknown:
        expected = ", ".join(card.feature_names[:5])
        return (
            f"{where}: unknown feature name(s) {', '.join(map(repr, unknown[:5]))}; expected names like {expected}, ..."
        )
    missing = [k for k in card.feature_names if k not in row]
    return f"{where}: missing feature(s) {', '.join(map(repr, missing[:5]))}" + (
        f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    )


def _first_row_problem(instances: list[Any], card: ModelCard, where: str) -> str | None:
    for r, row in enumerate(instances):
        problem = _row_problem(row, card, f"{where}[{r}]")
        if problem:
            return problem
    return None


def _row_problem(row: Any, card: ModelCard, where: str) -> str | None:
    if not isinstance(row, list):
        return f"{where}: expected a row of {card.n_features} numbers, got {json_type(row)}"
    if len(row) != card.n_features:
        return f"{where}: expected {card.n_features} features, got {len(row)}"
    for c, value in enumerate(row):
        if value is None:
            return f"{where}[{c}] ({card.feature_names[c]}): null is not a number"
        if not isinstance(value, (int, float)):
            return f"{where}[{c}] ({card.feature_names[c]}): expected a number, got {json_type(value)} {short(value)}"
    return None


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def short(value: Any, limit: int = 40) -> str:
    """A JSON value as a message quotes it: at most `limit` characters, however large or
    deeply nested the value (orjson refuses past 254 levels where json would recurse)."""
    try:
        text = repr(value) if isinstance(value, float) else orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        text = f"{json_type(value)} nested too deeply to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def prediction_body(prediction: Prediction, card: ModelCard, single: bool = False) -> dict[str, Any]:
    """The `/predict` answer: labels, class probabilities, and which model gave them."""
    body: dict[str, Any] = {"predictions": prediction.labels}
    probabilities = prediction.probabilities
    if probabilities is not None:
        body["probabilities"] = probabilities
        if single and probabilities.shape[1] == 2:
            body["probability"] = probabilities[0, 1]
    body["model"] = {"name": card.name, "version": card.version}
    return body


# A client's own request id: what it may quote later (an order number). Row r of the
# request is then `<id>/<r>`, so an id holds no '/'; and it travels in a header.
ID_MAX_CHARS = 128
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


def request_id(value: Any, where: str = "id") -> str | None:
    """A request's own id (a string or a whole number), checked; None when absent."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= ID_MAX_CHARS or not _ID_CHARS.issuperset(value):
        raise InvalidInput(
            f"{where}: a request id is 1 to {ID_MAX_CHARS} letters, digits, '.', '_', ':' or '-' "
            f"(or a whole number), got {short(value)}"
        )
    return value


def decode_predict(body: Any, card: ModelCard, max_rows: int) -> tuple[np.ndarray, bool, str | None]:
    """The own API's three shapes -> (rows, whether it was a single `features` row, the
    client's request id if it sent one)."""
    if not isinstance(body, dict):
        raise InvalidInput(
            f"request body: expected a JSON object with 'instances' or 'features', got {json_type(body)}"
        )
    if "instances" in body:
        return rows_from_json(body["instances"], card, max_rows), False, request_id(body.get("id"))
    if "features" in body:
        return row_from_json(body["features"], card), True, request_id(body.get("id"))
    raise InvalidInput(
        "request body: expected a field 'instances' (a list of rows) or 'features' (one row); "
        f"got fields {sorted(body)[:5]}"
    )


def decode_predict_body(body: bytes, card: ModelCard, max_rows: int) -> tuple[np.ndarray, bool, str | None]:
    """`decode_predict` of a raw body; large `instances` lists skip the Python objects."""
    found = _fast_instances(body, card, max_rows)
    if found is not None:
        return found[0], False, found[1]
    return decode_predict(parse_json(body), card, max_rows)


def decode_v1_body(body: bytes, card: ModelCard, max_rows: int) -> tuple[np.ndarray, str | None]:
    """`decode_v1` of a raw body; large `instances` lists skip the Python objects."""
    found = _fast_instances(body, card, max_rows)
    if found is not None:
        return found
    return decode_v1(parse_json(body), card, max_rows)


def _fast_instances(body: bytes, card: ModelCard, max_rows: int) -> tuple[np.ndarray, str | None] | None:
    found = fast_rows.rows_and_field(body, "instances", card.n_features, max_rows, "id")
    if found is None:
        return None
    try:
        return check_rows(found[0], card, "instances"), request_id(found[1])
    except InvalidInput:
        return None  # the general path quotes the bad value as it was sent


def decode_v1(body: Any, card: ModelCard, max_rows: int) -> tuple[np.ndarray, str | None]:
    """KServe V1: `{"instances": [...]}`, and the client's `id` if it sent one."""
    if not isinstance(body, dict) or "instances" not in body:
        raise InvalidInput("request body: KServe V1 expects a JSON object with an 'instances' list")
    return rows_from_json(body["instances"], card, max_rows), request_id(body.get("id"))
