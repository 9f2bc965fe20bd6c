"""The spans tradebus makes, made as the OpenTelemetry SDK makes them but without its per-span machinery.

With the SDK's defaults (sampler ``parentbased_always_on``, random ids, no attribute length limit, its
internal metrics off), what ``Tracer.start_span`` decides for a ``process`` or ``create`` span is fixed:
a span of the parent's trace (or of a new random trace id), sampled, carrying the parent's trace flags'
random-id bit and trace state, with the attributes given. ``Maker`` makes that span directly: one
``Recorded`` (the SDK's ``Span``, so its methods and every exporter work on it unchanged) whose fields
are set in place, no sampler call, no attribute copies and checks, no events or links lists until one is
added, and handed as it is to the batching processor when it ends (the SDK copies it into a
``ReadableSpan`` first). The same span, in fewer steps: tests/unit/test_spanmaker.py compares the two.

Anything else (another sampler, an unsampled parent, span limits that would cut an attribute) goes
through the SDK's own tracer: ``Maker.of`` returns None for a configuration it does not cover.
Imported only once tracing is on (the SDK with it).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Mapping
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk import version as sdk_version
from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.trace import Span, SpanLimits, SpanProcessor, Tracer, TracerProvider, sampling
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AnyValue

from tradebus.sdkmaker import SdkMaker

logger = logging.getLogger(__name__)
#: The SDK release ``Recorded`` was written against and tested with (constraints.txt): it sets the SDK
#: span's private fields, so any other release makes every span through the SDK.
TESTED_SDK = "1.45."
#: The SDK release installed.
SDK_VERSION: str = sdk_version.__version__
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)


class Recorded(Span):
    """An SDK span whose fields ``Maker`` sets directly. Its attributes start as a plain dict (the SDK's
    checks would pass them unchanged) and become the SDK's bounded mapping on the first change; its events
    and links lists are made on the first one."""

    # What the SDK's Span sets on every instance, the same for all of ours.
    _sampler = sampling.DEFAULT_ON
    _trace_config = None
    _record_exception = True
    _set_status_on_exception = True
    _record_end_metrics = None
    _events: Any = ()
    _links: Any = ()
    _status = trace.Status(trace.StatusCode.UNSET)

    def __init__(
        self,
        maker: Maker,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AnyValue],
    ) -> None:
        # Not Span.__init__: it copies and checks what ``Maker`` already knows to be valid.
        self._name, self._context, self._parent, self._kind = name, context, parent, kind
        self._attributes: Any = attributes
        self._resource, self._limits, self._span_processor = maker.resource, maker.limits, maker.processor
        self._instrumentation_scope, self._instrumentation_info = maker.scope, maker.info
        self._lock = threading.Lock()
        self._end_time: int | None = None
        self._start_time: int | None = time_ns()

    def _bounded(self) -> None:
        """The attributes as the SDK keeps them, before a change goes through its checks."""
        from opentelemetry.attributes import BoundedAttributes

        with self._lock:
            if type(self._attributes) is dict:
                limits = self._limits
                self._attributes = BoundedAttributes(
                    limits.max_span_attributes, self._attributes, immutable=False,
                    max_value_len=limits.max_span_attribute_length,
                )  # fmt: skip

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        if self._end_time is None:  # ended, the SDK's says so and changes nothing
            self._bounded()
        super().set_attributes(attributes)

    def set_attribute(self, key: str, value: AnyValue) -> None:
        if self._end_time is None:
            self._bounded()
        super().set_attribute(key, value)

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        with self._lock:
            if type(self._events) is tuple:
                self._events = BoundedList(self._limits.max_events)
        super().add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: Any = None) -> None:
        with self._lock:
            if type(self._links) is tuple:
                self._links = BoundedList(self._limits.max_links)
        super().add_link(context, attributes)

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
        self._span_processor.on_end(self)  # the span itself: nothing changes it once ended


class Maker:
    """Makes ``Recorded`` spans for one tracer provider built with the SDK's defaults."""

    #: ``start`` takes the parent's span context (``SdkMaker``'s, the context extracted from headers too).
    takes_context = False

    def __init__(self, tracer: Tracer, processor: SpanProcessor, limits: SpanLimits) -> None:
        self.tracer, self.processor, self.limits = tracer, processor, limits
        self.resource = tracer.resource
        self.info = tracer.instrumentation_info
        info = tracer.instrumentation_info  # what the SDK's get_tracer made the scope of
        self.scope = InstrumentationScope(info.name, info.version, info.schema_url)
        self.max_attributes = limits.max_span_attributes

    @classmethod
    def of(
        cls, provider: TracerProvider, tracer: trace.Tracer, processor: SpanProcessor, limits: SpanLimits
    ) -> Maker | None:
        """A maker for ``provider``'s tracer, or None unless the provider is configured as ``Recorded`` spans
        assume (anything else, the SDK makes every span)."""
        if not isinstance(tracer, Tracer):  # the SDK's NoOpTracer: nothing to make
            return None
        defaults = (
            SDK_VERSION.startswith(TESTED_SDK)
            and provider.sampler is sampling.DEFAULT_ON
            and type(provider.id_generator) is RandomIdGenerator
            and limits.max_span_attribute_length is None
            and os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, "").strip().lower() != "true"
        )
        return cls(tracer, processor, limits) if defaults else None

    def start(
        self, name: str, kind: SpanKind, parent: SpanContext | None, attributes: dict[str, AnyValue]
    ) -> trace.Span:
        """A started span: a child of ``parent`` (a valid span context) or, if None, a new trace's root."""
        max_attributes = self.max_attributes
        if max_attributes is not None and len(attributes) > max_attributes:
            return self._sdk(name, kind, parent, attributes)
        if parent is None:
            trace_id = random.getrandbits(128)
            while not trace_id:
                trace_id = random.getrandbits(128)
            flags, state = _SAMPLED_RANDOM, None
        else:
            parent_flags = parent.trace_flags
            if not parent_flags & TraceFlags.SAMPLED:  # the sampler drops it: the SDK says how
                return self._sdk(name, kind, parent, attributes)
            trace_id = parent.trace_id
            flags = _SAMPLED_RANDOM if parent_flags & TraceFlags.RANDOM_TRACE_ID else _SAMPLED
            state = parent.trace_state
        span_id = random.getrandbits(64)
        while not span_id:
            span_id = random.getrandbits(64)
        context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=state)
        return Recorded(self, name, context, parent, kind, attributes)

    def _sdk(
        self, name: str, kind: SpanKind, parent: SpanContext | None, attributes: dict[str, AnyValue]
    ) -> trace.Span:
        return SdkMaker(self.tracer).start(name, kind, parent, attributes)
