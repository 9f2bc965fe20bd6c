"""Letrade's asyncio ``MessageBus`` (tradebus/letrade/aio.py) on the real broker: the seed's own examples,
its wildcard patterns, request/response, retries and dead letters, a slow handler, the health check and a
reconnection after the broker closed the connection."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from routing import letrade
from tests.fixtures.letrade import LetradePools
from tests.live.test_letrade_live import take_all, text
from tests.support.bus import Vhost, admin
from tests.support.letrade_samples import PAYLOADS
from tests.support.wait import wait_until
from tradebus.errors import PublishFailed, RequestTimeout
from tradebus.headers import ORIGINAL_ROUTING_KEY, REASON, RETRIES
from tradebus.letrade import MessageBus
from tradebus.letrade.bus import LetradeBus
from tradebus.letrade.confirms import RECONNECT_WAIT
from tradebus.letrade.messages import ErrorMessage, build
from tradebus.retries import RetryPolicy

pytestmark = pytest.mark.broker
#: Retries after 0.05, 0.1 and 0.2 s: the seed's shape (3 retries, x2), not its 35 s.
QUICK = RetryPolicy(max_retries=3, first_delay=0.05, multiplier=2.0)

#: The seed's Publisher and Subscriber examples (seed 003, "예제 코드"), verbatim but for the import line.
SEED_EXAMPLES = """
from tradebus.letrade import MessageBus

async def publish_trade_command():
    bus = MessageBus()
    await bus.connect()
    
    message = {
        "strategy_id": 123,
        "symbol": "BTC/USDT",
        "side": "buy",
        "amount": 0.01
    }
    
    await bus.publish(
        "letrade.commands",
        "execute_trade",
        message
    )

async def handle_trade_event(topic: str, message: dict):
    print(f"Trade executed: {message}")

async def subscribe_to_trades():
    bus = MessageBus()
    await bus.connect()
    
    await bus.subscribe(
        "events.trade_executed",
        handle_trade_event
    )
