"""Finished spans as an OTLP `ExportTraceServiceRequest`, in protobuf's binary encoding,
written by hand.

The OpenTelemetry SDK's own exporter builds the same bytes through protobuf and the
generated opentelemetry-proto classes: 4 MB in the image for five message types. These
are written here from opentelemetry/proto/trace/v1/trace.proto and common.proto, field by
field in field-number order, the order protobuf itself writes them in
(https://protobuf.dev/programming-guides/encoding/). tests/observe/test_otlp.py checks the
bytes against the SDK's encoder for spans that use every field.

Scalars at their default (0, "", b"") are left out, as proto3 does; a message field that
is set is written even when empty, and so is a `oneof` member such as `AnyValue`'s.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Span.flags: bit 8 says whether bit 9 (the parent is remote) is known; the SDK always knows
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


_SMALL = [bytes((n,)) for n in range(0x80)]  # varints under 128: one byte, made once
_U64, _U32, _F64 = struct.Struct("<Q").pack, struct.Struct("<I").pack, struct.Struct("<d").pack


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64s take ten bytes, as two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# every field number here is under 16, so each tag is one byte: (field << 3 | wire type)
_TAG = [[bytes((field << 3 | wire,)) for wire in range(6)] for field in range(16)]


def _tag(field: int, wire: int) -> bytes:
    return _TAG[field][wire] if field < 16 else _varint(field << 3 | wire)


def _len(field: int, payload: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(payload)) + payload


def _string(field: int, value: str | None) -> bytes:
    return _len(field, value.encode()) if value else b""


def _bytes(field: int, value: bytes | None) -> bytes:
    return _len(field, value) if value else b""


def _uint(field: int, value: int | None) -> bytes:
    return _tag(field, _VARINT) + _varint(value) if value else b""


def _fixed64(field: int, value: int | None) -> bytes:
    return _tag(field, _I64) + _U64(value) if value else b""


def _fixed32(field: int, value: int) -> bytes:
    return _tag(field, _I32) + _U32(value) if value else b""


def any_value(value: Any) -> bytes:
    """common.proto's AnyValue: its one member is written even at its default."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _tag(2, _VARINT) + _varint(int(value))
    if isinstance(value, str):
        return _len(1, value.encode())
    if isinstance(value, int):
        return _tag(3, _VARINT) + _varint(value)
    if isinstance(value, float):
        return _tag(4, _I64) + _F64(value)
    if isinstance(value, bytes):
        return _len(7, value)
    if isinstance(value, Sequence):
        return _len(5, b"".join(_len(1, any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _len(6, b"".join(_len(1, key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"an attribute of type {type(value).__name__} has no OTLP encoding: {value!r}")


def key_value(key: str, value: Any) -> bytes:
    return _string(1, key) + _len(2, any_value(value))


def attributes(field: int, values: Mapping[str, Any] | None) -> bytes:
    return b"".join(_len(field, key_value(key, value)) for key, value in (values or {}).items())


def _flags(parent: Any) -> int:
    return _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)


def _trace_state(context: Any) -> str:
    state = context.trace_state
    return ",".join(f"{key}={value}" for key, value in state.items()) if state is not None else ""


def span(item: Any) -> bytes:
    """trace.proto's Span, from the SDK's ReadableSpan."""
    context = item.get_span_context()
    parts = [
        _bytes(1, context.trace_id.to_bytes(16, "big")),
        _bytes(2, context.span_id.to_bytes(8, "big")),
        _string(3, _trace_state(context)),
        _bytes(4, item.parent.span_id.to_bytes(8, "big") if item.parent is not None else None),
        _string(5, item.name),
        _uint(6, item.kind.value + 1),  # the SDK's INTERNAL is 0, OTLP's SPAN_KIND_INTERNAL 1
        _fixed64(7, item.start_time),
        _fixed64(8, item.end_time),
        attributes(9, item.attributes),
        _uint(10, item.dropped_attributes),
    ]
    for event in item.events:
        payload = _fixed64(1, event.timestamp) + _string(2, event.name) + attributes(3, event.attributes)
        parts.append(_len(11, payload + _uint(4, event.dropped_attributes)))
    parts.append(_uint(12, item.dropped_events))
    for link in item.links:
        payload = (
            _bytes(1, link.context.trace_id.to_bytes(16, "big"))
            + _bytes(2, link.context.span_id.to_bytes(8, "big"))
            + attributes(4, link.attributes)
            + _uint(5, link.dropped_attributes)
            + _fixed32(6, _flags(link.context))
        )
        parts.append(_len(13, payload))
    parts.append(_uint(14, item.dropped_links))
    if item.status is not None:
        parts.append(_len(15, _string(2, item.status.description) + _uint(3, item.status.status_code.value)))
    parts.append(_fixed32(16, _flags(item.parent)))
    return b"".join(parts)


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    return _string(1, scope.name) + _string(2, scope.version) + attributes(3, scope.attributes)


def export_request(spans: Iterable[Any]) -> bytes:
    """ExportTraceServiceRequest: the spans grouped by resource, then by instrumentation
    scope, each group in the order its first span came."""
    grouped: dict[Any, dict[Any, list[bytes]]] = defaultdict(lambda: defaultdict(list))
    for item in spans:
        grouped[item.resource][item.instrumentation_scope or None].append(span(item))
    out = []
    for resource, scopes in grouped.items():
        scope_spans = b"".join(
            _len(
                2,
                _len(1, _scope(scope))
                + b"".join(_len(2, s) for s in encoded)
                + _string(3, getattr(scope, "schema_url", "")),
            )
            for scope, encoded in scopes.items()
        )
        body = _len(1, attributes(1, resource.attributes)) + scope_spans + _string(3, resource.schema_url)
        out.append(_len(1, body))
    return b"".join(out)
