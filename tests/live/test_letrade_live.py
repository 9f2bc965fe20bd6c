"""Letrade_v1 on the real broker: its pools run as ``celery -A tradebus worker`` processes with
``TRADEBUS_TOPOLOGY=letrade``; this process talks to them through the LetradeBus client."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Producer

from routing import letrade
from tests.fixtures.flower import FlowerProcess
from tests.fixtures.letrade import LetradePools, start_letrade_pools
from tests.support.bus import LETRADE, SETTINGS, Vhost, admin, declare_letrade, make_vhost
from tests.support.letrade_samples import CONSUMERS, PAYLOADS
from tests.support.wait import wait_until
from tradebus import recorder, seen
from tradebus.errors import MessageTooLarge, RequestTimeout
from tradebus.headers import ORIGINAL_ROUTING_KEY, REASON, RETRIES
from tradebus.letrade.bus import LetradeBus
from tradebus.letrade.messages import MarketDataResponseMessage, build
from tradebus.retries import SEED_POLICY, RetryPolicy

pytestmark = pytest.mark.broker
#: A strategy id of the tests' own: the demo strategy (123) ignores its events.
TEST_STRATEGY = 900


def pair() -> str:
    """A pair no other test trades (no market price known for it)."""
    return f"T{uuid.uuid4().hex[:6].upper()}/USDT"


def collect(bus: LetradeBus, got: list[Any], done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the bus deliver to its handlers until ``done()`` or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        bus.drain(0.2)


def take_all(vhost: Vhost, queue: str, *, keep: bool = False) -> list[Any]:
    """Every message in ``queue``: acknowledged, or with ``keep`` left in place (taken unacknowledged and
    given back when the channel closes)."""
    with vhost.connection() as conn:
        channel = conn.channel()
        got = []
        while (message := channel.basic_get(queue, no_ack=not keep)) is not None:
            got.append(message)
        channel.close()
    return got


def text(body: str | bytes) -> str:
    """A delivery's body as text."""
    return body.decode(errors="replace") if isinstance(body, bytes) else body


def trade(symbol: str, client_order_id: str, **changes: Any) -> dict[str, Any]:
    """The seed's execute_trade payload for the tests' strategy."""
    base = PAYLOADS["execute_trade"][1]
    return {
        **base,
        "strategy_id": TEST_STRATEGY,
        "symbol": symbol,
        "client_order_id": client_order_id,
        **changes,
    }


# --- the topology alone: no consumer ------------------------------------------------------------------