"""  # noqa: W293 - the seed's own blank lines


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` on the event loop until it is truthy or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return result


def run(coroutine: Awaitable[Any], timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))  # type: ignore[arg-type]


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MessageBus]]:
    """Every MessageBus connected during the test, for the test to close (the seed's examples never do)."""
    buses: list[MessageBus] = []
    connect = MessageBus.connect

    async def recorded(self: MessageBus) -> MessageBus:
        buses.append(self)
        return await connect(self)

    monkeypatch.setattr(MessageBus, "connect", recorded)
    yield buses


async def close_all(buses: list[MessageBus]) -> None:
    for bus in buses:
        await bus.close()


def test_publishes_made_while_the_connection_closes_are_all_published_none_waits_forever(
    letrade_vhost: Vhost, caplog: pytest.LogCaptureFixture
) -> None:
    """Publishes started while aiormq closes the connection fill its write queue (nothing writes it any
    more); those waiting for room are published again after the reconnection, like those whose confirm
    the loss rejected, and none waits forever; nor does an acknowledgement (tradebus/letrade/writes.py)."""
    inbox = letrade.STRATEGY.name
    take_all(letrade_vhost, inbox)
    confirmed: list[str] = []
    caplog.set_level(logging.INFO, logger="tradebus.letrade.confirms")

    async def scenario() -> int:
        reconnections: list[object] = []
        async with MessageBus(letrade_vhost.url, source="tests") as bus:
            bus.connection.reconnect_callbacks.add(lambda *args: reconnections.append(args))
            lost = lambda: not bus.connection.connected.is_set() or bool(reconnections)  # noqa: E731
            listed = await asyncio.to_thread(_listed_connection, letrade_vhost, bus.connection_name)
            # Its acknowledgements share the connection's write queue with the publishes: it goes on
            # delivering after the reconnection, none of them left waiting on the dead connection.
            delivered: set[str] = set()

            async def handle(topic: str, message: dict[str, Any]) -> None:  # on the loop, as fast as it comes
                delivered.add(message["error_message"])

            await bus.subscribe("events.error", handle)

            async def publish(marker: str) -> None:
                await bus.publish("letrade.events", "events.error", error_event(marker))
                confirmed.append(marker)

            publishes: list[asyncio.Task[None]] = []

            async def keep_starting(until: Callable[[], bool], then: int = 0) -> None:
                # Publishes started every few hundred microseconds, whether the last were confirmed or not
                # (as a feed does): some start in the close, when no confirm comes; ``then`` steps more.
                while not until() or (then := then - 1) >= 0:
                    assert len(publishes) < 50_000, "the close was never seen"
                    for _ in range(BURST):
                        publishes.append(asyncio.create_task(publish(f"m-{len(publishes)}")))
                    await asyncio.sleep(PACE)

            await keep_starting(lambda: len(confirmed) >= 100)
            closing = asyncio.create_task(asyncio.to_thread(_close_listed, listed))
            await keep_starting(lambda: closing.done() and lost(), then=STEPS_AFTER)
            closing.result()
            assert await eventually(lambda: reconnections), "no reconnection"
            # Each publish returns: none waits on the dead connection.
            await asyncio.wait_for(asyncio.gather(*publishes), 30)
            assert await eventually(lambda: delivered >= set(confirmed), 30), len(set(confirmed) - delivered)
            return len(reconnections)

    assert run(scenario(), 90) >= 1  # its waits: reconnection 20 s, publishes 30 s, deliveries 30 s
    kept = {json.loads(m.body)["payload"]["error_message"] for m in take_all(letrade_vhost, inbox)}
    assert kept >= set(confirmed)
    # What the test is for happened: publishes waiting on the dead connection were given up by Writes.
    ours = [r.getMessage() for r in caplog.records if r.name == "tradebus.letrade.confirms"]
    abandoned = [m for m in ours if "closed while this write waited" in m]
    assert abandoned, "Writes gave up no publish (waiting for room or for its confirm): close not exercised"


@pytest.mark.parametrize("connection", ["up", "down"])
def test_publishes_in_flight_when_the_bus_is_closed_each_end(letrade_vhost: Vhost, connection: str) -> None:
    """Closing the bus under publishes in flight ends each of them at once, confirmed or PublishFailed:
    those waiting for their confirm ("up"), and those waiting for a reconnection after the broker closed
    the connection ("down": the user's permissions on the vhost revoked first, so aio-pika cannot
    reconnect); none waits for a reconnection that will not come, none gets a CancelledError its caller
    never asked for."""
    inbox = letrade.STRATEGY.name
    take_all(letrade_vhost, inbox)

    async def scenario() -> set[type[BaseException] | None]:
        bus = await MessageBus(letrade_vhost.url, source="tests").connect()
        try:
            publish = functools.partial(bus.publish, "letrade.events", "events.error")
            if connection == "down":
                listed = await asyncio.to_thread(_listed_connection, letrade_vhost, bus.connection_name)
                await asyncio.to_thread(_permissions, letrade_vhost, granted=False)
                await asyncio.to_thread(_close_listed, listed)
                assert await eventually(lambda: not bus.connection.connected.is_set()), "never lost"
            publishes = [asyncio.create_task(publish(error_event(f"closing-{n}"))) for n in range(2000)]
            if connection == "up":
                assert await eventually(lambda: any(p.done() for p in publishes)), "no publish ended"
            else:
                await asyncio.sleep(0.5)  # they are waiting for the connection
                assert not bus.connection.connected.is_set(), "reconnected: nothing to show"
            await bus.close()
            # Well within the 15 s a publish waits for a reconnection (confirms.RECONNECT_WAIT): none does.
            _, pending = await asyncio.wait(publishes, timeout=RECONNECT_WAIT / 3)
            assert not pending, f"{len(pending)} publishes still waiting after the bus was closed"
            return {asyncio.CancelledError if p.cancelled() else _kind(p.exception()) for p in publishes}
        finally:
            try:
                await asyncio.to_thread(_permissions, letrade_vhost, granted=True)
            finally:
                await bus.close()

    outcomes = run(scenario())
    take_all(letrade_vhost, inbox)
    assert outcomes <= {None, PublishFailed}, outcomes
    assert PublishFailed in outcomes, "every publish was confirmed before the close: nothing to show"


def _kind(error: BaseException | None) -> type[BaseException] | None:
    return None if error is None else type(error)


#: The close test starts BURST publishes every PACE seconds: more than aiormq's write queue holds (10
#: frames) in the milliseconds it takes to close the connection, when no confirm comes; and goes on for
#: STEPS_AFTER steps once the client saw the loss.
BURST, PACE, STEPS_AFTER = 5, 0.0003, 20


def error_event(marker: str) -> dict[str, Any]:
    return {**PAYLOADS["error"][1], "error_type": "async_test", "error_message": marker}


def test_the_seeds_publisher_and_subscriber_examples_trade_through_the_letrade_pools(
    letrade_pools: LetradePools,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    opened: list[MessageBus],
) -> None:
    from tradebus.letrade import paper

    monkeypatch.setenv("TRADEBUS_BROKER_URL", letrade_pools.vhost.url)  # MessageBus() reads it
    examples: dict[str, Any] = {}
    exec(compile(SEED_EXAMPLES, "seed-003-examples", "exec"), examples)
    printed: list[str] = []

    async def scenario() -> None:
        try:
            # A market order fills at the last price the connector saw: the seed's candle gives one.
            async with MessageBus(source="exchange_connector") as feed:
                key, candle = PAYLOADS["market_data"]
                await feed.publish("letrade.events", key, candle)
            assert await eventually(lambda: paper.last_price("binance", "BTC/USDT")), letrade_pools.logs()
            await examples["subscribe_to_trades"]()
            await examples["publish_trade_command"]()

            def filled() -> bool:
                printed.extend(capsys.readouterr().out.splitlines())
                return any("'strategy_id': 123" in line and "'status': 'filled'" in line for line in printed)

            assert await eventually(filled, 30), (printed, letrade_pools.logs())
        finally:
            await close_all(opened)

    run(scenario())
    line = next(line for line in printed if "'status': 'filled'" in line)
    assert line.startswith("Trade executed: {")
    assert "'symbol': 'BTC/USDT'" in line and "'exchange': 'binance'" in line and "'amount': 0.01" in line


def test_every_wildcard_pattern_of_the_seed_gets_what_it_names_and_nothing_else(letrade_vhost: Vhost) -> None:
    got: dict[str, list[str]] = {"binance": [], "trades": [], "strategy": []}
    marker = uuid.uuid4().hex[:8]
    trade_event = dict(PAYLOADS["trade_executed"][1])
    command = dict(PAYLOADS["execute_trade"][1])
    kraken = {**PAYLOADS["market_data"][1], "exchange": "kraken"}

    def keep(name: str) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
        async def handler(topic: str, message: dict[str, Any]) -> None:
            got[name].append(f"{topic} {message.get('client_order_id') or message.get('exchange')}")

        return handler

    async def scenario() -> None:
        async with MessageBus(letrade_vhost.url, source="tests") as bus:
            await bus.subscribe("market_data.binance.*", keep("binance"))
            await bus.subscribe("events.trade_*", keep("trades"))
            await bus.subscribe("*.strategy_123.*", keep("strategy"))
            # What no pattern asks for goes first: once what follows it has arrived, it would have too.
            await bus.publish("letrade.events", "market_data.kraken.btcusdt", kraken)
            await bus.publish("letrade.events", "events.error", error_event(marker))
            await bus.publish("letrade.commands", "execute_trade", {**command, "strategy_id": 124})
            await bus.publish("letrade.events", "market_data.binance.btcusdt", PAYLOADS["market_data"][1])
            await bus.publish("letrade.events", "events.trade_executed", trade_event)
            await bus.publish("letrade.commands", "execute_trade", command)
            assert await eventually(lambda: len(got["strategy"]) >= 2 and got["binance"] and got["trades"])

    run(scenario())
    assert got == {
        "binance": ["market_data.binance.btcusdt binance"],
        "trades": ["events.trade_executed binance"],
        "strategy": ["events.trade_executed binance", "commands.execute_trade strategy_123_001"],
    }


def test_a_request_is_answered_by_the_capital_manager_and_one_nobody_answers_times_out(
    letrade_pools: LetradePools, letrade_vhost: Vhost
) -> None:
    _, allocation = PAYLOADS["capital_allocation_request"]

    async def scenario() -> tuple[Any, float]:
        async with MessageBus(letrade_pools.vhost.url, source="strategy_123") as bus:
            answer = await bus.request("request.capital.allocation", allocation, timeout=20)
        async with MessageBus(letrade_vhost.url, source="strategy_123") as idle:
            begun = time.monotonic()
            with pytest.raises(RequestTimeout, match=r"no response.capital.allocation .* within 0.5s"):
                await idle.request("request.capital.allocation", allocation, timeout=0.5)
        return answer, time.monotonic() - begun

    answer, waited = run(scenario())
    assert answer.route_name == "capital_allocation_response"
    assert answer.payload.result in {"approved", "reduced", "rejected"}
    assert 0.5 <= waited < 3


def test_a_failing_handler_is_retried_by_the_policy_then_dead_lettered_with_its_reason(
    letrade_vhost: Vhost,
) -> None:
    calls: dict[str, int] = {"broken": 0, "flaky": 0}
    broken, flaky = f"broken-{uuid.uuid4().hex[:6]}", f"flaky-{uuid.uuid4().hex[:6]}"

    async def handler(topic: str, message: dict[str, Any]) -> None:
        name = "broken" if message["error_message"] == broken else "flaky"
        calls[name] += 1
        if name == "broken" or calls[name] <= 2:
            raise RuntimeError(f"{name} handler")

    queue = letrade.ROUTES["error"].dead_letter_queue

    def letters() -> list[Any]:
        return [m for m in take_all(letrade_vhost, queue, keep=True) if broken in text(m.body)]

    async def scenario() -> None:
        async with MessageBus(letrade_vhost.url, source="tests", retry_policy=QUICK) as bus:
            await bus.subscribe("events.error", handler)
            await bus.publish("letrade.events", "events.error", error_event(flaky))
            await bus.publish("letrade.events", "events.error", error_event(broken))
            assert await eventually(lambda: calls["broken"] == 4 and calls["flaky"] == 3)
            assert await eventually(letters)

    run(scenario())
    (dead,) = letters()
    assert dead.headers[REASON] == "handler_error" and dead.headers[RETRIES] == 3
    assert "RuntimeError: broken handler" in dead.headers["x-tradebus-error"]
    assert dead.headers[ORIGINAL_ROUTING_KEY] == "events.error"
    assert dead.delivery_info["routing_key"] == "events.error.dead"
    # The flaky one succeeded on its second retry: handled, not dead-lettered.
    assert not [m for m in take_all(letrade_vhost, queue, keep=True) if flaky in text(m.body)]
    assert calls == {"broken": 4, "flaky": 3}


def test_the_sync_client_retries_a_failing_handler_by_the_same_policy_then_dead_letters_it(
    letrade_vhost: Vhost,
) -> None:
    calls: dict[str, int] = {"broken": 0, "flaky": 0}
    broken, flaky = f"sync-broken-{uuid.uuid4().hex[:6]}", f"sync-flaky-{uuid.uuid4().hex[:6]}"

    def handler(topic: str, message: dict[str, Any]) -> None:
        name = "broken" if message["error_message"] == broken else "flaky"
        calls[name] += 1
        if name == "broken" or calls[name] <= 2:
            raise RuntimeError(f"{name} handler")

    queue = letrade.ROUTES["error"].dead_letter_queue

    def letters() -> list[Any]:
        return [m for m in take_all(letrade_vhost, queue, keep=True) if broken in text(m.body)]

    with LetradeBus(letrade_vhost.url, source="tests", retry_policy=QUICK) as bus:
        bus.subscribe("events.error", handler)
        bus.publish("letrade.events", "events.error", error_event(flaky))
        bus.publish("letrade.events", "events.error", error_event(broken))
        deadline = time.monotonic() + 20
        while not (calls["broken"] == 4 and calls["flaky"] == 3) and time.monotonic() < deadline:
            bus.drain(0.1)
        assert calls == {"broken": 4, "flaky": 3}  # the first try and three retries; two failures, then done
        assert wait_until(letters, 10)
    (dead,) = letters()
    assert dead.headers[REASON] == "handler_error" and dead.headers[RETRIES] == 3
    assert "RuntimeError: broken handler" in dead.headers["x-tradebus-error"]
    assert dead.delivery_info["routing_key"] == "events.error.dead"


def test_a_slow_handler_sync_or_async_does_not_hold_up_another_subscription(letrade_vhost: Vhost) -> None:
    release_thread = threading.Event()
    seen: list[str] = []

    def slow_sync(topic: str, message: dict[str, Any]) -> None:
        seen.append("slow sync started")
        release_thread.wait(30)

    async def scenario() -> None:
        release_loop = asyncio.Event()

        async def slow_async(topic: str, message: dict[str, Any]) -> None:
            seen.append("slow async started")
            await release_loop.wait()

        async def fast(topic: str, message: dict[str, Any]) -> None:
            seen.append("fast")

        async with MessageBus(letrade_vhost.url, source="tests") as bus:
            await bus.subscribe("events.error", slow_sync)
            await bus.subscribe("events.error", slow_async)
            await bus.subscribe("events.trade_executed", fast)
            await bus.publish("letrade.events", "events.error", error_event("slow"))
            assert await eventually(lambda: {"slow sync started", "slow async started"} <= set(seen))
            await bus.publish("letrade.events", "events.trade_executed", PAYLOADS["trade_executed"][1])
            assert await eventually(lambda: "fast" in seen), seen
            assert not release_thread.is_set() and not release_loop.is_set()  # both still running
            release_thread.set()
            release_loop.set()

    run(scenario())


def test_a_repeated_message_is_handled_once_and_a_new_one_still_is(letrade_vhost: Vhost) -> None:
    handled: list[str] = []

    async def scenario() -> None:
        async with MessageBus(letrade_vhost.url, source="tests") as bus:
            await bus.subscribe(
                "events.error", lambda topic, message: handled.append(message["error_message"])
            )
            first = build(ErrorMessage, error_event("first"), "tests")
            await bus.send(first)
            assert await eventually(lambda: handled == ["first"])
            await bus.send(first)  # the same message id: a repeat
            await bus.publish("letrade.events", "events.error", error_event("second"))
            assert await eventually(lambda: "second" in handled)

    run(scenario())
    assert handled == ["first", "second"]


def test_health_check_is_healthy_with_the_pools_and_unhealthy_without(
    letrade_pools: LetradePools, letrade_vhost: Vhost
) -> None:
    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        async with MessageBus(letrade_pools.vhost.url) as served, MessageBus(letrade_vhost.url) as idle:
            return await served.health_check(), await idle.health_check()

    served, idle = run(scenario())
    assert served["status"] == "healthy" and isinstance(served["queue_depth"], int)
    assert idle["status"] == "unhealthy" and isinstance(idle["queue_depth"], int)
    print(f"Status: {served['status']}\nQueue depth: {served['queue_depth']}")  # the seed's own use


def _listed_connection(vhost: Vhost, name: str) -> str:
    """The management API's name of the connection named ``name`` (listed within its stats interval)."""

    def ours() -> list[str]:
        listed = admin().get(f"vhosts/{urllib.parse.quote(vhost.name, safe='')}/connections")
        return [c["name"] for c in listed if c.get("client_properties", {}).get("connection_name") == name]

    (connection,) = wait_until(ours, 20)
    return str(connection)


def _close_listed(connection: str) -> None:
    admin().request("DELETE", f"connections/{urllib.parse.quote(connection, safe='')}")


def _permissions(vhost: Vhost, *, granted: bool) -> None:
    """Grant the test's user every permission on ``vhost``, or revoke them (it cannot connect there)."""
    path = (
        f"permissions/{urllib.parse.quote(vhost.name, safe='')}/{urllib.parse.quote(_user(vhost), safe='')}"
    )
    if granted:
        admin().request("PUT", path, {"configure": ".*", "write": ".*", "read": ".*"})
    else:
        admin().request("DELETE", path)


def _user(vhost: Vhost) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(vhost.url).username or "guest")


