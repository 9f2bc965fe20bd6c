"""Traces on the real broker: one order's trace, signal to fill, and one Letrade command's, through to its
event, exported over OTLP/HTTP to a receiver this process runs (tests/support/otlp.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Producer

from routing.letrade import EXCHANGE_CONNECTOR
from tests.fixtures.letrade import start_letrade_pools
from tests.support.bus import RUN_ID, Vhost, admin, declare_letrade, make_vhost
from tests.support.letrade_samples import PAYLOADS
from tests.support.otlp import Receiver, Span, chain
from tests.support.wait import new_symbol, wait_until
from tradebus import publish, tracing
from tradebus.mastertrade import account
from tradebus.mastertrade.messages import Ticker, TradingSignal
from tradebus.settings import Settings, TracingSettings

pytestmark = pytest.mark.broker

#: A signal's trace: created, decided by risk, executed as an order, its fill taken by the strategy.
ORDER_PATH = [
    "create trading_signal",
    "process trading_signals",
    "process order_requests",
    "process strategy_order_updates",
]


@pytest.fixture
def otlp() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def traced(fresh_state: str, otlp: Receiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """Tracing on in this process (the session worker and every publish here), exporting to ``otlp``."""
    from tradebus import app

    settings = TracingSettings(exporter="otlp", endpoint=otlp.url, service_name="tests")
    monkeypatch.setattr(app, "settings", app.settings.with_(tracing=settings))
    yield otlp
    tracing.shutdown()


def exported(receiver: Receiver, names: list[str], root: str = "") -> list[Span] | None:
    """The spans called ``names`` in order, parent to child, once all of them have been exported."""
    tracing.flush()  # this process's spans now; worker processes export every 100 ms
    with receiver._lock:
        spans = list(receiver.spans)
    return chain(spans, names, root)


@pytest.mark.usefixtures("celery_session_worker")
def test_one_signals_trace_has_its_four_spans_in_order_parent_to_child(traced: Receiver) -> None:
    symbol = new_symbol()
    publish(Ticker(symbol=symbol, price=100.0, timestamp=datetime.now(UTC)))
    assert wait_until(lambda: account.last_price(symbol) == 100.0), "the executor never saw the price"
    publish(
        TradingSignal(
            strategy_id="traced",
            symbol=symbol,
            action="BUY",
            confidence=0.9,
            entry_price=100.0,
            position_size_pct=0.02,
            timestamp=datetime.now(UTC) - timedelta(minutes=1),
        )
    )
    spans = wait_until(lambda: exported(traced, ORDER_PATH))
    assert spans, f"no complete trace; got {[s.name for s in traced.spans]}"
    signal, risk, order, fill = spans
    assert len({s.trace_id for s in spans}) == 1
    assert signal.attributes["messaging.rabbitmq.destination.routing_key"] == f"signal.{symbol}.traced"
    assert risk.attributes["tradebus.stage"] == "tradebus.risk.evaluate_signal"
    assert order.attributes["messaging.rabbitmq.destination.routing_key"] == f"order.request.{symbol}"
    assert fill.attributes["messaging.rabbitmq.destination.routing_key"].startswith("order.update.filled.")
    # The fill reaches the alerts' and the blotter's queues too: each a child of the order, in its trace.
    siblings = wait_until(
        lambda: (
            {s.name for s in traced.trace(signal.trace_id) if s.parent_id == order.span_id}
            >= {
                "process order_updates",
                "process monitoring_order_updates",
            }
        )
    )
    assert siblings
    # The ticker was outside any trace: no span (the signal's spans, exported since, are the control).
    keys = {s.attributes.get("messaging.rabbitmq.destination.routing_key") for s in traced.spans}
    assert f"ticker.{symbol}" not in keys


@pytest.fixture(scope="module")
def traced_letrade(
    broker: Vhost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Vhost, Receiver]]:
    """Letrade's exchange connector as a worker process exporting its spans to a receiver here."""
    receiver = Receiver()
    vhost = make_vhost(f"tradebus-test-{RUN_ID}-traces-{uuid.uuid4().hex[:6]}")
    declare_letrade(vhost)
    env = {
        "TRADEBUS_TRACES": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "exchange_connector",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    log_dir: Path = tmp_path_factory.mktemp("traced-letrade")
    pools = start_letrade_pools(vhost, log_dir, [EXCHANGE_CONNECTOR.name], env)
    yield vhost, receiver
    for pool in pools:  # its spans are read already: at once, not through a shutdown of seconds
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pool.process.pid, signal.SIGKILL)
        pool.process.wait()
    admin().delete_vhost(vhost.name)
    receiver.close()


