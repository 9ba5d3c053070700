"""Read the nodes of an ONNX graph and their attributes straight from the protobuf bytes.

onnxruntime does not expose node attributes, and the `onnx` package would add a runtime
dependency and ~170 ms of imports to the first explanation, only to read a handful of
fields. The protobuf wire format is simple enough to read those fields here: a message
is a sequence of (field number, wire type, value) records, and ONNX's tree attributes
are packed arrays NumPy decodes in one call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Wire types (protobuf encoding): 0 varint, 1 fixed 64-bit, 2 length-delimited, 5 fixed 32-bit.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# Field numbers from onnx.proto.
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_GRAPH_NODE, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 11, 12
_VALUE_INFO_NAME = 1
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 4, 5, 7
_ATTR_NAME, _ATTR_F, _ATTR_I, _ATTR_S, _ATTR_T, _ATTR_FLOATS, _ATTR_INTS, _ATTR_STRINGS = 1, 2, 3, 4, 5, 7, 8, 9
# The key byte of one unpacked value of the repeated attribute fields.
_FLOAT_KEY, _INT_KEY, _STRING_KEY = _ATTR_FLOATS << 3 | _I32, _ATTR_INTS << 3 | _VARINT, _ATTR_STRINGS << 3 | _LEN


class OnnxReadError(ValueError):
    """The bytes are not an ONNX model this reader understands."""


@dataclass
class Node:
    op_type: str
    domain: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # name -> int, float, bytes, a NumPy array (ints, floats) or a list of bytes (strings);
    # tensor attributes are kept as None: present, but not read.
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]


def read_graph(data: bytes) -> Graph:
    """The graph of an ONNX ModelProto: input and output names, and every node."""
    graph = Graph([], [], [])
    try:
        for number, _, value in _fields(memoryview(data)):
            if number == _MODEL_GRAPH:
                _read_graph(value, graph)
    except (IndexError, ValueError) as exc:
        raise OnnxReadError(f"not a readable ONNX model ({exc})") from None
    if not graph.nodes:
        raise OnnxReadError("not a readable ONNX model (no graph nodes)")
    return graph


def read_metadata(data: bytes) -> dict[str, str]:
    """The model's metadata_props (where our model card lives), without reading the graph."""
    found = {}
    try:
        for number, _, value in _fields(memoryview(data)):
            if number == _MODEL_METADATA:
                entry = {n: _text(v) for n, _, v in _fields(value)}
                found[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
    except (IndexError, ValueError) as exc:
        raise OnnxReadError(f"not a readable ONNX model ({exc})") from None
    return found


def node_ops(data: bytes | memoryview) -> list[tuple[str, str]]:
    """(domain, op_type) of each graph node, without reading attributes: microseconds
    for a forest of hundreds of megabytes (a memoryview of a mapped file is not copied)."""
    ops = []
    try:
        for number, _, graph in _fields(memoryview(data)):
            if number != _MODEL_GRAPH:
                continue
            for field_number, _, node in _fields(graph):
                if field_number == _GRAPH_NODE:
                    found = {n: _text(v) for n, _, v in _fields(node) if n in (_NODE_OP_TYPE, _NODE_DOMAIN)}
                    ops.append((found.get(_NODE_DOMAIN, ""), found.get(_NODE_OP_TYPE, "")))
    except (IndexError, ValueError) as exc:
        raise OnnxReadError(f"not a readable ONNX model ({exc})") from None
    return ops


def _read_graph(data: memoryview, graph: Graph) -> None:
    for number, _, value in _fields(data):
        if number == _GRAPH_NODE:
            graph.nodes.append(_read_node(value))
        elif number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
            name = next((_text(v) for n, _, v in _fields(value) if n == _VALUE_INFO_NAME), "")
            (graph.inputs if number == _GRAPH_INPUT else graph.outputs).append(name)


def _read_node(data: memoryview) -> Node:
    node = Node("", "")
    for number, _, value in _fields(data):
        if number == _NODE_INPUT:
            node.inputs.append(_text(value))
        elif number == _NODE_OUTPUT:
            node.outputs.append(_text(value))
        elif number == _NODE_OP_TYPE:
            node.op_type = _text(value)
        elif number == _NODE_DOMAIN:
            node.domain = _text(value)
        elif number == _NODE_ATTRIBUTE:
            name, attribute = _read_attribute(value)
            node.attributes[name] = attribute
    return node


def _read_attribute(data: memoryview) -> tuple[str, Any]:
    name = ""
    scalar: Any = None
    floats: list[np.ndarray] = []
    ints: list[np.ndarray] = []
    strings: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        # onnx.proto is proto2: its repeated ints and floats come one record per value,
        # not packed; a forest has millions, so runs of them are decoded in one NumPy call.
        key = data[pos]
        if key == _FLOAT_KEY:
            values, pos = _float_run(data, pos)
            floats.append(values)
            continue
        if key == _INT_KEY:
            values, pos = _int_run(data, pos)
            ints.append(values)
            continue
        if key == _STRING_KEY:
            pos = _string_run(data, pos, strings)
            continue
        number, wire, value, pos = _field(data, pos)
        if number == _ATTR_NAME:
            name = _text(value)
        elif number == _ATTR_F:
            scalar = float(np.frombuffer(value, "<f4")[0])
        elif number == _ATTR_I:
            scalar = int(np.int64(np.uint64(value)))  # two's complement for negatives
        elif number == _ATTR_S:
            scalar = bytes(value)
        elif number == _ATTR_FLOATS:
            floats.append(np.frombuffer(value, "<f4"))  # packed
        elif number == _ATTR_INTS:
            ints.append(_varints(value))  # packed
        elif number == _ATTR_STRINGS:
            strings.append(bytes(value))
        elif number == _ATTR_T:
            scalar = None
    if floats:
        return name, np.concatenate(floats).astype(np.float64)
    if ints:
        return name, np.concatenate(ints)
    if strings:
        return name, strings
    return name, scalar


def _float_run(data: memoryview, pos: int) -> tuple[np.ndarray, int]:
    """The consecutive one-float records from `pos` (key byte, 4 bytes each)."""
    raw = np.frombuffer(data, np.uint8, offset=pos)
    n = len(raw) // 5
    others = np.flatnonzero(raw[: 5 * n : 5] != _FLOAT_KEY)
    k = int(others[0]) if len(others) else n
    values = raw[: 5 * k].reshape(k, 5)[:, 1:].copy().view("<f4").reshape(k)
    return values, pos + 5 * k


def _int_run(data: memoryview, pos: int) -> tuple[np.ndarray, int]:
    """The consecutive one-int records from `pos` (key byte, varint each)."""
    raw = np.frombuffer(data, np.uint8, offset=pos)
    ends = np.flatnonzero(raw < 0x80)  # the last byte of each varint
    starts = np.concatenate(([0], ends[:-1] + 1))
    pairs = len(ends) // 2
    is_key = (starts[: 2 * pairs : 2] == ends[: 2 * pairs : 2]) & (raw[starts[: 2 * pairs : 2]] == _INT_KEY)
    others = np.flatnonzero(~is_key)
    k = int(others[0]) if len(others) else pairs
    if k == 0:
        raise ValueError("an int attribute record without its value")
    size = int(ends[2 * k - 1]) + 1
    return _varints(raw[:size])[1::2], pos + size


def _string_run(data: memoryview, pos: int, out: list[bytes]) -> int:
    """Append the consecutive one-string records from `pos`; the position after them."""
    end = len(data)
    while pos < end and data[pos] == _STRING_KEY:
        length = data[pos + 1] if pos + 1 < end else 0x80
        if length < 0x80:
            if pos + 2 + length > end:
                raise ValueError("truncated message")
            out.append(bytes(data[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        else:
            _, _, value, pos = _field(data, pos)
            out.append(bytes(value))
    return pos


def _fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): an int for varints, else the raw bytes."""
    pos, end = 0, len(data)
    while pos < end:
        number, wire, value, pos = _field(data, pos)
        yield number, wire, value


def _field(data: memoryview, pos: int) -> tuple[int, int, Any, int]:
    """The field at `pos`: (number, wire type, value, position after it)."""
    key, pos = _varint(data, pos)
    number, wire = key >> 3, key & 7
    if wire == _VARINT:
        value, pos = _varint(data, pos)
    elif wire == _LEN:
        length, pos = _varint(data, pos)
        value = data[pos : pos + length]
        pos += length
    elif wire == _I32:
        value = data[pos : pos + 4]
        pos += 4
    elif wire == _I64:
        value = data[pos : pos + 8]
        pos += 8
    else:
        raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos > len(data):
        raise ValueError("truncated message")
    return number, wire, value, pos


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _varints(data: memoryview) -> np.ndarray:
    """A packed array of int64 varints, decoded without a Python loop per value."""
    raw = np.frombuffer(data, np.uint8)
    if len(raw) == 0:
        return np.zeros(0, np.int64)
    if raw[-1] >= 0x80:
        raise ValueError("truncated packed varints")
    last = raw < 0x80
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    position = np.arange(len(raw)) - np.repeat(starts, np.diff(np.append(starts, len(raw))))
    shifted = (raw & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.bitwise_or.reduceat(shifted, starts).view(np.int64)


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8", "replace")
