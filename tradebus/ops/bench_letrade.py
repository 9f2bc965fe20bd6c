"""``tradebus bench``'s Letrade scenario: the asyncio ``MessageBus`` (tradebus/letrade/aio.py) against a
bare aio-pika publisher, in one run, on Letrade's topology in a vhost of its own.

* publishing: candles (``market_data.binance.*``, into Letrade's three priority inboxes), confirmed, the
  same number of confirms in flight for both: a bare aio-pika publisher (``json.dumps`` of the envelope,
  the same properties and headers as the client's) and ``MessageBus.publish`` (validation, encoding,
  headers, confirm), each run five times, alternately (each first in turn), the best run kept, in
  candles/s and in this process's CPU per candle; then ``MessageBus.publish_many`` (many single messages);
* request/response: ``request.capital.allocation`` answered by a capital-manager pool, one at a time;
* the feed end to end (``letrade.candles_per_second``): batched candles (``publish_candles``) through the
  exchange-connector, strategy and market-data pools, with the CPU each spent per 10,000 candles; then
  ``execute_trade`` -> ``events.trade_executed`` at a subscriber (``letrade.command_to_event_ms``), a
  request round trip between two trades as the same moment's baseline.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
from kombu import Connection

from routing import letrade
from tradebus import headers as h
from tradebus import recorder
from tradebus.application import TradebusCelery, create_app
from tradebus.codec import CONTENT_TYPE
from tradebus.letrade import MessageBus, feed, paper, simulator
from tradebus.letrade.messages import MarketDataMessage
from tradebus.ops.benchkit import Plan, bench_vhost, pool_env, stage_count
from tradebus.ops.harness import percentiles
from tradebus.settings import Settings
from workers.launch import PoolProcess, start_pool, stop_all, wait_for_consumers

T = TypeVar("T")
#: The seed's sample allocation request, strategy 123.
ALLOCATION = {"strategy_id": 123, "symbol": "BTC/USDT", "side": "buy", "quantity": 0.01, "price": 50_000.0}
#: Alternate runs of each publisher; the better of each is kept (this machine's noise is +-25%).
ROUNDS = 5
#: The inboxes market data reaches (each a priority queue).
MARKET_INBOXES = (letrade.EXCHANGE_CONNECTOR.name, letrade.MARKET_DATA_SERVICE.name, letrade.STRATEGY.name)
#: ...and the services consuming them, whose pools the end-to-end feed runs through.
FEED_INBOXES = MARKET_INBOXES
#: Candles the end-to-end feed publishes, as a multiple of the publishers' runs.
FEED_FACTOR = 5
#: A trade command's amount in the command -> event round trips (buy and sell in turn: the account holds).
TRADE_AMOUNT = 0.0001
#: Untimed trades first: the connector's first commands pay for imports, connections and caches.
WARM_UP_TRADES = 20
#: Not the example strategy's (123): its stage leaves these trades alone.
BENCH_STRATEGY = 7
#: How long the feed may take to be handled before the figure is what was handled by then.
FEED_TIMEOUT = 120.0


def letrade_async(
    app: TradebusCelery, plan: Plan, echo: Callable[[str], None], log_dir: Path
) -> dict[str, Any]:
    """Run the scenario on a Letrade vhost next to ``app``'s; returns its figures: ``letrade_async`` (the
    client against bare aio-pika) and ``letrade`` (the feed end to end, command -> event)."""
    with bench_vhost(create_app(letrade.build(), app.settings), echo) as bench:
        paper.reset()
        settings, env = bench.settings, pool_env(bench)
        pools = [start_pool(letrade.CAPITAL_MANAGER.name, log_dir, ["--loglevel", "WARNING"], env)]
        try:
            _wait_for_pools(settings, pools, log_dir)
            client = asyncio.run(_measure(settings, plan, echo))
            # The services that consume market data start once the publishers' runs are over (they would
            # take the candles those runs count and purge).
            pools += [start_pool(q, log_dir, ["--loglevel", "WARNING"], env) for q in FEED_INBOXES]
            _wait_for_pools(settings, pools, log_dir)
            return {
                "letrade_async": client,
                "letrade": asyncio.run(_end_to_end(settings, plan, echo, pools[1:])),
            }
        finally:
            stop_all(pools)


def _wait_for_pools(settings: Settings, pools: Sequence[PoolProcess], log_dir: Path) -> None:
    with Connection(settings.broker_url) as conn:
        if missing := wait_for_consumers(conn, [p.name for p in pools], 90.0, pools):
            raise RuntimeError(f"no consumer on {', '.join(missing)}; logs in {log_dir}")


async def _in_windows(
    items: Sequence[T], window: int, publish: Callable[[T], Awaitable[None]]
) -> tuple[float, float]:
    """Publish every item, ``window`` confirms in flight at a time; returns items per second and this
    process's CPU microseconds per item (what a shared machine's load moves far less than the rate)."""
    begun, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(items), window):
        await asyncio.gather(*(publish(item) for item in items[start : start + window]))
    return len(items) / (time.perf_counter() - begun), (time.process_time() - cpu) * 1e6 / len(items)


def _by_key(candles: Iterable[MarketDataMessage]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for candle in candles:
        grouped.setdefault(candle.routing_key, []).append(candle.payload.model_dump(mode="json"))
    return grouped


async def _measure(settings: Settings, plan: Plan, echo: Callable[[str], None]) -> dict[str, Any]:
    candles = list(itertools.islice(simulator.candles(seed=7), plan.letrade_candles))
    documents = [(c.routing_key, c.model_dump(mode="json")) for c in candles]
    window = plan.letrade_in_flight
    gc.collect()
    gc.freeze()  # the data set is the harness's: no collection walks it in either publisher's time
    route = letrade.ROUTES["market_data"]
    async with MessageBus(settings=settings, source=simulator.SOURCE) as bus:
        channel = await bus.connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(letrade.EVENTS.name, ensure=False)

        async def purge() -> None:
            for inbox in MARKET_INBOXES:
                await (await channel.declare_queue(inbox, passive=True)).purge()

        async def bare(document: tuple[str, dict[str, Any]]) -> None:
            key, envelope = document
            message = aio_pika.Message(
                json.dumps(envelope).encode(),
                content_type=CONTENT_TYPE,
                content_encoding="utf-8",
                headers={h.PUBLISHED_AT: repr(time.time()), h.TYPE: route.name},  # what the client's carry
                delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                priority=route.priority,
                message_id=envelope["message_id"],
            )
            await events.publish(message, routing_key=key, mandatory=False)

        async def client(document: tuple[str, dict[str, Any]]) -> None:
            key, envelope = document
            await bus.publish(letrade.EVENTS.name, key, envelope["payload"])

        rates: dict[str, float] = {"bare aio-pika": 0.0, "MessageBus.publish": 0.0}
        cpu: dict[str, float] = {"bare aio-pika": float("inf"), "MessageBus.publish": float("inf")}
        publishers = [("bare aio-pika", bare), ("MessageBus.publish", client)]
        for round_ in range(ROUNDS):
            # Each goes first in turn: neither always runs on the queues and caches the other left.
            for name, publish in publishers if round_ % 2 == 0 else publishers[::-1]:
                rate, cpu_us = await _in_windows(documents, window, publish)
                rates[name], cpu[name] = max(rates[name], rate), min(cpu[name], cpu_us)
                await purge()
        grouped = _by_key(candles)
        begun = time.perf_counter()
        for key, payloads in grouped.items():
            for start in range(0, len(payloads), window):
                await bus.publish_many(letrade.EVENTS.name, key, payloads[start : start + window])
        rates["MessageBus.publish_many"] = len(candles) / (time.perf_counter() - begun)
        await purge()
        echo(f"  letrade publishing (candles/s): { {k: round(v) for k, v in rates.items()} }")
        echo(f"  letrade publishing (CPU us per candle, best run): { {k: round(v) for k, v in cpu.items()} }")

        await bus.request("request.capital.allocation", ALLOCATION, timeout=30)  # binds the reply queue
        trips = []
        for _ in range(plan.letrade_round_trips):
            begun = time.perf_counter()
            await bus.request("request.capital.allocation", ALLOCATION, timeout=30)
            trips.append((time.perf_counter() - begun) * 1000)
        round_trip = percentiles(trips)
        echo(f"  letrade request/response (ms): {round_trip}")
        await channel.close()
    gc.unfreeze()
    return {
        "candles_per_second": {name: round(rate, 1) for name, rate in rates.items()},
        "MessageBus / bare aio-pika": round(rates["MessageBus.publish"] / rates["bare aio-pika"], 2),
        # The same comparison in CPU per publish (bare's over the client's: above 1 when cheaper).
        "cpu_us_per_publish": {name: round(us, 1) for name, us in cpu.items()},
        "MessageBus / bare aio-pika (CPU)": round(cpu["bare aio-pika"] / cpu["MessageBus.publish"], 2),
        "in_flight": window,
        "request_round_trip_ms": round_trip,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` and its live children have used, in seconds."""
    ticks, pids = 0, [pid]
    while pids:
        current = pids.pop()
        stat = Path(f"/proc/{current}/stat")
        if stat.exists():
            fields = stat.read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            pids += [int(child) for child in children.read_text().split()]
    return ticks / os.sysconf("SC_CLK_TCK")


