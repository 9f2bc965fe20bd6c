"""tradebus's own span making (tradebus/spanmaker.py) and OTLP writing (tradebus/spanwire.py) against the
SDK's: the same spans, the same protobuf messages, without a broker."""

from __future__ import annotations

import os
import sys

import pytest
import requests
from celery.exceptions import Ignore
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState

from routing import build
from tradebus import spanmaker, spanwire, tracing
from tradebus.settings import TracingSettings
from tradebus.spanmaker import Recorded

MASTERTRADE = build("mastertrade")
ON = TracingSettings(exporter="console")
SIGNAL = {"exchange": "mastertrade.trading", "routing_key": "signal.BTCUSDT.s-1"}
ORDER = {"exchange": "mastertrade.orders", "routing_key": "order.request.BTCUSDT"}


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert tracing.flush()
    return list(exporter.get_finished_spans())


def parent(flags: int = 1, state: str | None = None) -> dict[str, str]:
    headers = {"traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{flags:02x}"}
    return headers | ({"tracestate": state} if state else {})


def deliver(
    headers: dict[str, str], route: dict[str, str] = SIGNAL, fail: BaseException | None = None
) -> None:
    with tracing.consuming(ON, MASTERTRADE, headers, queue="q", message_id="m-1", stage="s", **route):
        if fail is not None:
            raise fail


def made_by_the_sdk(headers: dict[str, str], route: dict[str, str] = SIGNAL) -> ReadableSpan:
    """The span the SDK's own tracer makes of the same delivery (what tradebus did before spanmaker)."""
    exporter = InMemorySpanExporter()
    built = tracing._built(ON)
    assert built is not None and built.tracer is not None
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    built.provider.add_span_processor(SimpleSpanProcessor(exporter))
    context = tracing.parent_of(headers)
    attributes = tracing._attributes(route["exchange"], route["routing_key"], "m-1") | {"tradebus.stage": "s"}
    built.tracer.start_span("process q", context=context, kind=SpanKind.CONSUMER, attributes=attributes).end()
    (span,) = exporter.get_finished_spans()
    return span


def same(ours: ReadableSpan, sdk: ReadableSpan) -> None:
    """Every field a reader or exporter sees, but the ids and times a new span gets."""
    assert (ours.name, ours.kind, ours.parent, ours.status.status_code, ours.resource) == (
        sdk.name, sdk.kind, sdk.parent, sdk.status.status_code, sdk.resource,
    )  # fmt: skip
    assert ours.instrumentation_scope == sdk.instrumentation_scope
    assert dict(ours.attributes or {}) == dict(sdk.attributes or {})
    assert (ours.events, ours.links, ours.dropped_attributes) == (
        sdk.events,
        sdk.links,
        sdk.dropped_attributes,
    )
    mine, theirs = ours.context, sdk.context
    assert mine is not None and theirs is not None
    assert (mine.trace_flags, mine.trace_state, mine.is_remote) == (
        theirs.trace_flags, theirs.trace_state, theirs.is_remote,
    )  # fmt: skip
    assert mine.is_valid and (ours.parent is None or mine.trace_id == ours.parent.trace_id)


@pytest.mark.parametrize(
    "headers",
    [{}, parent(), parent(flags=3), parent(state="vendor=1,other=x")],
    ids=["a new trace", "a remote parent", "its random-id flag", "its trace state"],
)
def test_a_span_made_by_tradebus_is_the_one_the_sdk_makes(
    spans: InMemorySpanExporter, headers: dict[str, str]
) -> None:
    deliver(headers)
    (ours,) = finished(spans)
    assert type(ours) is Recorded
    same(ours, made_by_the_sdk(headers))
    assert ours.start_time is not None and ours.end_time is not None and ours.start_time <= ours.end_time


def test_an_unsampled_parent_gets_the_sdk_s_unrecorded_span(spans: InMemorySpanExporter) -> None:
    headers = parent(flags=0)
    with tracing.consuming(ON, MASTERTRADE, headers, queue="q", message_id="m", **SIGNAL) as span:
        assert not span.is_recording() and span.get_span_context().trace_id == int(
            headers["traceparent"][3:35], 16
        )
    assert finished(spans) == []


