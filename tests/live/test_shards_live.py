"""Sharding by symbol on the real broker: the consistent-hash plugin's shards, each run by a pool process.

The strategy's market data, split over 4 shard queues (``TRADEBUS_MARKET_DATA_SHARDS=4``), is consumed by
4 separate worker processes, one per shard (``tradebus worker strategy_market_data.<i>``), as users run
them. 20 symbols x numbered candles, published interleaved: every symbol is handled by exactly one shard,
the one tradebus computes for it (routing/consistent_hash.py, so ``tradebus route`` tells the truth), in
the order published, nothing lost, and each symbol's strategy series holds every candle. A shard
dead-letters into its own DLQ and carries its own dead-letter policy.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from kombu import Consumer, Queue
from kombu.message import Message

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
from workers.launch import kill_all, start_pool, wait_for_consumers

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

            assert wait_until(received, 90), {q: len(recorder.received(q)) for q in QUEUES}
            # Then nothing more is on its way: every shard empty, nothing unacknowledged; read again, so a
            # duplicate or a late delivery would show.
            with sharded_vhost.connection() as conn:
                channel = conn.channel()

                def depth(queue: str) -> int:
                    return int(channel.queue_declare(queue, passive=True)[1])

                def settled() -> bool:
                    live = [sharded_vhost.management.queue(q) for q in QUEUES]
                    return all(depth(q) == 0 for q in QUEUES) and not any(
                        q.get("messages_unacknowledged") for q in live
                    )

                assert wait_until(settled, 60)
                seen = received()
                assert seen is not None
                # Nothing went unrouted or dead: the header-less message too reached a shard.
                elsewhere = [q.name for q in SHARDED.unrouted_queues] + [f"dlq.{q}" for q in QUEUES]
                assert {q: depth(q) for q in elsewhere} == dict.fromkeys(elsewhere, 0)

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
            # The header-less delivery is counted on its shard (the positive control of the check that
            # counted no misplaced one: the ring is in order).
            counted = {k: v for k, v in recorder.metrics().items() if k.startswith("shard_")}
            assert counted == {f"shard_no_symbol:{QUEUES[header_bucket(None, SHARDS)]}": 1}, counted

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


def test_a_second_consumer_on_a_shard_stays_idle_until_the_first_goes(sharded_vhost: Vhost) -> None:
    """Single active consumer: a replica started by mistake on a shard gets nothing while the first
    consumer lives (it would split a symbol's ticks), and takes over when it goes (the positive control)."""
    shard = Queue(QUEUES[0], no_declare=True)
    got: dict[str, list[str]] = {"first": [], "second": []}

    def taker(name: str) -> Callable[[Message], None]:
        def take(message: Message) -> None:
            body = message.body
            got[name].append(body.decode() if isinstance(body, bytes) else body)
            message.ack()

        return take

    def publish(bodies: list[str]) -> None:
        for body in bodies:
            raw_publish(sharded_vhost, body, "", shard.name)

    with sharded_vhost.connection() as one, sharded_vhost.connection() as two:
        first = Consumer(one.channel(), [shard], on_message=taker("first"), prefetch_count=10)
        second = Consumer(two.channel(), [shard], on_message=taker("second"), prefetch_count=10)
        first.consume()
        second.consume()

        def drain(wanted: str, count: int) -> bool:
            for conn in (one, two):
                with contextlib.suppress(socket.timeout):
                    conn.drain_events(timeout=0.05)
            return len(got[wanted]) >= count

        publish([f"a{i}" for i in range(5)])
        assert wait_until(lambda: drain("first", 5), 30), got
        assert got == {"first": [f"a{i}" for i in range(5)], "second": []}
        first.cancel()
        publish([f"b{i}" for i in range(3)])
        assert wait_until(lambda: drain("second", 3), 30), got
        assert got["second"] == [f"b{i}" for i in range(3)]
        second.cancel()


def test_resharding_a_running_broker_is_a_conflict_and_a_drifted_ring_is_found(
    broker: Vhost, sharded_vhost: Vhost
) -> None:
    """``tradebus topology declare`` over a broker sharded another way exits 3 and says how to reshard;
    ``topology check`` reads the broker's ring and finds it out of the shards' order (a shard queue
    re-created), and the documented fix (delete the exchange, declare again) puts it back."""
    from click.testing import CliRunner

    from tradebus.ops.cli import main

    def cli(vhost: Vhost, shards: int, *args: str) -> tuple[int, str]:
        env = {"TRADEBUS_BROKER_URL": vhost.url, "TRADEBUS_MARKET_DATA_SHARDS": str(shards)}
        result = CliRunner().invoke(main, ["--topology", "mastertrade", "topology", *args], env=env)
        return result.exit_code, result.output

    # Off -> 4 on the session's unsharded bus (read-only check): strategy_market_data is still bound.
    code, out = cli(broker, SHARDS, "check")
    assert code == 3 and "queue strategy_market_data" in out and "Resharding" in out, out
    # 4 -> 2 and 4 -> off on the sharded bus: refused, nothing changed.
    for shards, says in ((2, "4: strategy_market_data.0"), (0, "none (unsharded)")):
        code, out = cli(sharded_vhost, shards, "declare")
        assert code == 3 and says in out and "Resharding" in out, out
    assert {b["destination"] for b in sharded_vhost.management.bindings()} >= set(QUEUES)
    # The positive control: the same count declares (its ring is checked in order at the end).
    assert cli(sharded_vhost, SHARDS, "declare")[0] == 0

    # Shard 1 deleted and re-created: the plugin hands it the last bucket.
    with sharded_vhost.connection() as conn:
        channel = conn.channel()
        channel.queue_delete(QUEUES[1])
        SHARDED.queues_by_name[QUEUES[1]](channel).declare()
        code, out = cli(sharded_vhost, SHARDS, "check")
        assert code == 3 and "bucket 1" in out and "consistent-hash ring is not in the shards' order" in out
        # The fix docs/operations.md gives: delete the exchange, declare again.
        channel.exchange_delete(SHARDED.shards[0].exchange)
        channel.close()
    assert cli(sharded_vhost, SHARDS, "declare")[0] == 0
    code, out = cli(sharded_vhost, SHARDS, "check")
    assert code == 0 and "4 buckets, bucket i is shard i" in out, out
