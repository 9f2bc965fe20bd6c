"""OpenTelemetry traces: one trace per signal (MasterTrade) or command (Letrade), carried in message headers.

A trace begins where the topology says (``Topology.trace_roots``: MasterTrade's signals, Letrade's
commands). Publishing such a message makes a short ``create <type>`` span (a new trace, or a child of the
span current at the time); every stage that processes a delivery whose headers name a trace, or that
begins one, runs its handler in a ``process <queue>`` span, and what the handler publishes carries that
span in its headers. So a signal's trace is ``create trading_signal`` -> ``process trading_signals`` (risk)
-> ``process order_requests`` (the order) -> ``process strategy_order_updates`` (its fill), each the parent
of the next, whatever process runs each hop.

The context travels as W3C Trace Context (``traceparent``, ``tracestate``; and ``baggage`` when the
publishing code set any: baggage read from a delivery is not carried on to what its handler publishes),
written and read by OpenTelemetry's own propagators (``OTEL_PROPAGATORS`` chooses others). A plain
JSON service ignores those headers or sets ``traceparent`` to join; a message without them is processed
exactly as before, in no span unless it begins a trace. Market data and everything else outside a trace
cost no span.

Off by default (``TracingSettings``; tradebus/settings.py): then every function here returns at its first
line. On, each process builds its own tracer provider on first use (a prefork pool's children after the
fork; a threads pool's threads share their process's, built once under a lock), with a batching
processor: the export runs on its background thread, off the message path. With the SDK's default
configuration spans are made by tradebus/spanmaker.py and written by tradebus/spanwire.py (the SDK's span
and message, without its per-span machinery): 20-55 us of a pool's CPU a span (scripts/span_cost_pool.py;
``tradebus bench --scenario traces``: what that is of a hop; docs/performance.md, "Traces").
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

from celery.exceptions import Ignore
from celery.signals import worker_process_shutdown, worker_shutdown
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from routing import Topology
from tradebus.headers import TRACEPARENT, TRACESTATE, TYPE
from tradebus.settings import TracingSettings

if TYPE_CHECKING:  # the SDK is imported only once tracing is on (_Provider): most processes never need it
    from types import TracebackType

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter

    from tradebus.sdkmaker import SdkMaker
    from tradebus.spanmaker import Maker

INSTRUMENTATION = "tradebus"
logger = logging.getLogger(__name__)
_NOTHING: AbstractContextManager[Any] = nullcontext()


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads a header as text whether the client sent it as a string or as bytes (pika, aio-pika)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [value.decode(errors="replace") if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()
#: A ``traceparent`` as every OpenTelemetry SDK writes it (version 00, lowercase hex, nothing around it).
_CANONICAL = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_FLAGS = [TraceFlags(n) for n in range(256)]
_W3C = TraceContextTextMapPropagator()
#: The global propagator last seen, and what it is: "w3c" (``OTEL_PROPAGATORS=tracecontext``), "default"
#: (``tracecontext,baggage``, OpenTelemetry's default) or "other".
_seen: tuple[TextMapPropagator | None, str] = (None, "other")


def _propagator(baggage_to_carry: bool) -> TextMapPropagator:
    """What reads or writes one message's trace headers: the configured propagators (``OTEL_PROPAGATORS``)
    or, when those are W3C trace context (and baggage, with none to carry), W3C trace context's own. Same
    headers either way; the composite's rounds cost every span (each propagator reads the carrier)."""
    global _seen
    configured = propagate.get_global_textmap()
    known, kind = _seen
    if known is not configured:
        # A private attribute of the SDK's composite: if a release renames it, the configured propagators
        # are used as they are (the shortcut is lost, nothing else).
        composite = isinstance(configured, CompositePropagator)
        parts = getattr(configured, "_propagators", None) if composite else [configured]
        kinds = [type(p) for p in parts or ()]
        w3c: list[type[TextMapPropagator]] = [TraceContextTextMapPropagator]
        kind = "w3c" if kinds == w3c else "default" if kinds == [*w3c, W3CBaggagePropagator] else "other"
        _seen = configured, kind
    if kind == "w3c" or (kind == "default" and not baggage_to_carry):
        return _W3C
    return configured