def test_another_sampler_leaves_every_span_to_the_sdk(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.0")
    deliver(parent())
    carried = tracing.outgoing(ON, MASTERTRADE, message_id="c", headers={}, **SIGNAL)
    processed, created = finished(spans)
    assert type(processed) is not Recorded and processed.parent is not None
    assert type(created) is not Recorded and created.name == "create signal.BTCUSDT.s-1"
    assert created.context is not None and f"{created.context.span_id:016x}" in carried["traceparent"]


@pytest.mark.parametrize(("release", "ours"), [("1.45.2", True), ("1.99.0", False)], ids=["tested", "other"])
def test_a_release_of_the_sdk_other_than_the_tested_one_makes_every_span(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, release: str, ours: bool
) -> None:
    monkeypatch.setattr(spanmaker, "SDK_VERSION", release)
    deliver(parent())
    (span,) = finished(spans)
    assert (type(span) is Recorded) is ours


def test_a_failure_and_a_dropped_repeat_are_recorded_on_it_as_by_the_sdk(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="bad"):
        deliver(parent(), fail=ValueError("bad"))
    with pytest.raises(Ignore):
        deliver(parent(), fail=Ignore())
    failed, ignored = finished(spans)
    assert failed.status.status_code.name == "ERROR" and [e.name for e in failed.events] == ["exception"]
    assert (
        failed.events[0].attributes is not None
        and failed.events[0].attributes["exception.type"] == "ValueError"
    )
    assert ignored.attributes is not None and ignored.attributes["tradebus.ignored"] is True
    # Ended: nothing changes it any more.
    failed.set_attribute("late", "x")  # type: ignore[attr-defined]
    assert failed.attributes is not None and "late" not in failed.attributes


def test_the_otlp_request_is_the_one_the_sdk_writes(spans: InMemorySpanExporter) -> None:
    """Spans tradebus writes (plain, with a trace state, a boolean attribute, an error and its event, which
    the SDK's encoder writes) and a create span, in one batch: the same message, field for field."""
    deliver(parent())
    deliver(parent(state="vendor=1"), ORDER)
    with pytest.raises(Ignore):
        deliver({}, fail=Ignore())
    with pytest.raises(ValueError, match="x"):
        deliver(parent(), fail=ValueError("x"))
    tracing.outgoing(ON, MASTERTRADE, message_id="c", headers={}, **SIGNAL)
    remote = SpanContext(
        1, 2, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")])
    )
    context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    built = tracing._built(ON)
    assert built is not None and built.tracer is not None
    built.tracer.start_span("sdk", context=context, attributes={"n": 1}).end()  # an SDK span, an int
    batch = finished(spans)
    assert len(batch) == 6 and sum(spanwire.writable(s) for s in batch) == 4
    ours = ExportTraceServiceRequest.FromString(spanwire.encode(batch))
    theirs = encode_spans(batch)
    flat = [s for r in ours.resource_spans for ss in r.scope_spans for s in ss.spans]
    assert sorted(s.SerializeToString() for s in flat) == sorted(
        s.SerializeToString() for r in theirs.resource_spans for ss in r.scope_spans for s in ss.spans
    )
    for resource_spans in ours.resource_spans:  # the same resource and scope on each part
        assert resource_spans.resource == theirs.resource_spans[0].resource
        assert resource_spans.scope_spans[0].scope == theirs.resource_spans[0].scope_spans[0].scope
    written = ExportTraceServiceRequest.FromString(spanwire.encode(batch[:3]))
    assert written == encode_spans(batch[:3])


def test_the_exporter_posts_tradebus_s_bytes_through_the_sdk_s_client(spans: InMemorySpanExporter) -> None:
    """spanwire.Exporter sends with the SDK exporter's private client (the POST, retries, compression): a
    session that keeps what it is sent shows the request is the one spanwire wrote, and a success."""
    deliver(parent())
    deliver(parent(state="vendor=1"), ORDER)
    batch = finished(spans)
    posted: list[bytes] = []

    class Kept(requests.adapters.HTTPAdapter):
        def send(
            self, request: requests.PreparedRequest, *args: object, **kwargs: object
        ) -> requests.Response:
            posted.append(request.body if isinstance(request.body, bytes) else b"")
            response = requests.Response()
            response.status_code, response._content, response.request = 200, b"", request
            return response

    session = requests.Session()
    session.mount("http://", Kept())
    exporter = spanwire.Exporter(endpoint="http://127.0.0.1:9/v1/traces", session=session)
    try:
        assert exporter.export(batch) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert posted == [spanwire.encode(batch)]
    assert ExportTraceServiceRequest.FromString(posted[0]) == encode_spans(batch)


def test_a_span_that_dropped_an_event_is_written_by_the_sdk_s_encoder(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "0")  # the failure's exception event is dropped
    with pytest.raises(ValueError, match="bad"):
        deliver(parent(), fail=ValueError("bad"))
    (failed,) = finished(spans)
    assert type(failed) is Recorded and failed.dropped_events == 1 and not spanwire.writable(failed)
    assert ExportTraceServiceRequest.FromString(spanwire.encode([failed])) == encode_spans([failed])


def test_an_sdk_whose_internals_moved_still_traces_every_message(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tradebus.spanmaker", None)  # its import fails, as on such a release
    deliver(parent())
    (span,) = finished(spans)
    assert type(span) is not Recorded and span.name == "process q" and span.parent is not None
