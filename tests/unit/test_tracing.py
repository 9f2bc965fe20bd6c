"""Trace context in message headers (tradebus/tracing.py), without a broker: spans go to memory."""

from __future__ import annotations

import itertools
import re

import pytest
from celery.exceptions import Ignore
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from routing import build
from tradebus import publisher, tracing
from tradebus.errors import SettingsError
from tradebus.headers import TYPE
from tradebus.settings import Settings, SigningSettings, TracingSettings

MASTERTRADE = build("mastertrade")
LETRADE = build("letrade")
ON = TracingSettings(exporter="console")
OFF = TracingSettings()
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
SIGNAL = ("mastertrade.trading", "signal.BTCUSDT.s-1")
ORDER = ("mastertrade.orders", "order.request.BTCUSDT")
FILL = ("mastertrade.orders", "order.update.filled.o-1")
TICKER = ("mastertrade.market", "ticker.BTCUSDT")


def ids(traceparent: str) -> tuple[str, str]:
    """The trace id and span id a W3C ``traceparent`` names."""
    match = TRACEPARENT.match(traceparent)
    assert match is not None, traceparent
    return match.group(1), match.group(2)


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert tracing.flush()
    return list(exporter.get_finished_spans())


def publish(route: tuple[str, str], settings: TracingSettings = ON, kind: str = "x") -> dict[str, str]:
    exchange, key = route
    return tracing.outgoing(
        settings, MASTERTRADE, exchange=exchange, routing_key=key, message_id="m", headers={TYPE: kind}
    )


def process(headers: dict[str, object], route: tuple[str, str], queue: str, settings: TracingSettings = ON):  # type: ignore[no-untyped-def]
    exchange, key = route
    return tracing.consuming(
        settings, MASTERTRADE, headers, queue=queue, exchange=exchange, routing_key=key, message_id="m"
    )


def test_tracing_is_off_by_default_and_on_when_an_otlp_endpoint_is_configured() -> None:
    assert Settings.from_env({}).tracing == OFF
    on = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}).tracing
    assert (on.exporter, on.endpoint) == ("otlp", "http://collector:4318/v1/traces")
    traces_url = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/t", "OTEL_SERVICE_NAME": "risk"}
    assert Settings.from_env(traces_url).tracing == TracingSettings(
        exporter="otlp", endpoint="http://c:4318/t", service_name="risk"
    )
    assert Settings.from_env({"TRADEBUS_TRACES": "console"}).tracing.exporter == "console"
    assert not Settings.from_env(
        {"TRADEBUS_TRACES": "off", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}
    ).tracing.enabled
    assert not Settings.from_env({"TRADEBUS_TRACES": "otlp", "OTEL_SDK_DISABLED": "true"}).tracing.enabled
    with pytest.raises(SettingsError, match="TRADEBUS_TRACES"):
        Settings.from_env({"TRADEBUS_TRACES": "jaeger"})


def test_off_adds_no_header_and_makes_no_span(spans: InMemorySpanExporter) -> None:
    assert publish(SIGNAL, OFF) == {}
    with process({"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"}, SIGNAL, "trading_signals", OFF):
        assert publish(ORDER, OFF) == {}
    assert tracing.tracer(OFF) is None
    assert finished(spans) == []
    # The publisher's own properties: no trace header unless the settings turn it on.
    properties = publisher.outgoing(
        MASTERTRADE, SigningSettings(), b"{}", exchange=SIGNAL[0], routing_key=SIGNAL[1], trace=OFF
    )
    assert "traceparent" not in properties["headers"]
    properties = publisher.outgoing(
        MASTERTRADE, SigningSettings(), b"{}", exchange=SIGNAL[0], routing_key=SIGNAL[1], trace=ON
    )
    assert TRACEPARENT.match(properties["headers"]["traceparent"])


def test_a_signal_begins_a_trace_that_its_order_and_fill_carry_parent_to_child(
    spans: InMemorySpanExporter,
) -> None:
    signal = publish(SIGNAL, kind="trading_signal")
    trace_id, create_id = ids(signal["traceparent"])
    with process(signal, SIGNAL, "trading_signals"):
        order = publish(ORDER, kind="order_request")
    with process(order, ORDER, "order_requests"):
        fill = publish(FILL, kind="order_update")
    with process(fill, FILL, "strategy_order_updates"):
        pass
    by_name = {s.name: s for s in finished(spans)}
    chain = [
        by_name[n]
        for n in (
            "create trading_signal",
            "process trading_signals",
            "process order_requests",
            "process strategy_order_updates",
        )
    ]
    assert {format(s.context.trace_id, "032x") for s in chain} == {trace_id}
    assert chain[0].parent is None and format(chain[0].context.span_id, "016x") == create_id
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert chain[1].attributes is not None
    assert chain[1].attributes["messaging.rabbitmq.destination.routing_key"] == SIGNAL[1]
    assert len(by_name) == 4


