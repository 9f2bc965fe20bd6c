"""The fan-out's single-tick figure: consumption from a backlog, a tradebus stage pair against raw Kombu.

One synchronous publisher with confirms offers about 1,600 ticks/s, so a flood from it cannot show a stage
faster than that. Here ``plan.fanout_ticks`` single ``Ticker`` messages are published unconfirmed as fast as
one channel goes, while the consumers run; once the publisher is done, the rate at which the backlog drains
is what the consumer sustains. First the baseline, a raw Kombu consumer (one process: pydantic validation,
an acknowledgement per message, prefetch as ``ticker_updates``) on a queue bound like ``ticker_updates``;
then both stages of ``ticker.*`` at their pool profiles (the slower is the fan-out's rate).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection, Exchange, Queue

from tradebus.mastertrade.messages import Ticker
from tradebus.ops.benchkit import recorded_count, stage_count

#: The baseline's queue, bound to ``ticker.*`` on ``mastertrade.market`` during its run only.
RAW_TICKS_QUEUE = "bench.raw.ticks"
STAGES = ("ticker_updates", "executor_market_data")
#: A drain that has not moved for this long is over (the rest expired: the stage queues' TTL is 10 s).
STALL_SECONDS = 1.5


def flood(url: str, ticks: int) -> float:
    """Publish ``ticks`` single ticks on ``ticker.BTCUSDT``, unconfirmed, as fast as one channel goes."""
    body = Ticker(symbol="BTCUSDT", price=45_000.0, bid=44_999.5, ask=45_000.5).model_dump_json()
    begun = time.monotonic()
    with Connection(url) as conn:
        channel = conn.channel()
        message = channel.prepare_message(body, content_type="application/json", content_encoding="utf-8")
        for _ in range(ticks):
            channel.basic_publish(message, exchange="mastertrade.market", routing_key="ticker.BTCUSDT")
    return ticks / (time.monotonic() - begun)


def drain_rates(
    counts: dict[str, Callable[[], int]], targets: dict[str, int], timeout: float = 60.0
) -> dict[str, float]:
    """Messages/s each counter moved from now until it reaches its target (or stalls), sampled together."""
    t1 = time.monotonic()
    first = {name: count() for name, count in counts.items()}
    last, moved = dict(first), dict.fromkeys(counts, t1)
    while True:
        time.sleep(0.05)
        now = time.monotonic()
        for name, count in counts.items():
            current = count()
            if current != last[name]:
                last[name], moved[name] = current, now
        done = all(last[n] >= targets[n] or now - moved[n] > STALL_SECONDS for n in counts)
        if done or now - t1 > timeout:
            break
    return {n: (last[n] - first[n]) / max(moved[n] - t1, 1e-6) for n in counts}


def drained(count: Callable[[], int], target: int, timeout: float) -> tuple[int, float]:
    """Wait until ``count()`` reaches ``target`` or stops moving; its last value and when it last moved."""
    t1 = time.monotonic()
    last, moved = count(), t1
    while last < target and time.monotonic() - moved <= STALL_SECONDS and time.monotonic() - t1 <= timeout:
        time.sleep(0.01)
        if (current := count()) != last:
            last, moved = current, time.monotonic()
    return last, moved


def raw_kombu(bench: Any, ticks: int, prefetch: int) -> dict[str, Any]:
    """The baseline: a raw Kombu consumer drains ``ticks`` single ticks."""
    key = f"{bench.app.settings.redis_prefix}:bench:raw-ticks"
    with Connection(bench.url) as conn:
        channel = conn.default_channel
        Queue(RAW_TICKS_QUEUE, Exchange("mastertrade.market", "topic", no_declare=True), "ticker.*")(
            channel
        ).declare()
        process_index = len(bench.processes)
        bench.spawn(
            [sys.executable, "-m", "tradebus.ops.benchapp", RAW_TICKS_QUEUE, key, str(prefetch)], "raw-ticks"
        )
        bench.wait_consumers(RAW_TICKS_QUEUE)
        offered = flood(bench.url, ticks)
        rate = drain_rates({"raw": lambda: recorded_count(key)}, {"raw": ticks})["raw"]
        bench.processes.pop(process_index).terminate()
        channel.queue_delete(RAW_TICKS_QUEUE)
        for queue in STAGES:  # what reached the stages' queues meanwhile
            channel.queue_purge(queue)
    return {"ticks_per_second": round(rate), "offered_ticks_per_second": round(offered)}


def stages(bench: Any, ticks: int) -> dict[str, Any]:
    """Both stages of ``ticker.*`` (already consuming) drain ``ticks`` single ticks; the slower one's rate."""
    before = {q: stage_count(q) for q in STAGES}
    offered = flood(bench.url, ticks)
    counts: dict[str, Callable[[], int]] = {q: (lambda q=q: stage_count(q)) for q in STAGES}  # type: ignore[misc]
    rates = drain_rates(counts, {q: before[q] + ticks for q in STAGES})
    return {
        "ticks_per_second": round(min(rates.values())),
        "offered_ticks_per_second": round(offered),
        "messages_per_second": {q: round(r, 1) for q, r in rates.items()},
        "batches": _batches(),
    }


def _batches() -> dict[str, float]:
    """The stages' mean deliveries per batch so far (tradebus/batching.py's counts)."""
    from tradebus import recorder

    metrics = recorder.metrics()
    return {
        q: round(metrics.get(f"batched:{q}", 0) / metrics[f"batches:{q}"], 1)
        for q in STAGES
        if metrics.get(f"batches:{q}")
    }