def _close_connection(vhost: Vhost, name: str) -> None:
    _close_listed(_listed_connection(vhost, name))


def test_after_the_broker_closes_the_connection_nothing_confirmed_is_lost(letrade_vhost: Vhost) -> None:
    confirmed: list[str] = []
    delivered: set[str] = set()
    inbox = letrade.STRATEGY.name  # takes events.error; nothing consumes it in this vhost
    take_all(letrade_vhost, inbox)

    async def scenario() -> int:
        reconnections: list[object] = []
        async with MessageBus(letrade_vhost.url, source="tests") as bus:
            bus.connection.reconnect_callbacks.add(lambda *args: reconnections.append(args))
            await bus.subscribe(
                "events.error", lambda topic, message: delivered.add(message["error_message"])
            )

            async def publish(marker: str) -> None:
                await bus.publish("letrade.events", "events.error", error_event(marker))
                confirmed.append(marker)

            async def keep_publishing(prefix: str, until: Callable[[], bool]) -> None:
                n = 0
                while not until():
                    await asyncio.gather(*(publish(f"{prefix}-{n + i}") for i in range(10)))
                    n += 10

            await keep_publishing("before", lambda: len(confirmed) >= 50)
            closing = asyncio.create_task(
                asyncio.to_thread(_close_connection, letrade_vhost, bus.connection_name)
            )
            await keep_publishing("around", closing.done)
            await closing
            await keep_publishing("after", lambda: bool(reconnections) and len(confirmed) >= 200)
            assert await eventually(lambda: delivered >= set(confirmed), 30), set(confirmed) - delivered
        return len(reconnections)

    assert run(scenario()) >= 1  # the connection was closed, and reopened
    assert len(confirmed) >= 200
    kept = {text(m.body).split('"error_message":"')[1].split('"')[0] for m in take_all(letrade_vhost, inbox)}
    assert kept >= set(confirmed)


