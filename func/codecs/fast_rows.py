"""Large JSON row arrays and V2 tensors straight into NumPy, with simdjson.

On the general path orjson makes a Python float for every value and NumPy then walks
those lists: 15 ms of a 10,000-row request. simdjson parses the body and copies the
numbers into one float64 buffer in C, in 3 ms.

This path only takes bodies the general path would read as the same numbers: one JSON
object whose `key` is a list of rows, each a flat list of `n_features` JSON numbers.
Anything else (booleans, nulls, strings, named or ragged or nested rows, NaN literals,
integers past 64 bits, a repeated key, lists elsewhere in the body) gives None, and
the caller parses the body the general way, which answers with its exact message.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import simdjson

# Below this size orjson is as fast, and a body of one or a few rows is the common case.
MIN_BYTES = 16 * 1024

# One parser per process, kept between requests: a fresh parser allocates its buffers
# (several times the body's size) for every body, and touching new pages made the parse
# of a 6 MB body take 11 ms in the server against 7 ms with a kept parser. A parser
# serves one document at a time; the lock costs no concurrency, since parsing holds the
# GIL anyway.
_PARSER = simdjson.Parser()
_PARSER_LOCK = threading.Lock()


def rows_array(body: bytes, key: str, n_features: int, max_rows: int) -> np.ndarray | None:
    """The rows under `key` as a float64 array of shape (n, n_features), or None."""
    found = rows_and_field(body, key, n_features, max_rows, "id")
    return None if found is None else found[0]


def rows_and_field(body: bytes, key: str, n_features: int, max_rows: int, field: str) -> tuple[np.ndarray, Any] | None:
    """`rows_array`, and the value of the body's `field` beside them (None when absent)."""
    if len(body) < MIN_BYTES:
        return None
    try:
        with _PARSER_LOCK:
            doc = _PARSER.parse(body)
            rows = _rows(doc, body, key, n_features, max_rows)
            return None if rows is None else (rows, _python(doc.get(field)))
    # ValueError: not JSON (NaN literals too); RuntimeError: an integer past 64 bits;
    # TypeError: a value that is not a number
    except (ValueError, RuntimeError, TypeError):
        return None


def v2_request(body: bytes) -> dict[str, Any] | None:
    """A V2 inference request of one input tensor with flat JSON `data`: the request as
    Python objects, with that tensor's data as a float64 array. None otherwise."""
    if len(body) < MIN_BYTES:
        return None
    try:
        with _PARSER_LOCK:
            return _v2_request(_PARSER.parse(body))
    except (ValueError, RuntimeError, TypeError):
        return None


def _v2_request(doc: object) -> dict[str, Any] | None:
    if not _unique_object(doc):
        return None
    inputs = doc.get("inputs")
    if not isinstance(inputs, simdjson.Array) or len(inputs) != 1:
        return None
    tensor = inputs[0]
    if not _unique_object(tensor) or tensor.get("datatype") not in ("FP32", "FP64"):
        return None
    data = tensor.get("data")
    if not isinstance(data, simdjson.Array):
        return None
    flat = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
    if flat.size != len(data):  # nested lists: as_buffer flattened them, ragged or not
        return None
    # keys(), not items(): items() would turn the data into a list of Python floats
    request = {key: _python(doc[key]) for key in doc.keys() if key != "inputs"}
    request["inputs"] = [{**{key: _python(tensor[key]) for key in tensor.keys() if key != "data"}, "data": flat}]
    return request


def _count_byte(data: bytes, byte: bytes) -> int:
    """bytes.count, vectorised: 0.3 ms for 6 MB where bytes.count takes 1.6 ms."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == ord(byte)))


def _unique_object(value: object) -> bool:
    """An object without repeated keys: simdjson would read the first of them, where
    orjson and json read the last."""
    if not isinstance(value, simdjson.Object):
        return False
    keys = list(value.keys())
    return len(keys) == len(set(keys))


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _rows(doc: object, body: bytes, key: str, n_features: int, max_rows: int) -> np.ndarray | None:
    if not _unique_object(doc):
        return None
    rows = doc.get(key)
    if not isinstance(rows, simdjson.Array):
        return None
    n = len(rows)
    # n + 1 brackets in the whole body: the list and one per row, so no row holds a list
    # (as_buffer would flatten it) and the body has no list anywhere else.
    if not 0 < n <= max_rows or _count_byte(body, b"[") != n + 1:
        return None
    flat = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
    if flat.size != n * n_features or set(map(len, rows)) != {n_features}:
        return None
    return flat.reshape(n, n_features)
