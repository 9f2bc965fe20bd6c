"""Both buses in one process: each app is built from its own topology and settings, and carries a message.

The topology is a value handed to ``create_app``, not a process-wide choice: this process builds
MasterTrade's and Letrade's apps side by side, declares each topology into a vhost of its own, runs a worker
of each in this process, and sends a message through each.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from kombu.asynchronous import get_event_loop, set_event_loop

import routing
from tests.support.bus import RUN_ID, SETTINGS, Vhost, admin, make_vhost
from tests.support.letrade_samples import PAYLOADS
from tradebus.application import TradebusCelery, create_app, using
from tradebus.letrade.bus import LetradeBus
from tradebus.mastertrade.messages import Ticker
from tradebus.mastertrade.wire import publish
from tradebus.topology import check_and_declare

pytestmark = pytest.mark.broker


def _app(name: str, vhost: Vhost) -> TradebusCelery:
    prefix = f"tradebus-test-{RUN_ID}-two-{name}-{uuid.uuid4().hex[:6]}"
    return create_app(routing.build(name), SETTINGS.with_(broker_url=vhost.url, redis_prefix=prefix))


@pytest.fixture
def two_buses(broker: Vhost) -> Iterator[tuple[TradebusCelery, TradebusCelery]]:
    """A MasterTrade app and a Letrade app in this process, each declared into a vhost of its own."""
    vhosts = [make_vhost(f"tradebus-test-{RUN_ID}-{bus}-{uuid.uuid4().hex[:6]}") for bus in ("mt", "lt")]
    apps = (_app("mastertrade", vhosts[0]), _app("letrade", vhosts[1]))
    try:
        for app, vhost in zip(apps, vhosts, strict=True):
            with vhost.connection() as conn:
                check_and_declare(app.topology, conn, vhost.management)
        yield apps
    finally:
        client = redis.Redis.from_url(SETTINGS.redis_url)
        for app in apps:
            for key in client.scan_iter(match=f"{app.settings.redis_prefix}:*"):
                client.delete(key)
        for vhost in vhosts:
            admin().delete_vhost(vhost.name)


@contextmanager
def _worker(app: TradebusCelery, queues: list[str]) -> Iterator[Any]:
    """An in-process worker of ``app``; Celery's current app is given back afterwards (start_worker makes
    ``app`` the current and default app). Celery's start_worker stops every in-process worker when it ends
    (it sets the process-wide ``should_terminate``), so this test must not run before tests that use the
    session's in-process worker: in the suite's order it runs after them."""
    # Celery's Hub bootstep reuses kombu's process-wide event loop when one is set: the session's
    # in-process worker set one, and a second worker on it would share that worker's hub, whose thread
    # then reads this worker's socket (its first declare waited minutes for a reply the other thread took).
    # Each in-process worker gets a hub of its own; the session worker keeps its own reference to its hub.
    session_hub = get_event_loop()
    set_event_loop(None)
    with (
        using(app),
        start_worker(
            app,
            pool="threads",
            queues=queues,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30,
        ) as worker,
    ):
        try:
            yield worker
        finally:
            set_event_loop(session_hub)


def test_one_process_builds_both_buses_and_runs_a_message_through_each(
    two_buses: tuple[TradebusCelery, TradebusCelery],
) -> None:
    mastertrade, letrade = two_buses
    # Each app knows only its own bus: its stages, queues and exchanges.
    assert "tradebus.monitoring.on_ticker" in mastertrade.tasks
    assert "tradebus.monitoring.on_ticker" not in letrade.tasks
    assert "tradebus.letrade_exchange_connector.execute_trade" in letrade.tasks
    assert "tradebus.letrade_exchange_connector.execute_trade" not in mastertrade.tasks
    assert mastertrade.conf.broker_url != letrade.conf.broker_url
    client = redis.Redis.from_url(SETTINGS.redis_url, decode_responses=True)

    # MasterTrade: a ticker reaches the monitoring stage, which keeps its price under MasterTrade's prefix.
    symbol = f"T{uuid.uuid4().hex[:6].upper()}USDT"
    with _worker(mastertrade, ["ticker_updates"]):
        publish(Ticker(symbol=symbol, price=123.5), app=mastertrade)
        prices = f"{mastertrade.settings.redis_prefix}:monitor:prices"
        deadline = time.monotonic() + 30
        while client.hget(prices, symbol) is None and time.monotonic() < deadline:
            time.sleep(0.1)
    assert client.hget(prices, symbol) == "123.5"

    # Letrade: execute_trade, published the seed's way, ends in trade_executed, booked under Letrade's prefix.
    order = f"t{uuid.uuid4().hex[:8]}"
    events: list[dict[str, Any]] = []
    with _worker(letrade, ["letrade.exchange_connector"]), LetradeBus(source="two-buses", app=letrade) as bus:
        bus.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
        trade = {**PAYLOADS["execute_trade"][1], "client_order_id": order, "amount": 0.001, "price": 50_000.0}
        bus.publish("letrade.commands", "execute_trade", trade)
        deadline = time.monotonic() + 30
        while not any(e.get("client_order_id") == order for e in events) and time.monotonic() < deadline:
            bus.drain(0.2)
    (event,) = [e for e in events if e.get("client_order_id") == order]
    assert (event["status"], event["filled"]) == ("filled", 0.001)
    assert client.exists(f"{letrade.settings.redis_prefix}:letrade:cash")
    # Neither bus wrote under the other's prefix.
    assert not client.exists(f"{letrade.settings.redis_prefix}:monitor:prices")
    assert not list(client.scan_iter(match=f"{mastertrade.settings.redis_prefix}:letrade:*"))