def test_topology_declare_with_the_letrade_profile_creates_its_exchanges_and_queues(broker: Vhost) -> None:
    vhost = make_vhost(f"{broker.name}-letrade-cli")
    try:
        env = {**os.environ, "TRADEBUS_BROKER_URL": vhost.url}
        env.pop("TRADEBUS_TOPOLOGY", None)
        argv = [sys.executable, "-m", "tradebus.ops.cli", "--topology", "letrade", "topology", "declare"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        exchanges = {e["name"] for e in vhost.management.exchanges()}
        queues = {q["name"]: q for q in vhost.management.queues()}
        assert {e.name for e in letrade.EXCHANGES} <= exchanges
        assert not any(name.startswith("mastertrade.") for name in exchanges)
        assert set(queues) == {q.name for q in LETRADE.queues}
        assert queues["letrade.exchange_connector"]["arguments"]["x-max-priority"] == letrade.MAX_PRIORITY
    finally:
        admin().delete_vhost(vhost.name)


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_every_documented_key_is_delivered_to_its_queues_on_the_broker(
    letrade_vhost: Vhost, name: str
) -> None:
    key, payload = PAYLOADS[name]
    with LetradeBus(letrade_vhost.url, source="tests") as bus:
        message_id = bus.publish(letrade.ROUTES[name].exchange, key, payload)
    for queue in sorted(CONSUMERS[name]):
        got = take_all(letrade_vhost, queue)
        assert [m.properties.get("message_id") for m in got] == [message_id], queue
        assert got[0].delivery_info["routing_key"] == key
        assert got[0].properties.get("priority") == letrade.ROUTES[name].priority


def test_a_message_over_128_kb_is_refused_before_it_is_sent(letrade_vhost: Vhost) -> None:
    candle = PAYLOADS["market_data_response"][1]["data"][0]
    payload = {**PAYLOADS["market_data_response"][1], "data": [candle] * 1500}
    with LetradeBus(letrade_vhost.url, source="tests") as bus, pytest.raises(MessageTooLarge):
        bus.send(build(MarketDataResponseMessage, payload, "tests"))
    assert take_all(letrade_vhost, "letrade.unrouted") == []


# --- a doomed request: the capital manager's Redis is down, so it retries, then gives up ------------------


@dataclass
class Doomed:
    """An allocation request sent to a capital manager that cannot reach Redis."""

    vhost: Vhost
    message_id: str
    candle_id: str
    symbol: str
    sent: float
    pools: list[Any]


@pytest.fixture(scope="module")
def doomed(broker: Vhost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doomed]:
    """Started early in the module: its retries (5 + 10 + 20 s) run while the other tests do."""
    from workers.launch import stop_all

    vhost = make_vhost(f"{broker.name}-letrade-doomed")
    declare_letrade(vhost)
    pools = start_letrade_pools(
        vhost,
        tmp_path_factory.mktemp("doomed"),
        ["letrade.capital_manager", "letrade.exchange_connector"],
        {"TRADEBUS_REDIS_URL": "redis://127.0.0.1:1/0"},  # nothing listens on port 1
    )
    with LetradeBus(vhost.url, source="tests") as bus:
        sent = time.monotonic()
        message_id = bus.publish(
            "letrade.requests", "request.capital.allocation", PAYLOADS["capital_allocation_request"][1]
        )
        # A candle on the connector's shared inbox: its retries must come back to track_price.
        symbol = pair()
        candle = {**PAYLOADS["market_data"][1], "symbol": symbol}
        candle_key = "market_data.binance." + symbol.replace("/", "").lower()
        candle_id = bus.publish("letrade.events", candle_key, candle)
    yield Doomed(vhost, message_id, candle_id, symbol, sent, pools)
    stop_all(pools)
    admin().delete_vhost(vhost.name)


def test_a_request_failing_for_a_transient_reason_is_not_dead_lettered_at_once(doomed: Doomed) -> None:
    """Starts the doomed request early; the last test of the module finds it dead-lettered."""
    (capital,) = [p for p in doomed.pools if p.name == "letrade.capital_manager"]
    first_retry = re.compile(
        rf"{re.escape(doomed.message_id)} failed \((?:\w+\.)*ConnectionError: .*\); retry 1 of "
        rf"{SEED_POLICY.max_retries} in {SEED_POLICY.delays[0]:.1f}s"
    )
    # The capital manager took the request, failed on Redis and scheduled its first retry...
    failed = wait_until(lambda: first_retry.search(capital.log.read_text(errors="replace")), timeout=30)
    assert failed, capital.log.read_text(errors="replace")[-3000:]
    # ...instead of dead-lettering it: its dead-letter queue is empty (a dead letter is confirmed before the
    # delivery is acknowledged, so it would be there by now).
    queue = letrade.ROUTES["capital_allocation_request"].dead_letter_queue
    assert take_all(doomed.vhost, queue, keep=True) == []


# --- the services at work -----------------------------------------------------------------------------


def test_allocation_request_gets_the_response_carrying_its_request_id(letrade_pools: LetradePools) -> None:
    bus = letrade_pools.bus("strategy_900")
    try:
        request_id = f"req-{uuid.uuid4().hex[:8]}"
        answer = bus.request(
            "request.capital.allocation",
            {**PAYLOADS["capital_allocation_request"][1], "strategy_id": TEST_STRATEGY},
            timeout=30,
            message_id=request_id,
        )
    finally:
        bus.close()
    response = answer.payload.model_dump()
    assert answer.routing_key == "response.capital.allocation"
    assert response["request_id"] == request_id
    assert response["result"] == "approved" and response["approved_quantity"] == 0.01
    assert set(response) >= {
        "risk_level",
        "reasons",
        "suggested_stop_loss",
        "suggested_take_profit",
        "portfolio_impact",
    }
    assert set(response["portfolio_impact"]) == {
        "position_size_percent",
        "new_portfolio_risk_percent",
        "available_capital_after",
    }


def test_execute_trade_published_as_in_the_seed_ends_in_a_trade_executed_event(
    letrade_pools: LetradePools,
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    order = f"t{uuid.uuid4().hex[:8]}"
    bus = letrade_pools.bus()
    try:
        bus.subscribe("events.trade_executed", lambda topic, payload: events.append((topic, payload)))
        # The seed's publisher example: exchange letrade.commands, key "execute_trade".
        bus.publish("letrade.commands", "execute_trade", trade(pair(), order, amount=0.002, price=50_000.0))
        collect(bus, events, lambda: any(p.get("client_order_id") == order for _, p in events))
    finally:
        bus.close()
    (topic, event), *_ = [e for e in events if e[1].get("client_order_id") == order]
    assert topic == "events.trade_executed"
    assert (event["status"], event["filled"], event["average_price"]) == ("filled", 0.002, 50_000.0)
    assert event["cost"] == pytest.approx(100.0) and event["fee"] == pytest.approx(0.1)


def test_a_trade_the_account_cannot_pay_ends_in_the_seeds_error_event(letrade_pools: LetradePools) -> None:
    errors: list[dict[str, Any]] = []
    symbol = pair()
    bus = letrade_pools.bus()
    try:
        bus.subscribe("events.error", lambda topic, payload: errors.append(payload))
        bus.publish(
            "letrade.commands", "execute_trade", trade(symbol, f"t{uuid.uuid4().hex[:8]}", amount=1_000.0)
        )
        collect(bus, errors, lambda: any(e["context"].get("symbol") == symbol for e in errors))
    finally:
        bus.close()
    (error,) = [e for e in errors if e["context"].get("symbol") == symbol]
    assert (error["error_type"], error["error_message"]) == ("trade_execution_failed", "Insufficient balance")
    assert error["context"]["strategy_id"] == TEST_STRATEGY


def test_a_resting_limit_order_is_cancelled_by_cancel_order(letrade_pools: LetradePools) -> None:
    events: list[dict[str, Any]] = []
    symbol = pair()
    bus = letrade_pools.bus()
    try:
        bus.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
        candle = {**PAYLOADS["market_data"][1], "symbol": symbol}
        bus.publish("letrade.events", "market_data.binance." + symbol.replace("/", "").lower(), candle)
        from tradebus.letrade import paper

        assert wait_until(lambda: paper.last_price("binance", symbol) is not None), letrade_pools.logs()
        order = f"t{uuid.uuid4().hex[:8]}"
        bus.publish("letrade.commands", "execute_trade", trade(symbol, order, type="limit", price=40_000.0))
        collect(bus, events, lambda: any(e["client_order_id"] == order for e in events))
        (resting,) = [e for e in events if e["client_order_id"] == order]
        assert (resting["status"], resting["filled"]) == ("open", 0.0)
        cancel = {"order_id": resting["order_id"], "symbol": symbol, "exchange": "binance"}
        bus.publish("letrade.commands", "cancel_order", cancel)
        collect(bus, events, lambda: any(e["status"] == "canceled" for e in events))
    finally:
        bus.close()
    assert [e["status"] for e in events if e["client_order_id"] == order] == ["open", "canceled"]


def test_a_resting_limit_order_fills_when_a_candle_crosses_its_price(letrade_pools: LetradePools) -> None:
    from tradebus.letrade import paper

    events: list[dict[str, Any]] = []
    symbol = pair()
    key = "market_data.binance." + symbol.replace("/", "").lower()
    candle = {**PAYLOADS["market_data"][1], "symbol": symbol}
    bus = letrade_pools.bus()
    try:
        bus.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
        bus.publish("letrade.events", key, candle)
        assert wait_until(lambda: paper.last_price("binance", symbol) is not None), letrade_pools.logs()
        order = f"t{uuid.uuid4().hex[:8]}"
        bus.publish("letrade.commands", "execute_trade", trade(symbol, order, type="limit", price=40_000.0))
        collect(bus, events, lambda: any(e["client_order_id"] == order for e in events))
        lower = {**candle, "open": 39_500.0, "high": 39_600.0, "low": 38_900.0, "close": 39_000.0}
        bus.publish("letrade.events", key, lower)
        collect(bus, events, lambda: any(e["status"] == "filled" for e in events))
    finally:
        bus.close()
    states = [(e["status"], e["filled"], e["average_price"]) for e in events if e["client_order_id"] == order]
    assert states == [("open", 0.0, None), ("filled", 0.01, 39_000.0)]
    assert paper.unannounced() == {}


def test_wildcard_subscriptions_receive_what_their_pattern_names_and_nothing_else(
    letrade_pools: LetradePools,
) -> None:
    binance: list[str] = []
    strategy: list[str] = []
    trade_events: list[tuple[str, dict[str, Any]]] = []
    mine, other = 901, 902
    symbol = pair()
    word = symbol.replace("/", "").lower()
    bus = letrade_pools.bus()
    try:
        bus.subscribe("market_data.binance.*", lambda topic, payload: binance.append(topic))
        bus.subscribe("events.trade_*", lambda topic, payload: trade_events.append((topic, payload)))
        bus.subscribe(f"*.strategy_{mine}.*", lambda topic, payload: strategy.append(topic))
        candle = {**PAYLOADS["market_data"][1], "symbol": symbol}
        bus.publish("letrade.events", f"market_data.kraken.{word}", {**candle, "exchange": "kraken"})
        bus.publish("letrade.events", f"market_data.binance.{word}", candle)
        for strategy_id in (other, mine):
            payload = trade(symbol, f"t{uuid.uuid4().hex[:8]}", strategy_id=strategy_id, amount=0.001)
            bus.publish("letrade.commands", "execute_trade", payload)
        # An error event of the same pair: events.* carries it, events.trade_* must not hand it over.
        failing = trade(symbol, f"t{uuid.uuid4().hex[:8]}", strategy_id=mine, amount=1_000.0)
        bus.publish("letrade.commands", "execute_trade", failing)
        collect(
            bus,
            strategy,
            lambda: "events.error" in strategy and len(trade_events) >= 2 and bool(binance),
        )
        bus.drain(1.0)  # anything that should not have come has had its chance
    finally:
        bus.close()
    assert [t for t in binance if word in t] == [f"market_data.binance.{word}"]
    assert sorted(strategy) == [
        "commands.execute_trade",
        "commands.execute_trade",
        "events.error",
        "events.trade_executed",
    ]
    ours = [(t, p) for t, p in trade_events if p.get("symbol") == symbol]
    assert sorted(t for t, _ in ours) == ["events.trade_executed", "events.trade_executed"]


def test_an_invalid_command_goes_to_letrade_dlq_on_its_key_plus_dead_with_the_reason(
    letrade_pools: LetradePools,
) -> None:
    marker = uuid.uuid4().hex
    oversized = json.dumps({"padding": "x" * (130 * 1024), "marker": marker})
    with letrade_pools.vhost.connection() as conn:
        producer = Producer(conn.channel())
        for body in (json.dumps({"marker": marker, "payload": {}}), oversized):
            producer.publish(
                body,
                exchange="letrade.commands",
                routing_key="commands.execute_trade",
                content_type="application/json",
            )
    queue = letrade.ROUTES["execute_trade"].dead_letter_queue
    letters: list[Any] = []
    wait_until(lambda: letters.extend(take_all(letrade_pools.vhost, queue)) or len(letters) >= 2)
    mine = [m for m in letters if marker in text(m.body)]
    assert sorted(m.headers[REASON] for m in mine) == ["message_too_large", "schema_violation"]
    for m in mine:
        assert m.delivery_info["routing_key"] == "commands.execute_trade.dead"
        assert m.delivery_info["exchange"] == "letrade.dlq"
        assert m.headers[ORIGINAL_ROUTING_KEY] == "commands.execute_trade"


def test_market_data_history_is_answered_on_request(letrade_pools: LetradePools) -> None:
    symbol = pair()
    word = symbol.replace("/", "").lower()
    bus = letrade_pools.bus()
    try:
        for minute in range(6):
            candle = {
                **PAYLOADS["market_data"][1],
                "symbol": symbol,
                "timestamp": f"2024-01-01T10:0{minute}:00.000Z",
            }
            bus.publish("letrade.events", f"market_data.binance.{word}", candle)

        def answered() -> int:
            answer = bus.request(
                "request.market_data", {"symbol": symbol, "timeframe": "1m", "limit": 100}, timeout=10
            )
            return len(answer.payload.data)  # type: ignore[attr-defined]

        assert wait_until(lambda: answered() == 6, timeout=30)
        answer = bus.request(
            "request.market_data", {"symbol": symbol, "timeframe": "5m", "limit": 100}, timeout=10
        )
    finally:
        bus.close()
    assert [c.volume for c in answer.payload.data] == [1234.56 * 5, 1234.56]  # type: ignore[attr-defined]


def test_health_check_reports_status_and_queue_depth(letrade_pools: LetradePools) -> None:
    bus = letrade_pools.bus()
    try:
        health = bus.health_check()
    finally:
        bus.close()
    assert health["status"] == "healthy"
    assert isinstance(health["queue_depth"], int)
    env = {**os.environ, "TRADEBUS_BROKER_URL": letrade_pools.vhost.url}
    argv = [sys.executable, "-m", "tradebus.ops.cli", "--topology", "letrade", "health"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status: healthy" in done.stdout and "queue depth:" in done.stdout


def test_a_trade_event_delivered_twice_moves_the_strategys_position_once(letrade_pools: LetradePools) -> None:
    from tradebus.letrade import strategy as state

    symbol = pair()
    event = {**PAYLOADS["trade_executed"][1], "strategy_id": state.STRATEGY_ID, "symbol": symbol}
    event["order_id"] = f"o{uuid.uuid4().hex[:8]}"
    bus = letrade_pools.bus()
    try:
        dropped_before = recorder.metrics().get("repeats_dropped:letrade.strategy", 0)
        message = bus.message("events.trade_executed", event)
        bus.send(message)
        bus.send(message)  # at least once: the connector repeats an event when its command comes back
        # A publisher that does not derive its ids (tradebus/outcomes.py) repeats it under a new one.
        renamed = message.model_copy(update={"message_id": str(uuid.uuid4())})
        bus.send(renamed)
        # Two events of another strategy after them. The strategy pool holds at most two unacknowledged
        # deliveries (2 processes, prefetch 1) and acknowledges each once handled: by the time both later
        # events have arrived at its stage, both copies have been handled.
        others = []
        for _ in range(2):
            other = {**event, "strategy_id": TEST_STRATEGY, "order_id": f"o{uuid.uuid4().hex[:8]}"}
            others.append(bus.message("events.trade_executed", other))
            bus.send(others[-1])

        def handled(message_id: str) -> int:
            return sum(1 for e in recorder.received("letrade.strategy") if e["id"] == message_id)

        assert wait_until(lambda: all(handled(o.message_id) for o in others)), letrade_pools.logs()
        # Each copy under the first id was handled or dropped as a repeat (tradebus/seen.py; two copies
        # handled at the same moment both run); the renamed copy was handled: the booking is what keeps
        # the position right.
        dropped = recorder.metrics().get("repeats_dropped:letrade.strategy", 0) - dropped_before
        assert handled(message.message_id) + dropped == 2
        assert handled(renamed.message_id) == 1
    finally:
        bus.close()
    assert state.holding(symbol) == pytest.approx(0.01)


def test_a_command_and_a_request_sent_again_under_their_ids_are_handled_once(
    letrade_pools: LetradePools,
) -> None:
    """The connector and the capital manager check for a repeat in the Redis round trip that reads their
    state (``handler_checks_repeats``): a copy of a handled message is still dropped, and a copy that
    overtook the first's note is answered from the order's record, never filled twice."""
    metric = recorder.metrics
    events: list[dict[str, Any]] = []
    symbol, order = pair(), f"t{uuid.uuid4().hex[:8]}"
    bus = letrade_pools.bus("strategy_900")
    try:
        bus.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
        before = metric()
        command = bus.message("commands.execute_trade", trade(symbol, order, amount=0.002, price=50_000.0))
        bus.send(command)
        collect(bus, events, lambda: any(e.get("client_order_id") == order for e in events))
        assert wait_until(lambda: seen.handled("letrade.exchange_connector", command.message_id))
        bus.send(command)  # the same message again, once the connector noted the first as handled

        def repeats(name: str) -> int:
            return metric().get(name, 0) - before.get(name, 0)

        assert wait_until(lambda: repeats("repeats_dropped:letrade.exchange_connector") == 1)
        assert repeats("duplicate_deliveries") == 0, letrade_pools.logs()
        request = bus.message(
            "request.capital.allocation",
            {**PAYLOADS["capital_allocation_request"][1], "strategy_id": TEST_STRATEGY},
        )
        answered_before = metric().get("repeats_dropped:letrade.capital_manager", 0)
        bus.send(request)
        assert wait_until(
            lambda: any(e["id"] == request.message_id for e in recorder.received("letrade.capital_manager"))
        )
        assert wait_until(lambda: seen.handled("letrade.capital_manager", request.message_id))
        bus.send(request)
        assert wait_until(
            lambda: metric().get("repeats_dropped:letrade.capital_manager", 0) == answered_before + 1
        ), letrade_pools.logs()
    finally:
        bus.close()
    fills = [e for e in events if e.get("client_order_id") == order]
    assert {e["order_id"] for e in fills} == {f"paper-{order}"} and fills[0]["filled"] == 0.002


def test_flower_shows_the_letrade_pools_and_their_tasks(
    letrade_pools: LetradePools, start_flower: Callable[..., FlowerProcess]
) -> None:
    from tests.live.test_flower import PASSWORD, USER, get

    flower = start_flower(
        {
            "TRADEBUS_TOPOLOGY": "letrade",
            "TRADEBUS_BROKER_URL": letrade_pools.vhost.url,
            "TRADEBUS_FLOWER_USER": USER,
            "TRADEBUS_FLOWER_PASSWORD": PASSWORD,
        }
    )

    def workers() -> dict[str, Any]:
        status, body = get(f"{flower.url}/api/workers?refresh=1", (USER, PASSWORD))
        found = json.loads(body) if status == 200 else {}
        return found if len(found) >= len(LETRADE.worker_queues) else {}

    found = wait_until(workers, timeout=60)
    assert {name.split("-")[0] for name in found} == {q.name for q in LETRADE.worker_queues}, flower.output()
    registered = {task for info in found.values() for task in info.get("registered", [])}
    assert {
        "tradebus.letrade_capital_manager.allocate",
        "tradebus.letrade_exchange_connector.execute_trade",
    } <= registered


@pytest.fixture
def idle_letrade(broker: Vhost) -> Iterator[Vhost]:
    """A vhost of one test's own with Letrade's topology and no service running."""
    vhost = make_vhost(f"{broker.name}-letrade-{uuid.uuid4().hex[:6]}")
    declare_letrade(vhost)
    yield vhost
    admin().delete_vhost(vhost.name)


def test_health_check_without_services_is_unhealthy_and_counts_what_waits(idle_letrade: Vhost) -> None:
    with LetradeBus(idle_letrade.url, source="tests") as bus:
        for n in range(3):
            bus.publish("letrade.commands", "execute_trade", trade(pair(), f"idle{n}"))
        health = bus.health_check()
    assert (health["status"], health["queue_depth"]) == ("unhealthy", 3)
    env = {**os.environ, "TRADEBUS_BROKER_URL": idle_letrade.url}
    argv = [sys.executable, "-m", "tradebus.ops.cli", "--topology", "letrade", "health", "--json"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 6, done.stdout + done.stderr
    assert json.loads(done.stdout)["queue_depth"] == 3


def test_a_request_nobody_answers_times_out_with_a_clear_error(idle_letrade: Vhost) -> None:
    with LetradeBus(idle_letrade.url, source="tests") as bus:
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match=r"no response\.capital\.allocation .* within 1s"):
            bus.request("request.capital.allocation", PAYLOADS["capital_allocation_request"][1], timeout=1)
    assert 1.0 <= time.monotonic() - started < 10


def test_with_signing_required_a_signed_client_command_executes_and_an_unsigned_one_is_dead_lettered(
    idle_letrade: Vhost, tmp_path: Path
) -> None:
    from tradebus.application import create_app
    from tradebus.settings import SigningSettings
    from workers.launch import stop_all

    client_key, connector_key = "c" * 40, "x" * 40
    pools = start_letrade_pools(
        idle_letrade,
        tmp_path,
        ["letrade.exchange_connector"],
        {
            "TRADEBUS_SIGNING_SERVICE": "exchange_connector",
            "TRADEBUS_SIGNING_KEY": connector_key,
            "TRADEBUS_SIGNING_TRUSTED_KEYS": f"strategy_900:{client_key}",
            "TRADEBUS_SIGNING_REQUIRED": "1",
        },
    )
    events: list[dict[str, Any]] = []
    signed, unsigned = f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    # The client's app signs with its key; a second client's app, with no key, does not sign.
    plain = SETTINGS.with_(broker_url=idle_letrade.url)
    keyed = plain.with_(signing=SigningSettings(service="strategy_900", key=client_key))
    signing_app, plain_app = create_app(LETRADE, keyed), create_app(LETRADE, plain)
    try:
        with LetradeBus(idle_letrade.url, source="strategy_900", app=signing_app) as bus:
            bus.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
            bus.publish("letrade.commands", "execute_trade", trade(pair(), signed, amount=0.001))
            unsigned_bus = LetradeBus(idle_letrade.url, source="strategy_900", app=plain_app)
            unsigned_bus.publish("letrade.commands", "execute_trade", trade(pair(), unsigned, amount=0.001))
            collect(bus, events, lambda: bool(events))
            bus.drain(1.0)
        dlq = letrade.ROUTES["execute_trade"].dead_letter_queue
        letters = wait_until(lambda: take_all(idle_letrade, dlq))
    finally:
        stop_all(pools)
        signing_app.close()
        plain_app.close()
    assert [e["client_order_id"] for e in events] == [signed]
    assert [json.loads(m.body)["payload"]["client_order_id"] for m in letters] == [unsigned]
    assert letters[0].headers[REASON] == "unsigned"


# --- priority under a backlog ------------------------------------------------------------------------


def test_a_trade_command_overtakes_the_market_data_queued_before_it(
    letrade_vhost: Vhost, tmp_path: Path
) -> None:
    from workers.launch import stop_all

    backlog = 3_000
    queue = "letrade.exchange_connector"
    symbol = pair()
    word = symbol.replace("/", "").lower()
    take_all(letrade_vhost, "letrade.exchange_connector")
    with LetradeBus(letrade_vhost.url, source="tests") as bus:
        candle = {**PAYLOADS["market_data"][1], "symbol": symbol}
        message = bus.message(f"market_data.binance.{word}", candle)
        for _ in range(backlog):
            bus.send(message)
        order = f"t{uuid.uuid4().hex[:8]}"
        command_id = bus.publish("letrade.commands", "execute_trade", trade(symbol, order, amount=0.001))
        events: list[dict[str, Any]] = []
        bus.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
        # The connector records every delivery (right before its stage runs) under a prefix of its own.
        prefix = f"{SETTINGS.redis_prefix}-priority-{uuid.uuid4().hex[:6]}"
        env = {"TRADEBUS_REDIS_PREFIX": prefix}
        pools = start_letrade_pools(letrade_vhost, tmp_path, ["letrade.exchange_connector"], env)
        try:
            collect(bus, events, lambda: bool(events), timeout=60)
            order_of_handling = wait_until(lambda: handled_before(prefix, queue, command_id), timeout=10)
        finally:
            stop_all(pools)
            client = redis.Redis.from_url(SETTINGS.redis_url)
            for key in client.scan_iter(match=f"{prefix}:*"):
                client.delete(key)
    assert [e["client_order_id"] for e in events] == [order], "the command was not executed"
    assert order_of_handling, "the connector never recorded the command"
    # Without priority the command would come after all 3,000 candles. With it, only what the pool's two
    # processes were handling as it started can come first (a busy machine may let one run a few more).
    (before,) = order_of_handling
    assert before < backlog / 10, f"{before} candles were handled before the command"


def handled_before(prefix: str, queue: str, message_id: str) -> tuple[int] | None:
    """How many deliveries the stage of ``queue`` took before ``message_id`` (None: not recorded yet).

    The recorder keeps the last deliveries newest first and counts them all; both are read at once, so the
    deliveries older than ``message_id`` are the count less its place in the list.
    """
    pipe = redis.Redis.from_url(SETTINGS.redis_url).pipeline(transaction=True)
    pipe.lrange(f"{prefix}:received:{queue}", 0, -1)
    pipe.hget(f"{prefix}:counts", queue)
    entries, total = pipe.execute()
    ids = [json.loads(e)["id"] for e in entries]
    if message_id not in ids:
        return None
    return (int(total) - ids.index(message_id) - 1,)


# --- the demo ---------------------------------------------------------------------------------------


def test_letrade_demo_trades_through_the_seeds_flow(broker: Vhost) -> None:
    vhost = make_vhost(f"{broker.name}-letrade-demo")
    try:
        env = {**os.environ, "TRADEBUS_BROKER_URL": vhost.url}
        argv = [
            sys.executable,
            "-m",
            "tradebus.ops.cli",
            "--topology",
            "letrade",
            "demo",
            "--duration",
            "8",
            "--json",
        ]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=400)
    finally:
        admin().delete_vhost(vhost.name)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trades_executed"] > 0 and result["dead_letters"] == 0
    assert result["approved"] >= result["trades_executed"]
    assert result["history_candles"] > 0
    assert result["health"]["status"] == "healthy"


def test_letrade_demo_runs_in_one_process_without_a_broker() -> None:
    argv = [
        sys.executable,
        "-m",
        "tradebus.ops.cli",
        "--topology",
        "letrade",
        "demo",
        "--broker",
        "memory://",
    ]
    done = subprocess.run([*argv, "--duration", "5", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["broker"], result["dead_letters"]) == ("memory", 0)
    assert result["trades_executed"] > 0


# --- last: the doomed request, retried 3 times after 5, 10 and 20 s, then dead-lettered ---------------


def test_the_request_is_dead_lettered_on_its_key_plus_dead_after_the_seeds_three_retries_and_replayed(
    doomed: Doomed, tmp_path: Path
) -> None:
    from tradebus.letrade import paper
    from workers.launch import stop_all

    requests_dlq = letrade.ROUTES["capital_allocation_request"].dead_letter_queue
    budget = sum(SEED_POLICY.delays) + 60
    letters = wait_until(lambda: take_all(doomed.vhost, requests_dlq, keep=True), timeout=budget)
    elapsed = time.monotonic() - doomed.sent
    assert letters, "\n".join(p.log.read_text(errors="replace")[-3000:] for p in doomed.pools)
    (letter,) = letters
    assert letter.delivery_info["routing_key"] == "request.capital.allocation.dead"
    assert letter.headers[REASON] == "max_retries"
    assert letter.headers[RETRIES] == SEED_POLICY.max_retries
    assert json.loads(letter.body)["message_id"] == doomed.message_id
    assert elapsed >= sum(SEED_POLICY.delays)
    # The candle's retries went back to the connector's price stage, not to another stage of its inbox.
    candles_dlq = letrade.ROUTES["market_data"].dead_letter_queue
    candles = wait_until(lambda: take_all(doomed.vhost, candles_dlq, keep=True), timeout=30)
    (candle,) = [m for m in candles if json.loads(m.body)["message_id"] == doomed.candle_id]
    assert candle.delivery_info["routing_key"].endswith(".dead")
    assert (candle.headers[REASON], candle.headers[RETRIES]) == ("max_retries", SEED_POLICY.max_retries)

    # Redis is back: `tradebus dlq replay` sends both again, and this time they are served.
    stop_all(doomed.pools)
    pools = start_letrade_pools(
        doomed.vhost, tmp_path, ["letrade.capital_manager", "letrade.exchange_connector"]
    )
    answers: list[dict[str, Any]] = []
    env = {**os.environ, "TRADEBUS_BROKER_URL": doomed.vhost.url}
    try:
        with LetradeBus(doomed.vhost.url, source="tests") as bus:
            bus.subscribe("response.capital.allocation", lambda topic, payload: answers.append(payload))
            for family in ("request.capital.allocation", "market_data"):
                argv = [
                    sys.executable,
                    "-m",
                    "tradebus.ops.cli",
                    "--topology",
                    "letrade",
                    "dlq",
                    "replay",
                    family,
                ]
                done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
                assert done.returncode == 0 and "replayed" in done.stdout, done.stdout + done.stderr
            collect(bus, answers, lambda: bool(answers))
        assert wait_until(lambda: paper.last_price("binance", doomed.symbol) is not None)
    finally:
        stop_all(pools)
    assert [a["request_id"] for a in answers] == [doomed.message_id]
    assert (
        take_all(doomed.vhost, requests_dlq, keep=True) == []
        and take_all(doomed.vhost, candles_dlq, keep=True) == []
    )


def test_a_subscriber_whose_handler_raises_dead_letters_like_a_stage_with_its_time_and_retries(
    letrade_vhost: Vhost,
) -> None:
    """The client dead-letters through the core: the same headers as a stage's, so `dlq list` shows an age."""
    from tradebus.headers import DEAD_LETTERED_AT
    from tradebus.ops.report import dead_letter_report

    def fail(topic: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("the handler broke")

    marker = f"handler-{uuid.uuid4().hex[:8]}"
    queue = letrade.ROUTES["error"].dead_letter_queue
    # The seed's policy in shape (3 retries, x2), in a fraction of its 35 s.
    quick = RetryPolicy(max_retries=3, first_delay=0.05, multiplier=2.0)
    with LetradeBus(letrade_vhost.url, source="tests", retry_policy=quick) as bus:
        bus.subscribe("events.error", fail)
        error = {**PAYLOADS["error"][1], "error_message": marker}
        bus.publish("letrade.events", "events.error", error)
        deadline = time.monotonic() + 30
        letters: list[Any] = []
        while not any(marker in text(m.body) for m in letters) and time.monotonic() < deadline:
            bus.drain(0.2)
            letters = take_all(letrade_vhost, queue, keep=True)
        (letter,) = [m for m in letters if marker in text(m.body)]
        assert letter.headers[REASON] == "handler_error"
        assert "RuntimeError: the handler broke" in letter.headers["x-tradebus-error"]
        assert letter.headers[DEAD_LETTERED_AT] and letter.headers[RETRIES] == 3
        with letrade_vhost.connection() as conn:
            report = dead_letter_report(bus.app, conn, [queue], limit=100, show_empty=True)
    row = next(line for line in report.splitlines() if line.startswith("handler_error"))
    columns = row.split()
    assert columns[4] == "3" and columns[5] != "?", report  # retries, then the age


def test_the_strategy_keeps_a_batch_of_closes_as_it_would_candle_by_candle() -> None:
    """``add_closes`` (one round trip per batch) gives each candle the window ``add_close`` gives it."""
    import random

    from tradebus.letrade import strategy

    rng = random.Random(3)
    points = [(60.0 * i, rng.uniform(1, 2)) for i in range(40)] + [(600.0, 5.0), (2400.0, 1.5)]  # late, again
    one, many = (f"T{uuid.uuid4().hex[:6].upper()}/USDT" for _ in range(2))
    windows = [strategy.add_close(one, at, close) for at, close in points]
    batched = [
        w for start in range(0, len(points), 7) for w in strategy.add_closes(many, points[start : start + 7])
    ]
    assert batched == windows
    assert strategy.add_close(one, 9e9, 1.0) == strategy.add_close(many, 9e9, 1.0)  # the same set kept
