"""The bus on a three-node RabbitMQ cluster (scripts/cluster.sh): clients that fail over, and node kills.

The cluster starts once for the module (tests/fixtures/cluster.py); every test has a vhost of its own on it
(the order-path tests share one with MasterTrade's quorum topology, declared through node 1). A node a
test kills comes back in the background, and the next kill waits for it. Figures: docs/reliability.md,
"Fault tests on a cluster".
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue
from kombu.exceptions import OperationalError

import routing
from routing import letrade
from tests.fixtures.cluster import Cluster
from tests.live.test_faults_live import all_filled
from tests.live.test_letrade_live import take_all, text
from tests.support.bus import LETRADE, MASTERTRADE, SETTINGS, Vhost
from tests.support.faults import Figures, Pool, fill_records, measure, orders, publish_confirmed
from tests.support.letrade_samples import PAYLOADS
from tests.support.wait import wait_until
from tradebus import nodes
from tradebus.application import create_app
from tradebus.letrade import MessageBus
from tradebus.mastertrade import account
from tradebus.publisher import send
from tradebus.topology import check_and_declare

# make test distributes by file (pytest-xdist --dist loadfile): one process runs every test of the local
# cluster (fixed ports, started once per module). No other module may start it.
pytestmark = [pytest.mark.broker, pytest.mark.slow]
#: MasterTrade's topology with its critical queues as quorum queues (TRADEBUS_QUEUE_TYPE=quorum).
QUORUM_MASTERTRADE = routing.build("mastertrade", queue_type="quorum")


def port_node(port: int | None) -> int:
    """The cluster node listening on AMQP ``port`` (5681 is node 1)."""
    assert port is not None
    return port - 5680


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 90))  # type: ignore[arg-type]


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return result


def error_event(marker: str) -> dict[str, Any]:
    return {**PAYLOADS["error"][1], "error_type": "cluster_test", "error_message": marker}


@pytest.fixture(scope="module")
def quorum_vhost(rabbit_cluster: Cluster) -> Vhost:
    """A cluster vhost with the quorum topology, declared through node 1 (which then leads every quorum
    queue), for the module: declaring and deleting it take seconds each."""
    rabbit_cluster.ready()
    vhost = rabbit_cluster.vhost()
    with Connection(rabbit_cluster.url(vhost.name, order=(1,))) as conn:
        check_and_declare(QUORUM_MASTERTRADE, conn, vhost.management)
    return vhost


@pytest.fixture
def cluster_pool(cluster: Cluster, quorum_vhost: Vhost, fresh_state: str, tmp_path: Path) -> Iterator[Pool]:
    """The order_requests pool on the quorum vhost (``aim`` gives it its list of nodes)."""
    for symbol, price in (("BTCUSDT", 45_000.0), ("ETHUSDT", 2_500.0), ("SOLUSDT", 150.0)):
        account.record_price(symbol, price)
    env = {
        "TRADEBUS_MANAGEMENT_URL": cluster.env["TRADEBUS_MANAGEMENT_URL"],
        "TRADEBUS_QUEUE_TYPE": "quorum",
        "TRADEBUS_REDIS_PREFIX": fresh_state,
    }
    running = Pool(quorum_vhost, tmp_path, env)
    yield running
    if running.process is not None and running.process.process.poll() is None:
        running.kill()  # a throwaway pool: no warm shutdown to wait for


def aim(pool: Pool, cluster: Cluster) -> int:
    """Once every node is up, list for the pool (and the test's publishers) first the nodes that do not
    lead order_requests, the leader last; returns the leader. (Leadership can move, when a node comes
    back on a loaded machine: it is read now, not when the test started.)"""
    cluster.ready()  # the kill to come must not wait while the pool drains the queue
    led_by = leader(pool.vhost, cluster, "order_requests")
    pool.vhost = cluster.on(pool.vhost.name, (*(n for n in (1, 2, 3) if n != led_by), led_by))
    pool.env["TRADEBUS_BROKER_URL"] = pool.vhost.url
    return led_by


def workers_node(vhost: Vhost, cluster: Cluster) -> int:
    """The node the order_requests pool consumes through (the first of its list that was up)."""
    # The management API lists consumers a moment late (its statistics interval).
    found = wait_until(lambda: consumer_nodes(vhost, cluster, "order_requests"), timeout=30)
    assert len(found) == 1, found
    return int(found.pop())


def leader(vhost: Vhost, cluster: Cluster, queue: str) -> int:
    return cluster.node_of(vhost.management.queue(queue)["leader"])


def consumer_nodes(vhost: Vhost, cluster: Cluster, queue: str) -> set[int]:
    """The nodes the consumers of ``queue`` are connected to (as far as the API's statistics know yet)."""
    found = set()
    for consumer in vhost.management.consumers():
        details = consumer.get("channel_details") or {}  # [] until the statistics have it
        if consumer["queue"]["name"] == queue and isinstance(details, dict) and details.get("node"):
            found.add(cluster.node_of(details["node"]))
    return found


def longest_pause_after(tag: str, moment: datetime) -> float:
    """The longest time between two fills of this test's orders, the later one after ``moment``: how long
    fills stopped while the cluster recovered."""
    times = sorted(
        datetime.fromisoformat(update["filled_at"])
        for record in fill_records(tag).values()
        for update in record.get("updates", [])
        if update.get("filled_at")
    )
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times) if b > moment]
    return round(max(gaps, default=0.0), 3)


