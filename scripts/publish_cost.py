"""What ``MessageBus.publish`` costs before any I/O, against what a bare aio-pika publisher spends building
its message, in one process, without a broker.

    PYTHONPATH=. python scripts/publish_cost.py

The same 5,000 simulated candles as ``tradebus bench --scenario letrade_async``, microseconds of this
process's CPU per candle, best of 5 runs: the client's publish (validation into the envelope, encoding,
headers, the route, the AMQP properties) with its ``publish_raw`` replaced by a coroutine that returns at
once, and the bare publisher's ``json.dumps`` of the ready envelope and ``aio_pika.Message`` with the
same properties (its ``properties`` built, as ``Exchange.publish`` builds them). What each then spends
in aiormq is the same code for both. docs/performance.md ("Letrade's asyncio client") quotes it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import aio_pika

from routing import letrade
from tradebus import headers as h
from tradebus.codec import CONTENT_TYPE
from tradebus.letrade import simulator
from tradebus.letrade.aio import MessageBus
from tradebus.settings import Settings

CANDLES, RUNS = 5_000, 5


def best(run: Callable[[], None], count: int) -> float:
    """The best of ``RUNS`` runs of ``run``, in µs of CPU per item."""
    times = []
    for _ in range(RUNS):
        begun = time.process_time()
        run()
        times.append((time.process_time() - begun) * 1e6 / count)
    return min(times)


def main() -> None:
    candles = list(itertools.islice(simulator.candles(seed=7), CANDLES))
    documents = [(c.routing_key, c.model_dump(mode="json")) for c in candles]
    route = letrade.ROUTES["market_data"]
    bus = MessageBus(settings=Settings(), source=simulator.SOURCE)

    async def sent(body: bytes, properties: Mapping[str, Any]) -> None:
        return None

    bus.publish_raw = sent  # type: ignore[method-assign]

    async def client() -> None:
        for key, envelope in documents:
            await bus.publish(letrade.EVENTS.name, key, envelope["payload"])

    def bare() -> None:
        for _key, envelope in documents:
            message = aio_pika.Message(
                json.dumps(envelope).encode(),
                content_type=CONTENT_TYPE,
                content_encoding="utf-8",
                headers={h.PUBLISHED_AT: repr(time.time()), h.TYPE: route.name},
                delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                priority=route.priority,
                message_id=envelope["message_id"],
            )
            message.properties  # noqa: B018 - what Exchange.publish builds from it

    print(f"MessageBus.publish, before I/O: {best(lambda: asyncio.run(client()), CANDLES):.1f} µs a candle")
    print(f"bare aio-pika message built:    {best(bare, CANDLES):.1f} µs a candle")


if __name__ == "__main__":
    main()
