"""``tradebus bench``'s Letrade scenario: the asyncio ``MessageBus`` (tradebus/letrade/aio.py) against a
bare aio-pika publisher, in one run, on Letrade's topology in a vhost of its own.

* publishing: candles (``market_data.binance.*``, into Letrade's three priority inboxes), confirmed, the
  same number of confirms in flight for both: a bare aio-pika publisher (``json.dumps`` of the envelope,
  the same properties and headers as the client's) and ``MessageBus.publish`` (validation, encoding,
  headers, confirm), each run
  five times, alternately, the best run kept; then ``MessageBus.publish_many``, a feed's batched path;
* request/response: ``request.capital.allocation`` answered by a capital-manager pool, one at a time.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
from kombu import Connection

from routing import letrade
from tradebus import headers as h
from tradebus.application import TradebusCelery, create_app
from tradebus.codec import CONTENT_TYPE
from tradebus.letrade import MessageBus, paper, simulator
from tradebus.letrade.messages import MarketDataMessage
from tradebus.ops.benchkit import Plan, bench_vhost
from tradebus.ops.harness import percentiles
from tradebus.settings import Settings
from workers.launch import start_pool, stop_all, wait_for_consumers

T = TypeVar("T")
#: The seed's sample allocation request, strategy 123.
ALLOCATION = {"strategy_id": 123, "symbol": "BTC/USDT", "side": "buy", "quantity": 0.01, "price": 50_000.0}
#: Alternate runs of each publisher; the better of each is kept (this machine's noise is +-25%).
ROUNDS = 5
#: The inboxes market data reaches (each a priority queue).
MARKET_INBOXES = (letrade.EXCHANGE_CONNECTOR.name, letrade.MARKET_DATA_SERVICE.name, letrade.STRATEGY.name)


def letrade_async(
    app: TradebusCelery, plan: Plan, echo: Callable[[str], None], log_dir: Path
) -> dict[str, Any]:
    """Run the scenario on a Letrade vhost next to ``app``'s; returns its figures."""
    with bench_vhost(create_app(letrade.build(), app.settings), echo) as bench:
        paper.reset()
        settings = bench.settings
        env = {
            "TRADEBUS_TOPOLOGY": "letrade",
            "TRADEBUS_BROKER_URL": settings.broker_url,
            "TRADEBUS_REDIS_URL": settings.redis_url,
            "TRADEBUS_REDIS_PREFIX": settings.redis_prefix,
        }
        name = letrade.CAPITAL_MANAGER.name
        pool = start_pool(name, log_dir, ["--loglevel", "WARNING"], env)
        try:
            with Connection(settings.broker_url) as conn:
                if wait_for_consumers(conn, [name], 90.0, [pool]):
                    raise RuntimeError(f"no consumer on {name}; logs in {log_dir}")
            return asyncio.run(_measure(settings, plan, echo))
        finally:
            stop_all([pool])


async def _in_windows(items: Sequence[T], window: int, publish: Callable[[T], Awaitable[None]]) -> float:
    """Publish every item, ``window`` confirms in flight at a time; returns items per second."""
    begun = time.perf_counter()
    for start in range(0, len(items), window):
        await asyncio.gather(*(publish(item) for item in items[start : start + window]))
    return len(items) / (time.perf_counter() - begun)


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
                headers={h.PUBLISHED_AT: time.time(), h.TYPE: route.name},  # what the client's carry
                delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                priority=route.priority,
                message_id=envelope["message_id"],
            )
            await events.publish(message, routing_key=key, mandatory=False)

        async def client(document: tuple[str, dict[str, Any]]) -> None:
            key, envelope = document
            await bus.publish(letrade.EVENTS.name, key, envelope["payload"])

        rates: dict[str, float] = {"bare aio-pika": 0.0, "MessageBus.publish": 0.0}
        for _ in range(ROUNDS):
            for name, publish in (("bare aio-pika", bare), ("MessageBus.publish", client)):
                rate = await _in_windows(documents, window, publish)
                rates[name] = max(rates[name], rate)
                await purge()
        grouped = _by_key(candles)
        begun = time.perf_counter()
        for key, payloads in grouped.items():
            for start in range(0, len(payloads), window):
                await bus.publish_many(letrade.EVENTS.name, key, payloads[start : start + window])
        rates["MessageBus.publish_many"] = len(candles) / (time.perf_counter() - begun)
        await purge()
        echo(f"  letrade publishing (candles/s): { {k: round(v) for k, v in rates.items()} }")

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
        "in_flight": window,
        "request_round_trip_ms": round_trip,
    }
