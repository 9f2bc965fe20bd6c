"""OTLP/HTTP export of tradebus's spans, each written as protobuf bytes directly.

The SDK's OTLP exporter builds every span as protobuf message objects (the span, each attribute's key and
value, its status) and serializes them, ~25 µs a span of Python work on the exporting thread. A span
``tradebus.spanmaker`` made (``Recorded``) with string or boolean attributes and no events or links (every
``process`` and ``create`` span but a failed delivery's) is written here with a few byte strings instead:
the same protobuf message (tests/unit/test_spanmaker.py parses both and compares them), the resource and
the instrumentation scope encoded once per batch's first span. Any other span goes through the SDK's
encoder, and the two parts of a request are concatenated (repeated fields of two serialized messages
concatenated are the merged message's). Sending, retries, compression and the ``OTEL_EXPORTER_OTLP_*``
settings stay the SDK exporter's. Imported only with the OTLP extra.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanKind, StatusCode

from tradebus.spanmaker import Recorded

_U64 = struct.Struct("<Q").pack
#: Each kind's field (6), with OTLP's numbering (one above the API's).
_KIND = {kind: bytes([0x30, kind.value + 1]) for kind in SpanKind}
#: The flags field (16, fixed32): whether the parent is remote known, and whether it is (the SDK's).
_FLAGS_LOCAL, _FLAGS_REMOTE = b"\x85\x01\x00\x01\x00\x00", b"\x85\x01\x00\x03\x00\x00"
_STATUS_UNSET = b"\x7a\x00"
_SMALL = [bytes([n]) for n in range(0x80)]
#: Encoded attributes (a key and its value) seen lately: exchange, routing key, stage repeat.
_known: dict[tuple[str, Any], bytes] = {}
#: Attributes whose value is new on every span.
_UNIQUE = frozenset({"messaging.message.id"})


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + _varint(len(data)) + data


def _attribute(key: str, value: Any) -> bytes:
    """Field 9, one KeyValue: the key and an AnyValue holding a string or a boolean."""
    found = _known.get((key, value))
    if found is None:
        if type(value) is str:
            any_value = _field(b"\x0a", value.encode())
        else:  # bool, checked by ``writable``
            any_value = b"\x10\x01" if value else b"\x10\x00"
        found = _field(b"\x4a", _field(b"\x0a", key.encode()) + _field(b"\x12", any_value))
        if key not in _UNIQUE:  # a message id never comes again: kept, it would only push the others out
            if len(_known) >= 1024:
                _known.clear()
            _known[key, value] = found
    return found


def writable(span: ReadableSpan) -> bool:
    """Whether ``span`` is one this module writes: a ``Recorded`` span with string or boolean attributes,
    no events, no links, ended."""
    return (
        type(span) is Recorded
        and type(span._events) is tuple  # never given one (a list, even empty, may count dropped ones)
        and type(span._links) is tuple
        and span._end_time is not None
        and all(type(v) is str or type(v) is bool for v in span._attributes.values())
    )


def _span(span: Recorded) -> bytes:
    """One Span message, its fields in their numbers' order as protobuf writes them."""
    context, parent = span.context, span._parent
    assert context is not None  # a span the SDK or spanmaker made has one
    parts = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(_field(b"\x1a", ",".join(f"{k}={v}" for k, v in context.trace_state.items()).encode()))
    if parent:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    parts += (
        _field(b"\x2a", span._name.encode()),
        _KIND[span._kind],
        b"\x39",
        _U64(span._start_time or 0),
        b"\x41",
        _U64(span._end_time or 0),
    )
    parts += [_attribute(key, value) for key, value in span._attributes.items()]
    dropped = span.dropped_attributes
    if dropped:
        parts.append(b"\x50" + _varint(dropped))
    status = span._status
    if status.status_code is StatusCode.UNSET and not status.description:
        parts.append(_STATUS_UNSET)
    else:
        inner = _field(b"\x12", status.description.encode()) if status.description else b""
        if status.status_code.value:
            inner += b"\x18" + _varint(status.status_code.value)
        parts.append(_field(b"\x7a", inner))
    parts.append(_FLAGS_REMOTE if parent and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(parts)


def _header(resource: Resource, scope: InstrumentationScope | None) -> tuple[bytes, bytes, bytes, bytes]:
    """A ResourceSpans' resource field, its schema URL field, and a ScopeSpans' scope (with its schema URL
    field), as the SDK's encoder writes them (from a placeholder span's request)."""
    placeholder = ReadableSpan("", INVALID_SPAN_CONTEXT, resource=resource, instrumentation_scope=scope)
    resource_spans = encode_spans([placeholder]).resource_spans[0]
    scope_spans = resource_spans.scope_spans[0]
    resource_field = _field(b"\x0a", resource_spans.resource.SerializeToString())
    resource_schema = (
        _field(b"\x1a", resource_spans.schema_url.encode()) if resource_spans.schema_url else b""
    )
    scope_field = _field(b"\x0a", scope_spans.scope.SerializeToString())
    scope_schema = _field(b"\x1a", scope_spans.schema_url.encode()) if scope_spans.schema_url else b""
    return resource_field, resource_schema, scope_field, scope_schema


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """An ExportTraceServiceRequest of ``spans``, serialized."""
    groups: dict[tuple[int, int], list[bytes]] = {}
    heads: dict[tuple[int, int], tuple[Resource, InstrumentationScope | None]] = {}
    others = []
    for span in spans:
        if writable(span):
            key = (id(span._resource), id(span._instrumentation_scope))
            if key not in groups:
                groups[key], heads[key] = [], (span._resource, span._instrumentation_scope)
            groups[key].append(_span(span))  # type: ignore[arg-type]
        else:
            others.append(span)
    request = []
    for key, encoded in groups.items():
        resource_field, resource_schema, scope_field, scope_schema = _header(*heads[key])
        scope_spans = b"".join([scope_field, *(_field(b"\x12", s) for s in encoded), scope_schema])
        request.append(_field(b"\x0a", resource_field + _field(b"\x12", scope_spans) + resource_schema))
    if others:
        request.append(encode_spans(others).SerializePartialToString())
    return b"".join(request)


def _sdk_metrics() -> bool:
    """Whether the SDK's own metrics are on (its exporter's export records each batch in them)."""
    return os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, "").strip().lower() == "true"


class Exporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter, ``encode`` writing the request. Its client (the POST, retries,
    compression) is a private attribute of the SDK's: without it, the SDK's own export runs."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        limit = getattr(self, "_max_request_size", 0)
        if (
            client is None
            or getattr(self, "_shutdown", True)
            or not hasattr(client, "export")
            or _sdk_metrics()  # the SDK's export counts its batches in its own metrics
            or not any(writable(span) for span in spans)
        ):
            return super().export(spans)
        try:
            data = encode(spans)
        except Exception:  # noqa: BLE001 - the SDK's encoder says what it cannot write (and drops it)
            return super().export(spans)
        if 0 < limit < len(data):
            return super().export(spans)  # the SDK drops it, and says so
        try:
            sent = client.export(data).success
        except (TypeError, AttributeError):  # the SDK's client changed: its own export (may send again)
            return super().export(spans)
        return SpanExportResult.SUCCESS if sent else SpanExportResult.FAILURE