def test_a_message_outside_any_trace_gets_no_header_and_no_span(spans: InMemorySpanExporter) -> None:
    assert publish(TICKER) == {}
    with process({}, TICKER, "executor_market_data"):
        assert publish(ORDER) == {}  # nothing current: the order stays outside any trace
    # Positive control: the same ticker inside a traced stage carries that stage's span.
    with process({}, SIGNAL, "trading_signals"):
        assert TRACEPARENT.match(publish(TICKER)["traceparent"])
    assert [s.name for s in finished(spans)] == ["process trading_signals"]


def test_a_signal_without_headers_begins_a_trace_where_it_is_processed(spans: InMemorySpanExporter) -> None:
    with process({}, SIGNAL, "trading_signals"):
        pass
    (span,) = finished(spans)
    assert span.parent is None and span.name == "process trading_signals"


def test_a_plain_publisher_joins_a_trace_with_its_own_traceparent_as_text_or_bytes(
    spans: InMemorySpanExporter,
) -> None:
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    for header in (f"00-{trace_id}-{span_id}-01", f"00-{trace_id}-{span_id}-01".encode()):
        with process({"traceparent": header, "tracestate": "vendor=1"}, TICKER, "market_data"):
            pass
    got = finished(spans)
    assert len(got) == 2
    for span in got:
        assert format(span.context.trace_id, "032x") == trace_id
        assert span.parent is not None and format(span.parent.span_id, "016x") == span_id
        assert span.context.trace_state.to_header() == "vendor=1"


def test_a_malformed_traceparent_is_ignored_as_if_absent(spans: InMemorySpanExporter) -> None:
    for header in ("garbage", f"00-{'0' * 32}-{'0' * 16}-01", "00-xyz"):
        with process({"traceparent": header}, TICKER, "market_data"):
            pass
        with process({"traceparent": header}, SIGNAL, "trading_signals"):
            pass
    got = finished(spans)
    # Market data stays outside any trace; each signal begins a trace of its own.
    assert [s.name for s in got] == ["process trading_signals"] * 3
    assert all(s.parent is None for s in got) and len({s.context.trace_id for s in got}) == 3


def test_a_letrade_command_begins_a_trace_and_its_event_carries_it(spans: InMemorySpanExporter) -> None:
    command = tracing.outgoing(
        ON, LETRADE, exchange="letrade.commands", routing_key="commands.execute_trade", message_id="c",
        headers={TYPE: "execute_trade"},
    )  # fmt: skip
    with tracing.consuming(
        ON, LETRADE, command, queue="exchange_connector", exchange="letrade.commands",
        routing_key="commands.execute_trade", message_id="c",
    ):  # fmt: skip
        event = tracing.outgoing(
            ON, LETRADE, exchange="letrade.events", routing_key="events.trade_executed", message_id="e",
            headers={},
        )  # fmt: skip
    create, processed = sorted(finished(spans), key=lambda s: s.start_time or 0)
    assert create.name == "create execute_trade" and processed.parent is not None
    assert processed.parent.span_id == create.context.span_id
    assert ids(event["traceparent"])[1] == format(processed.context.span_id, "016x")


def test_a_message_with_baggage_joins_its_trace_as_one_without(spans: InMemorySpanExporter) -> None:
    """Baggage makes the configured propagators read the headers (OpenTelemetry's default: trace context,
    then baggage); without any, W3C trace context's own reads them: the same span either way."""
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    parent = f"00-{trace_id}-{span_id}-01"
    for headers in ({"traceparent": parent, "baggage": "tenant=blue"}, {"traceparent": parent}):
        with process(headers, ORDER, "order_requests"):
            assert ids(publish(FILL)["traceparent"])[0] == trace_id
    for span in finished(spans):
        assert format(span.context.trace_id, "032x") == trace_id
        assert span.parent is not None and format(span.parent.span_id, "016x") == span_id


def test_a_repeat_the_handler_drops_is_not_an_error_on_its_span(spans: InMemorySpanExporter) -> None:
    with pytest.raises(Ignore), process({}, SIGNAL, "trading_signals"):
        raise Ignore  # handling.drop_repeat
    (span,) = finished(spans)
    assert span.status.status_code.name == "UNSET" and not span.events
    assert span.attributes is not None and span.attributes["tradebus.ignored"] is True


def test_a_handler_failure_is_recorded_on_its_span_and_goes_on(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="bad price"), process({}, SIGNAL, "trading_signals"):
        raise ValueError("bad price")
    (span,) = finished(spans)
    assert span.status.status_code.name == "ERROR" and span.status.description == "ValueError: bad price"
    assert [event.name for event in span.events] == ["exception"]
    assert span.end_time is not None
    # Left as it was entered: the failed delivery's span is not current for what runs next.
    assert not trace.get_current_span().get_span_context().is_valid