class _Provider:
    """This process's tracer provider for one ``TracingSettings``; rebuilt after a fork or a change.

    An exporter that cannot be built (the OTLP extra not installed) leaves tracing off in this process,
    said once in the log: observability never costs a message.
    """

    def __init__(self, settings: TracingSettings) -> None:
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from tradebus.sdkmaker import SdkMaker

        self.settings = settings
        limits = SpanLimits()  # the provider's own (OTEL_*_LIMIT), kept for Maker
        self.provider = TracerProvider(resource=_resource(settings.service_name), span_limits=limits)
        self.tracer: Tracer | None = None
        self.maker: Maker | SdkMaker | None = None
        try:
            processor = BatchSpanProcessor(_exporter(settings))
        except ImportError as exc:
            logger.error("traces are off: TRADEBUS_TRACES=%s needs %s", settings.exporter, exc)
            return
        self.provider.add_span_processor(processor)
        self.tracer = tracer = self.provider.get_tracer(INSTRUMENTATION)
        # The SDK's default configuration: spans made directly (tradebus/spanmaker.py); else by its tracer.
        try:
            from tradebus.spanmaker import Maker
        except ImportError as exc:  # an SDK release whose internals moved: its own tracer makes the spans
            logger.warning("spans made by the OpenTelemetry SDK's tracer: tradebus/spanmaker.py: %s", exc)
            self.maker = SdkMaker(tracer)
        else:
            self.maker = Maker.of(self.provider, tracer, processor, limits) or SdkMaker(tracer)


def _resource(service_name: str) -> Resource:
    """This process's resource (``service.name`` and the SDK's own attributes), hashed once: the OTLP encoder
    groups every span by its resource, and ``Resource.__hash__`` writes its attributes as JSON each time."""
    from opentelemetry.sdk.resources import Resource

    class HashedOnce(Resource):
        hashed: int | None = None

        def __hash__(self) -> int:  # the attributes are immutable
            if self.hashed is None:
                self.hashed = super().__hash__()
            return self.hashed

    created = Resource.create({"service.name": service_name})
    return HashedOnce(created.attributes, created.schema_url)


def _exporter(settings: TracingSettings) -> SpanExporter:
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    # Imported only when used: the OTLP exporter pulls in protobuf and requests.
    try:
        from tradebus.spanwire import Exporter  # the SDK's, writing tradebus's spans itself
    except ImportError as exc:  # an SDK release whose internals moved (or the extra is missing: then below)
        logger.warning("spans written by the OpenTelemetry SDK's encoder: tradebus/spanwire.py: %s", exc)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=settings.endpoint)
    return Exporter(endpoint=settings.endpoint)


_current: _Provider | None = None
_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child (a prefork pool process) builds its own: the parent's queue and thread are not its."""
    global _current
    _current = None


os.register_at_fork(after_in_child=_forget_after_fork)


def _built(settings: TracingSettings) -> _Provider | None:
    """This process's provider for ``settings``, built on first use; None when tracing is off."""
    global _current
    if not settings.enabled:
        return None
    built = _current
    if built is None or built.settings is not settings:
        with _lock:
            built = _current
            if built is None or built.settings != settings:
                if built is not None:
                    built.provider.shutdown()  # settings changed: export what the old one holds
                built = _current = _Provider(settings)
    return built if built.tracer is not None else None


def tracer(settings: TracingSettings) -> Tracer | None:
    """This process's tracer for ``settings``, built on first use; None when tracing is off."""
    built = _built(settings)
    return None if built is None else built.tracer


def shutdown() -> None:
    """Export the spans still queued and stop this process's provider (a pool process about to exit)."""
    global _current
    with _lock:
        built, _current = _current, None
    if built is not None:
        built.provider.shutdown()


def flush(timeout_millis: int = 5000) -> bool:
    """Export the spans queued so far now; whether it finished in time (True when tracing is off)."""
    built = _current
    return True if built is None else built.provider.force_flush(timeout_millis)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _flush_at_exit(**_: Any) -> None:
    """A prefork pool process leaves through ``os._exit``: no atexit hook runs, so export here. A threads
    pool runs its stages in the worker's own process, which exports when the worker shuts down."""
    shutdown()


def _remote(headers: Mapping[str, Any]) -> SpanContext | otel_context.Context | None:
    """The parent ``headers`` name: its span context, read here when the ``traceparent`` is the canonical
    version 00 with nothing else to read (no ``tracestate``, no ``baggage``, W3C propagation); else the
    context the propagators extract (``parent_of``). None when they name none validly."""
    value = headers.get(TRACEPARENT)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if (
        type(value) is str
        and _CANONICAL.fullmatch(value)
        and TRACESTATE not in headers
        and _propagator("baggage" in headers) is _W3C
    ):
        trace_id, span_id = int(value[3:35], 16), int(value[36:52], 16)
        if trace_id and span_id:
            flags = _FLAGS[int(value[53:], 16)]
            return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
        return None
    return parent_of(headers)


