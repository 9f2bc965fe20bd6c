"""Faults on the real broker: killed workers, a killed pool process, Redis down, a broker restart.

Each test runs the ``order_requests`` pool as users do (``celery -A tradebus worker -Q order_requests``)
in a vhost and Redis prefix of its own, attacks it, and checks that every order is filled exactly once.
The figures go to ``artifacts/reliability.json`` (docs/reliability.md).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Producer

from tests.support.bus import Vhost, free_port, port_open
from tests.support.faults import Pool, fill_records, measure, orders, publish_confirmed, updates_published
from tests.support.wait import wait_until
from tradebus import app, recorder, store
from tradebus.mastertrade import account
from tradebus.mastertrade.messages import Ticker

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def pool(declared_vhost: Vhost, fresh_state: str, tmp_path: Path) -> Iterator[Pool]:
    """The order_requests pool in its own vhost and Redis prefix, with prices to fill at."""
    for symbol, price in (("BTCUSDT", 45_000.0), ("ETHUSDT", 2_500.0), ("SOLUSDT", 150.0)):
        account.record_price(symbol, price)
    env = {"TRADEBUS_BROKER_URL": declared_vhost.url, "TRADEBUS_REDIS_PREFIX": fresh_state}
    running = Pool(declared_vhost, tmp_path, env)
    yield running
    running.stop()


def all_filled(tag: str, count: int, timeout: float = 120.0) -> bool:
    """Every order filled and its updates published (measure reads them next)."""
    return bool(
        wait_until(
            lambda: len(fill_records(tag)) >= count and updates_published(tag) >= count, timeout=timeout
        )
    )


def redelivered() -> int:
    """Deliveries of order_requests the broker marked redelivered, as the stage recorded them."""
    return sum(1 for e in recorder.received("order_requests") if e.get("redelivered"))


def test_orders_published_while_the_worker_is_killed_twice_are_each_filled_exactly_once(pool: Pool) -> None:
    tag, count = uuid.uuid4().hex[:6], 300
    batch = orders(count, tag)
    # A backlog before the pool starts, so the first kill finds it busy; the rest arrives during the kills.
    confirmed = [publish_confirmed(pool.vhost, batch[:100])]
    pool.start()
    publisher = threading.Thread(
        target=lambda: confirmed.append(publish_confirmed(pool.vhost, batch[100:], 0.02))
    )
    publisher.start()
    with pool.vhost.connection() as conn:
        channel = conn.channel()

        def busy(filled: int) -> bool:
            """Filling (more fills than ``filled``) with orders still waiting: its prefetch is full."""
            return (
                len(fill_records(tag)) > filled
                and channel.queue_declare("order_requests", passive=True)[1] > 0
            )

        hits = []
        for _ in range(2):
            filled, seen = len(fill_records(tag)), redelivered()
            assert wait_until(lambda f=filled: busy(f), timeout=60), (
                "the pool was idle: " + pool.log()[-3000:]
            )
            pool.kill()
            pool.start()
            # What the killed worker held unacknowledged, RabbitMQ hands to the new one, marked redelivered.
            hits.append(wait_until(lambda n=seen: redelivered() - n, timeout=60))
    publisher.join()
    assert all(hits), f"a kill hit no order in flight (redeliveries after each kill: {hits})"
    assert all_filled(tag, count), pool.log()[-3000:]
    figures = measure("worker killed twice", pool.vhost, tag, count, sum(confirmed))
    figures.notes["redelivered_after_each_kill"] = hits
    figures.save()
    assert figures.confirmed == count
    assert figures.filled == count
    assert figures.bookings == count and figures.double_fills == 0
    assert figures.notes["position"] == pytest.approx(0.01 * count)
    assert figures.notes["orders_with_an_update"] == count
    assert figures.notes["filled_update_ids_per_order"] == 1, "a republished update got an id of its own"
    assert figures.dead_lettered == {}


def test_a_pool_process_killed_mid_task_loses_nothing_and_fills_nothing_twice(pool: Pool) -> None:
    tag, count = uuid.uuid4().hex[:6], 600
    # Queued first, so the pool is busy when its processes are killed however fast it drains.
    confirmed = publish_confirmed(pool.vhost, orders(count, tag))
    pool.start()
    # Kill only once the pool is filling, and again until a kill hits a process while it runs an order
    # (Celery then logs WorkerLostError); a kill between two orders hits nothing and is tried again.
    assert wait_until(lambda: fill_records(tag), timeout=60), pool.log()[-3000:]
    killed_mid_task = False
    deadline = time.monotonic() + 60
    while not killed_mid_task and time.monotonic() < deadline and len(fill_records(tag)) < count:
        for child in pool.children():  # every process of the pool: whichever runs an order is hit
            subprocess.run(["kill", "-9", str(child)], check=False)
        killed_mid_task = bool(wait_until(lambda: "WorkerLostError" in pool.log(), timeout=1.0))
    assert all_filled(tag, count), pool.log()[-3000:]
    # The worker logs a lost task when it notices its process is gone, which on a busy machine can be
    # after the loop's 0.3 s look: a kill that hit a running order shows in the log by now.
    killed_mid_task = killed_mid_task or "WorkerLostError" in pool.log()
    figures = measure("pool process killed mid-task", pool.vhost, tag, count, confirmed)
    figures.notes["killed_mid_task"] = killed_mid_task
    figures.save()
    assert killed_mid_task, "no pool process was killed while it ran an order"
    assert figures.filled == count and figures.bookings == count and figures.double_fills == 0
    assert figures.notes["filled_update_ids_per_order"] == 1, "a republished update got an id of its own"
    assert figures.dead_lettered == {}


def test_orders_arriving_while_redis_is_down_are_retried_and_filled_once_it_is_back(
    declared_vhost: Vhost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(tmp_path), "--dbfilename", "faults.rdb"]
    url = f"redis://127.0.0.1:{port}/0"
    prefix = f"faults-{uuid.uuid4().hex[:6]}"
    # This process's app (the account below) and the pool's environment both name the new Redis.
    monkeypatch.setattr(app, "settings", app.settings.with_(redis_url=url, redis_prefix=prefix))
    store.use(redis.Redis.from_url(url, socket_connect_timeout=1))
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    running = Pool(
        declared_vhost,
        tmp_path,
        {
            "TRADEBUS_BROKER_URL": declared_vhost.url,
            "TRADEBUS_REDIS_URL": url,
            "TRADEBUS_REDIS_PREFIX": prefix,
        },
    )
    try:
        assert wait_until(lambda: port_open("127.0.0.1", port))
        # The prices the orders fill against outlive the outage (saved and loaded again, as a Redis with
        # persistence would): an order must not find the account emptier after Redis is back.
        for symbol, price in (("BTCUSDT", 45_000.0), ("ETHUSDT", 2_500.0), ("SOLUSDT", 150.0)):
            account.record_price(symbol, price)
        running.start()
        store.client().shutdown(save=True)
        server.wait(10)
        tag = uuid.uuid4().hex[:6]
        confirmed = publish_confirmed(declared_vhost, orders(3, tag))
        assert wait_until(lambda: "retry 1 of 3" in running.log(), timeout=20), running.log()[-3000:]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        assert wait_until(lambda: port_open("127.0.0.1", port))
        assert all_filled(tag, 3, timeout=40), running.log()[-3000:]
        figures = measure("redis down", declared_vhost, tag, 3, confirmed)
        figures.notes["retried"] = running.log().count("retry 1 of 3")
        figures.save()
        assert figures.filled == 3 and figures.double_fills == 0
        assert figures.dead_lettered == {}
    finally:
        running.stop()
        server.terminate()
        server.wait(10)
        store._override.clear()


def _restart_rabbitmq() -> float:
    """Stop and start the RabbitMQ application (durable queues and persistent messages are recovered)."""
    rabbitmqctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    started = time.monotonic()
    subprocess.run([rabbitmqctl, "stop_app"], check=True, capture_output=True, timeout=120)
    subprocess.run([rabbitmqctl, "start_app"], check=True, capture_output=True, timeout=120)
    subprocess.run([rabbitmqctl, "await_startup"], check=True, capture_output=True, timeout=120)
    assert wait_until(lambda: port_open("127.0.0.1", 5672) and port_open("127.0.0.1", 15672), timeout=60)
    return time.monotonic() - started


@pytest.mark.broker_restart
@pytest.mark.serial
def test_confirmed_persistent_orders_queued_across_a_broker_restart_are_all_filled(
    pool: Pool, declared_vhost: Vhost
) -> None:
    tag, count = uuid.uuid4().hex[:6], 200
    confirmed = publish_confirmed(declared_vhost, orders(count, tag))
    with declared_vhost.connection() as conn:
        conn.transport_options["confirm_publish"] = True
        producer = Producer(conn.channel())
        for _ in range(20):  # market data is transient by design: it does not survive a restart
            ticker = Ticker(symbol="BTCUSDT", price=45_000.0)
            producer.publish(
                ticker.model_dump_json(),
                exchange=ticker.exchange,
                routing_key=ticker.routing_key,
                delivery_mode=1,
            )
    seconds = _restart_rabbitmq()

    def depth(queue: str) -> int | None:
        try:
            with declared_vhost.connection() as conn:
                return int(conn.default_channel.queue_declare(queue, passive=True)[1])
        except Exception:  # noqa: BLE001 - the vhost's queues come back a moment after the broker
            return None

    assert wait_until(lambda: depth("order_requests") is not None, timeout=60)
    queued_after_restart = depth("order_requests")
    tickers_after_restart = depth("ticker_updates")
    pool.start()
    assert all_filled(tag, count), pool.log()[-3000:]
    figures = measure("broker restarted", declared_vhost, tag, count, confirmed)
    figures.notes |= {
        "restart_seconds": round(seconds, 1),
        "orders_queued_after_restart": queued_after_restart,
        "transient_tickers_after_restart": tickers_after_restart,
    }
    figures.save()
    assert queued_after_restart == count
    assert figures.filled == count and figures.double_fills == 0
    assert figures.dead_lettered == {}
