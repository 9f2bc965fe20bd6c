"""Horizontal replicas: two separate worker instances on one queue, as ``docker compose up --scale
worker-order-requests=2`` starts them (tests/unit/test_compose.py checks nothing in the service stops it).

Each replica is its own ``celery worker`` process with its own node name (in compose, its container's
hostname), sized down to one pool process each: what is tested is two instances sharing ``order_requests``,
with RabbitMQ handing each order to one of them and the executor's fill record keeping it filled once.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bus import Vhost
from tests.support.faults import fill_records, measure, orders, publish_confirmed, updates_published
from tests.support.wait import wait_until
from tradebus.mastertrade import account
from workers.launch import PoolProcess, kill_all, start_pool

pytestmark = [pytest.mark.broker, pytest.mark.slow]

QUEUE = "order_requests"
COUNT = 300
#: Fills after which one replica is SIGKILLed.
KILL_AFTER = 100
SUCCEEDED = re.compile(r"Task tradebus\.execution\.execute_order\[[^\]]+\] succeeded")


@pytest.fixture
def replicas(declared_vhost: Vhost, fresh_state: str, tmp_path: Path) -> Iterator[list[PoolProcess]]:
    """Two instances of the order_requests pool, each a worker process of its own."""
    for symbol, price in (("BTCUSDT", 45_000.0), ("ETHUSDT", 2_500.0), ("SOLUSDT", 150.0)):
        account.record_price(symbol, price)
    env = {"TRADEBUS_BROKER_URL": declared_vhost.url, "TRADEBUS_REDIS_PREFIX": fresh_state}
    started = [
        start_pool(QUEUE, tmp_path / f"replica-{i}", ["-c", "1", "-n", f"{QUEUE}-{i}@%h"], env=env)
        for i in (1, 2)
    ]
    try:
        with declared_vhost.connection() as conn:
            channel = conn.channel()
            deadline = time.monotonic() + 90
            while channel.queue_declare(QUEUE, passive=True)[2] < 2:
                dead = [p for p in started if p.process.poll() is not None]
                assert not dead, dead[0].log.read_text()[-3000:]
                assert time.monotonic() < deadline, "both replicas never consumed"
                time.sleep(0.2)
        yield started
    finally:
        kill_all(started)


def test_two_replicas_fill_300_orders_each_exactly_once_and_both_work(
    declared_vhost: Vhost, replicas: list[PoolProcess]
) -> None:
    """Both replicas work; one is SIGKILLed after about 100 fills: the order it held is redelivered to the
    other (the positive control of "no double fill") and every order is still filled exactly once."""
    tag = uuid.uuid4().hex[:6]
    confirmed = publish_confirmed(declared_vhost, orders(COUNT, tag))
    assert wait_until(lambda: len(fill_records(tag)) >= KILL_AFTER, timeout=120)
    kill_all(replicas[:1])
    assert wait_until(
        lambda: len(fill_records(tag)) >= COUNT and updates_published(tag) >= COUNT, timeout=120
    ), [p.log.read_text()[-2000:] for p in replicas]

    def handled() -> list[int]:
        return [len(SUCCEEDED.findall(p.log.read_text(errors="replace"))) for p in replicas]

    # The workers log each task as it succeeds; the last lines may reach the files a moment later. The
    # killed replica may have filled orders it never logged nor acknowledged (at most its pool's prefetch
    # window): each comes back to the other replica, which finds its fill and logs it, or drops it as a
    # repeat of a message already handled and does not. Fills and updates above are exact either way.
    held = 3
    assert wait_until(lambda: sum(handled()) >= COUNT - held, timeout=30), handled()
    per_replica = handled()
    figures = measure("two replicas on order_requests, one killed", declared_vhost, tag, COUNT, confirmed)
    print(f"\norders handled per replica: {per_replica}; redelivered: {figures.redelivered}")
    assert COUNT - held <= sum(per_replica) <= COUNT + held, per_replica
    assert all(n > 0 for n in per_replica), f"one replica did nothing: {per_replica}"
    # The broker redelivered what the killed replica held (the stage records it; the management API's
    # counter, refreshed every few seconds, when the stage dropped it as a repeat).
    assert figures.redelivered > 0 or wait_until(lambda: redelivered(declared_vhost) > 0, 30)
    assert figures.filled == COUNT and figures.bookings == COUNT and figures.double_fills == 0
    assert figures.notes["orders_with_an_update"] == COUNT
    assert figures.dead_lettered == {}


def redelivered(vhost: Vhost) -> int:
    """Deliveries of ``order_requests`` the broker made again, as its management API counts them."""
    stats = vhost.management.queue(QUEUE).get("message_stats") or {}
    return int(stats.get("redeliver", 0))