def assert_each_filled_once(figures: Figures, count: int) -> None:
    assert figures.confirmed == count
    assert figures.filled == count and figures.bookings == count and figures.double_fills == 0
    assert figures.notes["position"] == pytest.approx(0.01 * count)
    assert figures.notes["filled_update_ids_per_order"] == 1
    assert figures.dead_lettered == {}


def test_the_cluster_scripts_exports_name_three_nodes_and_the_quorum_topology_spans_them(
    cluster: Cluster, quorum_vhost: Vhost
) -> None:
    """scripts/cluster.sh's export lines read as settings: three nodes, one management API each; the
    quorum topology's critical queues have a member on each node (built first: every node is up)."""
    listed = nodes.split(cluster.env["TRADEBUS_BROKER_URL"])
    assert [port_node(int(url.rsplit(":", 1)[1].split("/")[0])) for url in listed] == [1, 2, 3]
    assert len(cluster.management.base_urls) == 3
    cluster.ready()
    running = {n["name"] for n in cluster.admin().get("nodes") if n["running"]}
    assert running == {f"rabbit{n}@localhost" for n in (1, 2, 3)}
    assert cluster.env["TRADEBUS_QUEUE_TYPE"] == "quorum"
    order_requests = quorum_vhost.management.queue("order_requests")
    assert order_requests["type"] == "quorum" and cluster.node_of(order_requests["leader"]) == 1
    assert sorted(order_requests["members"]) == sorted(running)
    assert quorum_vhost.management.queue("market_data")["type"] == "classic"


def test_the_asyncio_client_moves_to_another_node_when_its_node_dies_and_loses_nothing_confirmed(
    cluster: Cluster,
) -> None:
    # The topology's queues are declared through node 1; the client connects to node 2 first.
    cluster.ready()
    vhost = cluster.vhost(order=(2, 3, 1))
    with Connection(cluster.url(vhost.name, order=(1,))) as conn:
        check_and_declare(LETRADE, conn, vhost.management)
    inbox = letrade.STRATEGY.name  # takes events.error; nothing consumes it in this vhost
    confirmed: list[str] = []
    delivered: set[str] = set()

    async def scenario() -> tuple[int, int, int]:
        reconnections: list[object] = []
        async with MessageBus(vhost.url, source="tests") as bus:
            first = port_node(bus.connection.url.port)
            bus.connection.reconnect_callbacks.add(lambda *args: reconnections.append(args))
            await bus.subscribe("events.error", lambda _, message: delivered.add(message["error_message"]))

            async def publish(marker: str) -> None:
                await bus.publish("letrade.events", "events.error", error_event(marker))
                confirmed.append(marker)

            async def keep_publishing(prefix: str, until: Callable[[], bool]) -> None:
                n = 0
                while not until():
                    await asyncio.gather(*(publish(f"{prefix}-{n + i}") for i in range(10)))
                    n += 10

            await keep_publishing("before", lambda: len(confirmed) >= 50)
            assert await eventually(lambda: delivered >= set(confirmed)), set(confirmed) - delivered
            killing = asyncio.create_task(asyncio.to_thread(cluster.kill, first))
            await keep_publishing("around", killing.done)
            await killing
            await keep_publishing("after", lambda: bool(reconnections) and len(confirmed) >= 200)
            # The subscription's own queue is transient (it lives with its connection, as the seed has
            # it): what it held died with its node. Restored on the new node, it takes what comes next.
            resumed = [f"resumed-{i}" for i in range(20)]
            await asyncio.gather(*(publish(marker) for marker in resumed))
            assert await eventually(lambda: delivered >= set(resumed)), set(resumed) - delivered
            return first, port_node(bus.connection.url.port), len(reconnections)

    first, then, reconnections = run(scenario())
    assert (first, reconnections) == (2, 1) and then in (1, 3)
    # The durable queue (on node 1, alive) has every message whose publish was confirmed, across the kill.
    kept = {text(m.body).split('"error_message":"')[1].split('"')[0] for m in take_all(vhost, inbox)}
    assert kept >= set(confirmed)