def parent_of(headers: Mapping[str, Any]) -> otel_context.Context | None:
    """The span context ``headers`` name (W3C ``traceparent``), or None when they name none validly."""
    if TRACEPARENT not in headers:
        return None
    extracted = _propagator("baggage" in headers).extract(headers, getter=_GETTER)
    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None


def outgoing(
    settings: TracingSettings,
    topology: Topology,
    *,
    exchange: str,
    routing_key: str,
    message_id: str,
    headers: Mapping[str, Any],
) -> dict[str, str]:
    """The trace headers of a message about to be published: the current span's context, or for a message
    that begins a trace, a ``create`` span's (a child of the current span, if any). Empty when tracing is
    off, or when the message is outside any trace."""
    found = _built(settings)
    if found is None or found.maker is None:
        return {}
    carrier: dict[str, str] = {}
    if topology.starts_trace(exchange, routing_key):
        maker, current = found.maker, trace.get_current_span().get_span_context()
        # The SDK's tracer takes the current context, as it did; Maker its span's, if any.
        parent: Any = otel_context.get_current() if maker.takes_context else current
        span = maker.start(
            f"create {headers.get(TYPE) or routing_key}",
            SpanKind.PRODUCER,
            parent if maker.takes_context or current.is_valid else None,
            _attributes(exchange, routing_key, message_id),
        )
        span.end()
        context = trace.set_span_in_context(span)
        _propagator(bool(baggage.get_all(context))).inject(carrier, context=context)
    elif trace.get_current_span().get_span_context().is_valid:
        _propagator(bool(baggage.get_all())).inject(carrier)
    return carrier


def consuming(
    settings: TracingSettings,
    topology: Topology,
    headers: Mapping[str, Any],
    *,
    queue: str,
    exchange: str,
    routing_key: str,
    message_id: str,
    stage: str | None = None,
) -> AbstractContextManager[Any]:
    """A ``process <queue>`` span around a delivery's handling, current while it runs (so what it publishes
    carries it): a child of the span its headers name, or a new trace's root when the message begins one.
    Nothing at all when tracing is off or the delivery is outside any trace."""
    found = _built(settings)
    if found is None or found.maker is None:
        return _NOTHING
    parent = _remote(headers)
    if parent is None and not topology.starts_trace(exchange, routing_key):
        return _NOTHING
    attributes = _attributes(exchange, routing_key, message_id)
    if stage:
        attributes["tradebus.stage"] = stage
    maker = found.maker
    if isinstance(parent, otel_context.Context) and not maker.takes_context:
        parent = trace.get_current_span(parent).get_span_context()  # Maker takes the span context
    return _Processing(maker, f"process {queue}", parent, attributes)


class _Processing(AbstractContextManager[Span]):
    """What ``Tracer.start_as_current_span`` does for a delivery, in one object instead of its two generator
    context managers: the span starts on entry and is current until exit, an exception that ends it is
    recorded on it (with an ERROR status) and goes on, and the span ends."""

    __slots__ = ("attributes", "maker", "name", "parent", "span", "token")

    def __init__(self, maker: Any, name: str, parent: Any, attributes: dict[str, Any]) -> None:
        self.maker, self.name, self.parent, self.attributes = maker, name, parent, attributes

    def __enter__(self) -> Span:
        span: Span = self.maker.start(self.name, SpanKind.CONSUMER, self.parent, self.attributes)
        self.span = span
        self.token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self.span
        otel_context.detach(self.token)
        if isinstance(exc, Ignore) and span.is_recording():
            # Celery's Ignore ends a delivery on purpose (a repeat the handler dropped): not an error.
            span.set_attribute("tradebus.ignored", True)
        elif isinstance(exc, Exception) and span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()


class _Stage(Protocol):
    """What ``processing`` reads of a running stage (tradebus/stage.py's StageTask)."""

    app: Any
    queue_name: str
    name: str
    request: Any

    @property
    def headers(self) -> Mapping[str, Any]: ...

    def origin(self) -> tuple[str, str]: ...


def processing(task: _Stage) -> AbstractContextManager[Any]:
    """``consuming`` for the delivery a stage is running (its original route, its task id)."""
    settings = task.app.settings.tracing
    if not settings.enabled:
        return _NOTHING
    exchange, routing_key = task.origin()
    return consuming(
        settings,
        task.app.topology,
        task.headers,
        queue=task.queue_name,
        exchange=exchange,
        routing_key=routing_key,
        message_id=str(task.request.id),
        stage=task.name,
    )


def _attributes(exchange: str, routing_key: str, message_id: str) -> dict[str, Any]:
    """OpenTelemetry's messaging attributes of one message."""
    # The operation is the span's kind and name already; each attribute costs every span (encoding).
    return {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": exchange,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.message.id": message_id,
    }