def test_with_jwt_required_a_subscriber_handles_a_tokened_event_and_dead_letters_one_without(
    letrade_vhost: Vhost,
) -> None:
    from tests.support.bus import SETTINGS
    from tradebus.settings import JWTSettings

    key = "async-client-jwt-key-" + "a" * 32
    signer = SETTINGS.with_(jwt=JWTSettings(service="strategy_901", key=key))
    checker = SETTINGS.with_(jwt=JWTSettings(trusted={"strategy_901": key}, required=True))
    handled: list[str] = []
    unsigned, signed = f"unsigned-{uuid.uuid4().hex[:6]}", f"signed-{uuid.uuid4().hex[:6]}"
    queue = letrade.ROUTES["error"].dead_letter_queue

    def letters() -> list[Any]:
        return [m for m in take_all(letrade_vhost, queue, keep=True) if unsigned in text(m.body)]

    async def scenario() -> None:
        async with (
            MessageBus(letrade_vhost.url, source="strategy_901", settings=checker) as subscriber,
            MessageBus(letrade_vhost.url, source="strategy_901", settings=signer) as tokened,
            MessageBus(letrade_vhost.url, source="strategy_901", settings=SETTINGS) as plain,
        ):
            await subscriber.subscribe("events.error", lambda _, m: handled.append(m["error_message"]))
            await plain.publish("letrade.events", "events.error", error_event(unsigned))
            await tokened.publish("letrade.events", "events.error", error_event(signed))
            assert await eventually(lambda: signed in handled)
            assert await eventually(letters)

    run(scenario())
    assert handled == [signed]
    (dead,) = letters()
    assert dead.headers[REASON] == "unsigned"