def test_orders_published_while_the_order_queues_leader_is_killed_are_each_filled_once(
    cluster: Cluster, cluster_pool: Pool
) -> None:
    led_by = aim(cluster_pool, cluster)
    vhost, tag, count = cluster_pool.vhost, uuid.uuid4().hex[:6], 300
    batch = orders(count, tag)
    confirmed = [publish_confirmed(vhost, batch[:100])]  # a backlog: the kill finds the pool busy
    cluster_pool.start()
    assert workers_node(vhost, cluster) != led_by  # the pool's list names the leader last
    publisher = threading.Thread(target=lambda: confirmed.append(publish_confirmed(vhost, batch[100:], 0.01)))
    publisher.start()
    assert wait_until(lambda: len(fill_records(tag)) >= 20, timeout=60), cluster_pool.log()[-3000:]
    killed_at, filled_at_kill = datetime.now(UTC), len(fill_records(tag))
    cluster.kill(led_by)
    publisher.join()
    # Fills resumed on the new leader (beyond what the pool had prefetched): the node may come back.
    assert wait_until(lambda: len(fill_records(tag)) >= filled_at_kill + 30, timeout=60), cluster_pool.log()
    cluster.restart()
    assert all_filled(tag, count), cluster_pool.log()[-3000:]
    cluster.ready()  # measure reads unrouted.orders, a classic queue on the node that declared it
    figures = measure("cluster: order queue's leader killed", vhost, tag, count, sum(confirmed))
    figures.notes["fills_before_the_kill"] = sum(
        1
        for r in fill_records(tag).values()
        for u in r.get("updates", [])
        if u.get("filled_at") and datetime.fromisoformat(u["filled_at"]) < killed_at
    )
    figures.notes["longest_pause_in_fills_s"] = longest_pause_after(tag, killed_at)
    figures.notes["new_leader"] = leader(vhost, cluster, "order_requests")
    figures.save()
    assert figures.notes["fills_before_the_kill"] < count, "every order was filled before the kill"
    assert figures.notes["new_leader"] != led_by
    assert_each_filled_once(figures, count)