def command(order: str) -> dict[str, Any]:
    """The seed's execute_trade, filled at once (a price is given), on a pair of its own."""
    pair = f"T{uuid.uuid4().hex[:6].upper()}/USDT"
    base = PAYLOADS["execute_trade"][1]
    return {
        **base,
        "strategy_id": 900,
        "symbol": pair,
        "client_order_id": order,
        "amount": 0.002,
        "price": 50_000.0,
    }


def test_a_letrade_commands_trace_reaches_its_event_and_a_plain_publisher_can_join_it(
    traced_letrade: tuple[Vhost, Receiver], fresh_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tradebus import app
    from tradebus.letrade.bus import LetradeBus

    vhost, receiver = traced_letrade
    # This process's client traces too: it creates the command's span and joins the event's trace.
    settings = TracingSettings(exporter="otlp", endpoint=receiver.url, service_name="tests")
    monkeypatch.setattr(app, "settings", app.settings.with_(tracing=settings))
    events: list[dict[str, Any]] = []
    bus = LetradeBus(vhost.url, source="tests").connect()
    try:
        inbox = bus.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
        ours, theirs = f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
        bus.publish("letrade.commands", "execute_trade", command(ours))
        # A plain pika-style publisher: JSON and its own traceparent, which the stage joins.
        trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        envelope = {
            "message_id": str(uuid.uuid4()),
            "timestamp": datetime.now(UTC).isoformat(),
            "source": "plain",
            "payload": command(theirs),
        }
        with Connection(vhost.url) as conn:
            Producer(conn.channel()).publish(
                json.dumps(envelope),
                exchange="letrade.commands",
                routing_key="commands.execute_trade",
                content_type="application/json",
                headers={"traceparent": f"00-{trace_id}-{span_id}-01"},
            )

        def both() -> bool:
            bus.drain(0.2)
            return {ours, theirs} <= {e.get("client_order_id") for e in events}

        assert wait_until(both), f"events: {events}"
        path = ["create execute_trade", f"process {EXCHANGE_CONNECTOR.name}", f"process {inbox}"]
        spans = wait_until(lambda: exported(receiver, path))
        joined = wait_until(lambda: exported(receiver, path[1:], root=span_id))
    finally:
        bus.close()
        tracing.shutdown()
    assert spans, f"no complete trace; got {[(s.name, s.parent_id) for s in receiver.spans]}"
    assert len({s.trace_id for s in spans}) == 1
    assert [s.service for s in spans] == ["tests", "exchange_connector", "tests"]
    assert joined and {s.trace_id for s in joined} == {trace_id}


def ancestry(receiver: Receiver, name: str) -> list[Span] | None:
    """The span called ``name`` and its ancestors, root first; None until a root ends the line."""
    tracing.flush()
    with receiver._lock:
        by_id = {s.span_id: s for s in receiver.spans}
    line = [s for s in by_id.values() if s.name == name][:1]
    while line and line[0].parent_id:
        if (parent := by_id.get(line[0].parent_id)) is None:
            return None
        line.insert(0, parent)
    return line or None


def test_an_event_handled_by_the_asyncio_message_bus_is_a_child_of_the_commands_trace(
    traced_letrade: tuple[Vhost, Receiver], fresh_state: str
) -> None:
    from tradebus.letrade import MessageBus

    vhost, receiver = traced_letrade
    tracing_on = TracingSettings(exporter="otlp", endpoint=receiver.url, service_name="tests")
    settings = Settings.from_env().with_(tracing=tracing_on)
    ours = f"t{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[str, list[str]]:
        orders: list[str] = []

        async def handle(topic: str, message: dict[str, Any]) -> None:
            orders.append(message.get("client_order_id", ""))

        async with MessageBus(vhost.url, source="tests", settings=settings) as bus:
            subscription = await bus.subscribe("events.trade_executed", handle)
            await bus.publish("letrade.commands", "execute_trade", command(ours))
            deadline = time.monotonic() + 30
            while ours not in orders and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        return subscription.name, orders

    try:
        inbox, orders = asyncio.run(scenario())
        assert ours in orders, orders
        path = ["create execute_trade", f"process {EXCHANGE_CONNECTOR.name}", f"process {inbox}"]
        spans = wait_until(lambda: ancestry(receiver, path[-1]))
    finally:
        tracing.shutdown()
    assert spans and [s.name for s in spans] == path, f"got {[(s.name, s.parent_id) for s in receiver.spans]}"
    assert len({s.trace_id for s in spans}) == 1
    assert [s.service for s in spans] == ["tests", "exchange_connector", "tests"]
