"""Spans made by the SDK's tracer, through its public API: what tradebus/tracing.py uses when
tradebus/spanmaker.py does not apply (another sampler...) or does not import (an SDK release whose
internals moved must cost speed, never a message). Imported only once tracing is on (the SDK with it).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AnyValue


class SdkMaker:
    """``Maker.start`` by the SDK's tracer, for a configuration Maker does not cover (another sampler...).
    ``parent`` is the parent's context as the propagators extracted it, or the parent span's context."""

    takes_context = True

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start(self, name: str, kind: SpanKind, parent: Any, attributes: dict[str, AnyValue]) -> trace.Span:
        if not isinstance(parent, otel_context.Context):
            empty = otel_context.Context()
            parent = trace.set_span_in_context(trace.NonRecordingSpan(parent), empty) if parent else empty
        span: trace.Span = self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        return span