async def _end_to_end(
    settings: Settings, plan: Plan, echo: Callable[[str], None], pools: Sequence[PoolProcess]
) -> dict[str, Any]:
    """The seed's 10,000 candles/s: a feed publishing batched candles (``publish_candles``) until the
    connector, the strategy and the market-data service have each handled every candle; then
    ``execute_trade`` -> ``events.trade_executed`` round trips, one at a time."""
    total = plan.letrade_candles * FEED_FACTOR
    candles = [c.payload for c in itertools.islice(simulator.candles(seed=11), total)]
    before = {q: stage_count(q) for q in FEED_INBOXES}
    done: dict[str, float] = {}
    cpu_before = {p.name: cpu_seconds(p.process.pid) for p in pools}
    async with MessageBus(settings=settings, source=simulator.SOURCE) as bus:
        begun, publisher_cpu = time.perf_counter(), time.process_time()
        await bus.publish_candles(candles, batch_size=feed.DEFAULT_BATCH)
        published, publisher_cpu = time.perf_counter() - begun, time.process_time() - publisher_cpu
        deadline = begun + FEED_TIMEOUT
        while len(done) < len(FEED_INBOXES) and time.perf_counter() < deadline:
            counts = await asyncio.to_thread(recorder.counts)
            for inbox in FEED_INBOXES:
                if inbox not in done and counts.get(inbox, 0) - before[inbox] >= total:
                    done[inbox] = time.perf_counter() - begun
            await asyncio.sleep(0.01)
        handled = {q: stage_count(q) - before[q] for q in FEED_INBOXES}
        # CPU per 10,000 candles: what a quiet machine needs to keep up with the seed's rate, whatever
        # else this machine ran meanwhile (wall-clock rates on a shared machine are not).
        cpu = {p.name: (cpu_seconds(p.process.pid) - cpu_before[p.name]) * 10_000 / total for p in pools}
        cpu["publisher (MessageBus.publish_candles)"] = publisher_cpu * 10_000 / total
        echo(f"  letrade feed CPU seconds per 10,000 candles: { {k: round(v, 2) for k, v in cpu.items()} }")
        elapsed = max(done.values()) if len(done) == len(FEED_INBOXES) else time.perf_counter() - begun
        rate = min(handled.values()) / elapsed
        by_inbox = ", ".join(f"{q} {t:.2f}s" for q, t in done.items())
        echo(
            f"  letrade feed: {total} candles, {feed.DEFAULT_BATCH} per message: {rate:,.0f} candles/s end "
            f"to end (published in {published:.2f}s; handled by {by_inbox})"
        )
        trips, requests = await _command_to_event(bus, plan.letrade_round_trips)
        ratio = round(trips["p50"] / requests["p50"], 2) if requests["p50"] else None
        echo(
            f"  letrade execute_trade -> trade_executed (ms): {trips}; allocation request round trips "
            f"interleaved with them: {requests} (p50 ratio {ratio})"
        )
    return {
        "candles_per_second": round(rate, 1),
        "feed": {
            "candles": total,
            "per_message": feed.DEFAULT_BATCH,
            "complete": len(done) == len(FEED_INBOXES),
            "seconds_by_inbox": {q: round(t, 3) for q, t in done.items()},
            "published_per_second": round(total / published, 1),
            "cpu_seconds_per_10k_candles": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_seconds_per_10k_candles_total": round(sum(cpu.values()), 3),
        },
        "command_to_event_ms": trips,
        # The same moment's baseline: a request round trip (one Celery hop and back) between each trade.
        "request_round_trip_ms_interleaved": requests,
        "command_to_event / request_round_trip": ratio,
    }