def test_a_publish_confirmed_just_before_node_1_dies_is_kept_and_every_client_connects_to_another(
    cluster: Cluster,
) -> None:
    vhost = cluster.vhost()  # its URL lists node 1 first
    exchange = Exchange("cluster.confirmed", type="direct", durable=True)
    queue = Queue(
        "cluster.confirmed",
        exchange,
        routing_key="confirmed",
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )
    count = 200
    # Through node 1: the quorum queue's leader is the declaring client's node, and so is the publisher's.
    with Connection(cluster.url(vhost.name, order=(1,)), transport_options={"confirm_publish": True}) as conn:
        queue(conn.default_channel).declare()
        assert cluster.node_of(vhost.management.queue(queue.name)["leader"]) == 1
        producer = Producer(conn.default_channel)
        for i in range(count):
            # Returns once the broker confirmed: a majority of the queue's replicas has the message.
            producer.publish(f"order-{i}", exchange=exchange, routing_key="confirmed", delivery_mode=2)
        cluster.kill(1)  # right after the last confirm, before anything was read
    taken: list[str] = []

    def drain() -> bool:
        """Read what is there; until the two nodes left have elected a new leader, the queue is down."""
        conn = Connection(vhost.url)
        try:
            with conn:
                channel = conn.channel()
                while (message := channel.basic_get(queue.name, no_ack=True)) is not None:
                    taken.append(text(message.body))
        except (*conn.connection_errors, *conn.channel_errors, OperationalError):
            return False
        return len(taken) >= count

    assert wait_until(drain, timeout=60), f"{len(taken)} of {count}"
    assert sorted(taken) == sorted(f"order-{i}" for i in range(count))
    assert cluster.node_of(vhost.management.queue(queue.name)["leader"]) in (2, 3)

    # With node 1 dead, every client goes to another node. The CLI: declares the topology over AMQP and
    # the management API (node 1's is listed first), both on a node that answers.
    env = {
        **os.environ,
        "TRADEBUS_BROKER_URL": vhost.url,
        "TRADEBUS_MANAGEMENT_URL": cluster.env["TRADEBUS_MANAGEMENT_URL"],
    }
    cli = [sys.executable, "-m", "tradebus.ops.cli"]
    declared = subprocess.run([*cli, "topology", "declare"], env=env, capture_output=True, text=True)
    assert declared.returncode == 0, declared.stderr
    assert {q["name"] for q in vhost.management.queues()} >= {q.name for q in MASTERTRADE.queues}
    # The core's publisher, on an app whose broker is the list: confirmed.
    app = create_app(MASTERTRADE, SETTINGS.with_(broker_url=vhost.url))
    try:
        send(app, b'{"probe": true}', exchange="mastertrade.market", routing_key="market.data.BTCUSDT.1m")
    finally:
        app.close()
    # Kombu, as Celery's workers and publishers use it: node 1 is skipped.
    with Connection(vhost.url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=3)
        assert port_node(conn.port) == 2
        assert conn.default_channel.queue_declare("market_data", passive=True).message_count == 1
    queues = subprocess.run([*cli, "queues"], env=env, capture_output=True, text=True)
    assert queues.returncode == 0 and "market_data" in queues.stdout, queues.stderr

    # Letrade's asyncio client (aio-pika, which takes one URL: tradebus/letrade/failover.py).
    async def asyncio_client() -> int:
        async with MessageBus(vhost.url, source="tests") as bus:
            return port_node(bus.connection.url.port)

    assert run(asyncio_client()) == 2
    # Positive control: the dead node refuses, so the clients above did fail over.
    with pytest.raises(OperationalError), Connection(cluster.urls[0], connect_timeout=2) as dead:
        dead.ensure_connection(max_retries=0)


def test_workers_whose_node_is_killed_reconnect_to_another_and_lose_nothing(
    cluster: Cluster, cluster_pool: Pool
) -> None:
    led_by = aim(cluster_pool, cluster)
    # 1,000 queued first, so the pool is still busy at the kill: on a quiet machine it fills 300 faster than
    # the test can see its first 20 fills and kill the node.
    vhost, tag, count = cluster_pool.vhost, uuid.uuid4().hex[:6], 1000
    confirmed = publish_confirmed(vhost, orders(count, tag))
    cluster_pool.start()
    node = workers_node(vhost, cluster)
    assert node != led_by  # the pool's list names the leader last
    assert wait_until(lambda: len(fill_records(tag)) >= 20, timeout=60), cluster_pool.log()[-3000:]
    killed_at = datetime.now(UTC)
    cluster.kill(node)
    filled_at_kill = len(fill_records(tag))

    def moved() -> bool:
        return bool(consumer_nodes(vhost, cluster, "order_requests") - {node})

    assert wait_until(moved, 60), cluster_pool.log()[-3000:]
    consumers_now_on = sorted(consumer_nodes(vhost, cluster, "order_requests"))
    cluster.restart()
    assert all_filled(tag, count), cluster_pool.log()[-3000:]
    cluster.ready()  # measure reads unrouted.orders, a classic queue on the node that declared it
    figures = measure("cluster: workers' node killed", vhost, tag, count, confirmed)
    figures.notes["longest_pause_in_fills_s"] = longest_pause_after(tag, killed_at)
    figures.notes["consumers_now_on"] = consumers_now_on
    figures.notes["fills_before_the_kill"] = filled_at_kill
    figures.save()
    assert len(fill_records(tag)) == count
    assert filled_at_kill < count, "every order was filled before the kill"
    assert cluster_pool.process is not None and cluster_pool.process.process.poll() is None, "the pool died"
    assert_each_filled_once(figures, count)
