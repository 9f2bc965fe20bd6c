"""The bus on a three-node RabbitMQ cluster (scripts/cluster.sh): clients that fail over, and node kills.

The cluster starts once per session (tests/fixtures/cluster.py); every test has a vhost of its own on it,
and a node a test kills is back before the next test starts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue
from kombu.exceptions import OperationalError

from routing import letrade
from tests.fixtures.cluster import Cluster
from tests.live.test_letrade_live import take_all, text
from tests.support.bus import LETRADE, MASTERTRADE, SETTINGS
from tests.support.letrade_samples import PAYLOADS
from tests.support.wait import wait_until
from tradebus import nodes
from tradebus.application import create_app
from tradebus.letrade import MessageBus
from tradebus.publisher import send
from tradebus.topology import check_and_declare

pytestmark = [pytest.mark.broker, pytest.mark.slow]


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


def test_with_the_first_node_dead_every_client_connects_to_another(cluster: Cluster) -> None:
    vhost = cluster.vhost()  # its URL lists node 1 first
    cluster.kill(1)
    # The CLI: declares the topology over AMQP and the management API, both on a node that answers.
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


def test_the_asyncio_client_moves_to_another_node_when_its_node_dies_and_loses_nothing_confirmed(
    cluster: Cluster,
) -> None:
    # The topology's queues are declared through node 1; the client connects to node 2 first.
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
            killing = asyncio.create_task(asyncio.to_thread(cluster.kill, first))
            await keep_publishing("around", killing.done)
            await killing
            await keep_publishing("after", lambda: bool(reconnections) and len(confirmed) >= 200)
            assert await eventually(lambda: delivered >= set(confirmed)), set(confirmed) - delivered
            return first, port_node(bus.connection.url.port), len(reconnections)

    first, then, reconnections = run(scenario())
    assert (first, reconnections) == (2, 1) and then in (1, 3)
    kept = {text(m.body).split('"error_message":"')[1].split('"')[0] for m in take_all(vhost, inbox)}
    assert kept >= set(confirmed)


def test_a_publish_confirmed_just_before_the_queue_leaders_node_dies_is_never_lost(cluster: Cluster) -> None:
    vhost = cluster.vhost()
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
        leader = vhost.management.queue(queue.name)["leader"]
        assert cluster.node_of(leader) == 1
        producer = Producer(conn.default_channel)
        for i in range(count):
            # Returns once the broker confirmed: a majority of the queue's replicas has the message.
            producer.publish(f"order-{i}", exchange=exchange, routing_key="confirmed", delivery_mode=2)
        cluster.kill(1)  # right after the last confirm, before anything was read
    taken: list[str] = []

    def drain() -> bool:
        """Read what is there; until the two nodes left have elected a new leader, the queue is down."""
        conn = Connection(cluster.url(vhost.name, order=(2, 3)))
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


def test_nodes_are_listed_as_the_cluster_scripts_exports_say(cluster: Cluster) -> None:
    """scripts/cluster.sh's export lines read as settings: three nodes, one management API each."""
    listed = nodes.split(cluster.env["TRADEBUS_BROKER_URL"])
    assert [port_node(int(url.rsplit(":", 1)[1].split("/")[0])) for url in listed] == [1, 2, 3]
    assert len(cluster.management.base_urls) == 3
    running = {n["name"] for n in cluster.admin().get("nodes") if n["running"]}
    assert running == {f"rabbit{n}@localhost" for n in (1, 2, 3)}
    assert cluster.env["TRADEBUS_QUEUE_TYPE"] == "quorum"