def test_a_subscription_without_a_handler_as_in_the_seeds_wildcard_examples_is_iterated(
    letrade_vhost: Vhost,
) -> None:
    async def scenario() -> tuple[str, dict[str, Any]]:
        async with MessageBus(letrade_vhost.url, source="tests") as message_bus:
            subscription = await message_bus.subscribe("market_data.binance.*")  # the seed's own line
            await message_bus.publish(
                "letrade.events", "market_data.binance.btcusdt", PAYLOADS["market_data"][1]
            )
            return await asyncio.wait_for(anext(aiter(subscription)), 20)

    topic, message = run(scenario())
    assert topic == "market_data.binance.btcusdt"
    assert (message["symbol"], message["close"]) == ("BTC/USDT", 50500.0)


def test_a_batched_feed_reaches_every_market_data_service_and_an_invalid_candle_is_dead_lettered_alone(
    letrade_pools: LetradePools,
) -> None:
    """Batches from both clients and from a plain JSON publisher (as pika sends them) reach the connector,
    the strategy and the market-data service candle by candle; the one invalid candle is dead-lettered
    alone, by each of the three, and its batch's other candles are handled."""
    import aio_pika

    from tradebus import recorder
    from tradebus.headers import QUEUE
    from tradebus.letrade import candles, feed, paper, simulator

    pair = f"F{uuid.uuid4().hex[:6].upper()}/USDT"
    word = pair.replace("/", "").lower()
    key = f"market_data.binance.{word}"
    bars = [
        c.payload.model_copy(update={"symbol": pair})
        for c in itertools.islice(simulator.candles(seed=3), 60)
        if c.payload.symbol == "BTC/USDT"
    ]
    vhost = letrade_pools.vhost
    plain_id = str(uuid.uuid4())
    plain = feed.batches(bars[15:], "exchange_connector")[0].model_dump(mode="json")
    plain["message_id"] = plain_id
    bad = plain["payload"]["candles"][2]
    bad["low"] = bad["high"] * 2  # candle 17: low above high

    async def scenario() -> None:
        async with MessageBus(vhost.url, source="exchange_connector") as bus:
            ids = await bus.publish_candles(bars[:10], batch_size=5)
            assert len(ids) == 2
            channel = await bus.connection.channel()
            events = await channel.get_exchange(letrade.EVENTS.name, ensure=False)
            await events.publish(
                aio_pika.Message(json.dumps(plain).encode(), content_type="application/json"), key
            )
            await channel.close()

    run(scenario())
    with LetradeBus(vhost.url, source="exchange_connector") as sync_bus:
        assert len(sync_bus.publish_candles(bars[10:15])) == 1

    valid = [bar for i, bar in enumerate(bars) if i != 17]

    def handled(queue: str) -> int:
        return sum(r.get("candles", 1) for r in recorder.received(queue) if r["routing_key"] == key)

    inboxes = (letrade.EXCHANGE_CONNECTOR.name, letrade.STRATEGY.name, letrade.MARKET_DATA_SERVICE.name)
    assert wait_until(lambda: all(handled(q) == len(valid) for q in inboxes)), (
        {q: handled(q) for q in inboxes},
        letrade_pools.logs(),
    )
    assert [c.close for c in candles.history(pair, "1m", 100)] == [bar.close for bar in valid]
    # The connector's price is the last close of the batch it handled last (two processes: any batch).
    assert paper.last_price("binance", pair) in {bars[i].close for i in (4, 9, 14, 19)}

    def letters() -> list[Any]:
        return [
            m
            for m in take_all(vhost, letrade.ROUTES["market_data"].dead_letter_queue, keep=True)
            if plain_id in text(m.body)
        ]

    assert wait_until(lambda: len(letters()) == 3, 20), letrade_pools.logs()
    assert {m.headers[QUEUE] for m in letters()} == set(inboxes)
    for dead in letters():
        assert dead.headers[REASON] == "schema_violation"
        assert "candle 2 of its batch" in dead.headers["x-tradebus-error"]
        assert dead.delivery_info["routing_key"] == f"{key}.dead"
        alone = json.loads(dead.body)
        assert alone["message_id"] == f"{plain_id}:2" and alone["payload"]["symbol"] == pair