async def _command_to_event(bus: MessageBus, trips: int) -> tuple[dict[str, float], dict[str, float]]:
    """``execute_trade`` published -> its ``events.trade_executed`` at a subscriber, in ms; and between
    two trades, a capital-allocation request's round trip (the machine's load at that moment)."""
    arrived: dict[str, asyncio.Future[float]] = {}

    async def on_event(topic: str, event: dict[str, Any]) -> None:
        waiting = arrived.get(str(event.get("client_order_id")))
        if waiting is not None and not waiting.done():
            waiting.set_result(time.perf_counter())

    async def on_error(topic: str, error: dict[str, Any]) -> None:
        if error.get("context", {}).get("strategy_id") == BENCH_STRATEGY:
            for waiting in arrived.values():
                if not waiting.done():
                    waiting.set_exception(RuntimeError(f"a bench trade failed: {error}"))

    await bus.subscribe("events.trade_executed", on_event)
    await bus.subscribe("events.error", on_error)
    await asyncio.to_thread(paper.reset)  # the strategy's own trades may have spent the cash...
    await asyncio.to_thread(paper.record_price, "binance", "BTC/USDT", 50_000.0)  # ...and it forgets prices
    timed: list[float] = []
    requests: list[float] = []
    run = uuid.uuid4().hex[:8]
    warm_up = min(WARM_UP_TRADES, trips)  # a quick run's few trips warm up as many
    for trip in range(warm_up + trips):
        order = f"bench_{run}_{trip}"
        arrived[order] = asyncio.get_running_loop().create_future()
        command = {
            "strategy_id": BENCH_STRATEGY,
            "symbol": "BTC/USDT",
            "side": "buy" if trip % 2 == 0 else "sell",
            "amount": TRADE_AMOUNT,
            "client_order_id": order,
        }
        begun = time.perf_counter()
        await bus.publish(letrade.COMMANDS.name, "execute_trade", command)
        try:
            at = await asyncio.wait_for(arrived[order], 30)
        except TimeoutError as exc:
            raise RuntimeError(f"no events.trade_executed for {order} in 30 s") from exc
        finally:
            arrived.pop(order)
        begun_request = time.perf_counter()
        await bus.request("request.capital.allocation", ALLOCATION, timeout=30)
        if trip >= warm_up:
            timed.append((at - begun) * 1000)
            requests.append((time.perf_counter() - begun_request) * 1000)
    return percentiles(timed), percentiles(requests)
