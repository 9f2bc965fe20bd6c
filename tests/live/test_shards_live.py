"""Sharding by symbol on the real broker: the consistent-hash plugin's shards, each run by a pool process.

The strategy's market data, split over 4 shard queues (``TRADEBUS_MARKET_DATA_SHARDS=4``), is consumed by
4 separate worker processes, one per shard (``tradebus worker strategy_market_data.<i>``), as users run
them. 20 symbols x numbered candles, published interleaved: every symbol is handled by exactly one shard,
the one tradebus computes for it (routing/consistent_hash.py, so ``tradebus route`` tells the truth), in
the order published, nothing lost, and each symbol's strategy series holds every candle. A shard
dead-letters into its own DLQ and carries its own dead-letter policy.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

import routing
from routing.consistent_hash import header_bucket
from tests.support.bus import SETTINGS, Vhost, admin, make_vhost
from tests.support.wait import dead_letters, raw_publish, wait_until
from tradebus import recorder
from tradebus.application import create_app, using
from tradebus.mastertrade import candles
from tradebus.mastertrade.samples import AT, candle
from tradebus.mastertrade.wire import encode, publish
from tradebus.topology import check_and_declare
from workers.launch import PoolProcess, start_pool, wait_for_consumers

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SHARDS = 4
SHARDED = routing.build("mastertrade", market_data_shards=SHARDS)
QUEUES = [s for s in SHARDED.shards[0].queues]
SYMBOLS = [f"S{i:02d}{uuid.uuid4().hex[:4].upper()}USDT" for i in range(20)]
TICKS = 8


@pytest.fixture
def sharded_vhost(broker: Vhost) -> Iterator[Vhost]:
    """A vhost with the sharded topology declared (its shards bound in order), deleted afterwards."""
    vhost = make_vhost(f"tradebus-test-shards-{uuid.uuid4().hex[:6]}")
    with vhost.connection() as conn:
        check_and_declare(SHARDED, conn, vhost.management)
    yield vhost
    admin().delete_vhost(vhost.name)


def test_each_symbol_reaches_one_shard_in_order_and_nothing_is_lost(
    sharded_vhost: Vhost, tmp_path: Path
) -> None:
    prefix = f"{SETTINGS.redis_prefix}-shards-{uuid.uuid4().hex[:6]}"
    env = {
        "TRADEBUS_BROKER_URL": sharded_vhost.url,
        "TRADEBUS_REDIS_PREFIX": prefix,
        "TRADEBUS_MARKET_DATA_SHARDS": str(SHARDS),
    }
    pools = [start_pool(queue, tmp_path, env=env) for queue in QUEUES]
    settings = SETTINGS.with_(broker_url=sharded_vhost.url, redis_prefix=prefix, market_data_shards=SHARDS)
    app = create_app(SHARDED, settings, main="market-data-service")
    try:
        with sharded_vhost.connection() as conn:
            assert not wait_for_consumers(conn, QUEUES, 120, pools)
        with using(app):
            for n in range(TICKS):
                for symbol in SYMBOLS:
                    message = candle(symbol).model_copy(update={"timestamp": AT + timedelta(minutes=n)})
                    publish(message, message_id=f"{symbol}-{n:03d}", app=app)
            # A plain JSON publisher sets no x-tradebus-symbol: its message reaches the shard of "no header".
            plain = candle(SYMBOLS[0]).model_copy(update={"timestamp": AT + timedelta(minutes=TICKS)})
            raw_publish(
                sharded_vhost,
                encode(plain).decode(),
                "mastertrade.market",
                plain.routing_key,
                content_type="application/json",
                message_id="plain-json",
            )
            total = len(SYMBOLS) * TICKS + 1

            def received() -> dict[str, list[dict[str, object]]] | None:
                got = {q: list(reversed(recorder.received(q))) for q in QUEUES}
                return got if sum(map(len, got.values())) >= total else None

            seen = wait_until(received, 90)
            assert seen, {q: len(recorder.received(q)) for q in QUEUES}

            shard_of: dict[str, set[str]] = {}
            order: dict[str, list[int]] = {}
            for queue, entries in seen.items():
                for e in entries:
                    if e["id"] == "plain-json":
                        assert queue == QUEUES[header_bucket(None, SHARDS)]
                        continue
                    symbol, n = str(e["id"]).rsplit("-", 1)
                    shard_of.setdefault(symbol, set()).add(queue)
                    order.setdefault(symbol, []).append(int(n))
            assert sum(map(len, seen.values())) == total
            for symbol in SYMBOLS:
                assert shard_of[symbol] == {QUEUES[header_bucket(symbol, SHARDS)]}, symbol
                assert order[symbol] == list(range(TICKS)), symbol
                # What `tradebus route` says for its keys is where the broker put them.
                assert SHARDED.route("mastertrade.market", f"market.data.{symbol}.1m") >= shard_of[symbol]
                series = candles.latest("strategy", symbol, "1m")
                expected = TICKS + (symbol == SYMBOLS[0])
                assert [c.time for c in series] == [
                    (AT + timedelta(minutes=n)).timestamp() for n in range(expected)
                ]
            assert len({q for shards in shard_of.values() for q in shards}) == SHARDS  # every shard worked

            # A shard dead-letters into its own DLQ, and the broker applies its dead-letter policy.
            shard = QUEUES[header_bucket(SYMBOLS[1], SHARDS)]
            raw_publish(
                sharded_vhost,
                "not json",
                "mastertrade.market",
                f"market.data.{SYMBOLS[1]}.1m",
                content_type="application/json",
                headers={"x-tradebus-symbol": SYMBOLS[1]},
            )
            ((_, letter),) = dead_letters(sharded_vhost, shard, 1)
            assert letter["x-tradebus-reason"] == "invalid_json"

            # The management API shows a queue's policy with its next statistics.
            def policies() -> list[str | None]:
                return [sharded_vhost.management.queue(q).get("policy") for q in QUEUES]

            wanted = [f"tradebus-dead-letter.{q}" for q in QUEUES]
            assert wait_until(lambda: policies() == wanted, 30), policies()
    finally:
        kill_all(pools)
        client = redis.Redis.from_url(SETTINGS.redis_url)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


def kill_all(pools: list[PoolProcess]) -> None:
    """SIGKILL the workers and their pool processes: the test has seen all it needs (a warm shutdown of
    each would add seconds to the suite)."""
    for pool in pools:
        if pool.process.poll() is None:
            os.killpg(pool.process.pid, signal.SIGKILL)
        pool.process.wait()
