"""The Redis master SIGKILLed while orders flow: Sentinel fails over, nothing is lost, nothing filled twice.

The ``order_requests`` pool runs as users run it, its state store and result backend on Redis with Sentinel
(scripts/cluster-redis.sh, through ``TRADEBUS_REDIS_SENTINELS``), the broker the session's RabbitMQ. Every
fill waits for the replica (``WAIT``); while the new master has none (the old one is down), fills are not
acknowledged but retried, until the old master is back as a replica. The figures go to
``artifacts/reliability.json`` (docs/reliability.md).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.sentinel import ClusterRedis
from tests.support.bus import Vhost
from tests.support.faults import Pool, fill_records, measure, orders, publish_confirmed, updates_published
from tests.support.wait import wait_until
from tradebus import app
from tradebus.mastertrade import account
from tradebus.settings import Settings

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def sentinel_pool(
    cluster_redis: ClusterRedis, declared_vhost: Vhost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pool]:
    """The order_requests pool with its state on Sentinel, under a prefix of its own; this process's app
    (the account, the figures) reads the same store."""
    prefix = f"sentinel-{uuid.uuid4().hex[:6]}"
    on_sentinel = Settings.from_env(cluster_redis.exports)
    monkeypatch.setattr(
        app,
        "settings",
        app.settings.with_(redis_url=on_sentinel.redis_url, redis=on_sentinel.redis, redis_prefix=prefix),
    )
    for symbol, price in (("BTCUSDT", 45_000.0), ("ETHUSDT", 2_500.0), ("SOLUSDT", 150.0)):
        account.record_price(symbol, price)
    env = {
        "TRADEBUS_BROKER_URL": declared_vhost.url,
        "TRADEBUS_REDIS_PREFIX": prefix,
        **cluster_redis.exports,
    }
    running = Pool(declared_vhost, tmp_path, env)
    yield running
    running.stop()


def test_orders_flowing_while_the_redis_master_is_killed_are_each_filled_exactly_once(
    cluster_redis: ClusterRedis, sentinel_pool: Pool
) -> None:
    pool = sentinel_pool
    tag, count, late = uuid.uuid4().hex[:6], 120, 12
    batch = orders(count, tag)
    pool.start()
    confirmed: list[int] = []
    publisher = threading.Thread(
        target=lambda: confirmed.append(publish_confirmed(pool.vhost, batch[: count - late], 0.02))
    )
    publisher.start()
    # Mid-stream: some orders filled, more on their way.
    assert wait_until(lambda: len(fill_records(tag)) >= 30, timeout=60), pool.log()[-3000:]
    master_before = cluster_redis.master()
    started = time.monotonic()
    killed = cluster_redis.run("kill-master")  # returns once the sentinels agree on a new master
    failover_seconds = time.monotonic() - started
    master_after = cluster_redis.master()
    publisher.join()
    # The new master has no replica while the old one is down: these fills cannot be WAITed for, so they
    # are retried, not acknowledged (the positive control that WAIT is in force).
    confirmed.append(publish_confirmed(pool.vhost, batch[count - late :]))
    assert wait_until(lambda: "NotReplicated" in pool.log(), timeout=30), pool.log()[-3000:]
    assert len(fill_records(tag)) < count or updates_published(tag) < count
    cluster_redis.run("start")  # the old master comes back as the new master's replica
    resumed = time.monotonic()
    status = cluster_redis.run("status").stdout  # everything up again (exit 0), the old master a replica
    assert f"node {master_before.rsplit(':', 1)[1]}: up" in status and "slave" in status, status
    assert wait_until(
        lambda: len(fill_records(tag)) >= count and updates_published(tag) >= count, timeout=90
    ), pool.log()[-3000:]
    figures = measure("redis master killed (sentinel)", pool.vhost, tag, count, sum(confirmed))
    figures.notes |= {
        "master_before": master_before,
        "master_after": master_after,
        "failover_seconds": round(failover_seconds, 1),
        "all_filled_seconds_after_replica_back": round(time.monotonic() - resumed, 1),
        "not_replicated_retries": pool.log().count("NotReplicated"),
        "kill_master": killed.stderr.strip().splitlines(),
    }
    figures.save()
    assert master_after != master_before
    assert figures.confirmed == count
    assert figures.filled == count
    assert figures.bookings == count and figures.double_fills == 0
    assert figures.notes["position"] == pytest.approx(0.01 * count)
    assert figures.notes["orders_with_an_update"] == count
    assert figures.dead_lettered == {}
