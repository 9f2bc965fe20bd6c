"""Quorum queues on the local RabbitMQ (one node: each quorum queue has one member there): what the broker
accepts, the quorum topology as declared, its overflow, dead-lettering and delivery limit, retries that wait
in the broker, Celery's per-consumer prefetch, and the move of a live classic deployment to quorum queues
with messages in flight (docs/topology.md "Quorum queues", docs/scaling.md "Moving to quorum queues").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import AMQPError, MessageNacked
from kombu import Connection, Producer

import routing
from tests.support.bus import MASTERTRADE, Vhost, admin, declare_all, make_vhost
from tests.support.fail_once import FAIL_MARKER, FAIL_ONCE
from tests.support.faults import Pool, fill_records, orders, publish_confirmed
from tests.support.wait import wait_until
from tradebus.errors import MigrationBlocked, TopologyConflict
from tradebus.ops.migrate import TEMPORARY_SUFFIX, migrate
from tradebus.topology import check_and_declare, has_queue_type_change
from workers.launch import PoolProcess, worker_argv

pytestmark = pytest.mark.broker

QUORUM = routing.build("mastertrade", queue_type="quorum")
Q = {"x-queue-type": "quorum"}


def depth(vhost: Vhost, queue: str) -> int:
    """Messages ready in ``queue`` right now (a passive declare: exact, unlike the API's sampled stats)."""
    with vhost.connection() as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True)[1])


def declare_quorum(vhost: Vhost) -> None:
    with vhost.connection() as conn:
        check_and_declare(QUORUM, conn, vhost.management)


@pytest.fixture(scope="module")
def quorum_vhost(broker: Vhost) -> Iterator[Vhost]:
    """A vhost with the quorum topology declared and no consumer, for this module."""
    vhost = make_vhost(f"{broker.name}-quorum-{uuid.uuid4().hex[:6]}")
    declare_quorum(vhost)
    yield vhost
    admin().delete_vhost(vhost.name)


def test_what_rabbitmq_accepts_on_a_quorum_queue(fresh_vhost: Vhost) -> None:
    """The arguments the quorum topology relies on are accepted; what quorum queues cannot do is refused
    (PRECONDITION_FAILED for the queue, NOT_IMPLEMENTED for global QoS)."""
    accepted = {
        "ttl": {**Q, "x-message-ttl": 1000},
        "drop-head": {**Q, "x-max-length": 10, "x-overflow": "drop-head"},
        "reject-publish": {**Q, "x-max-length": 10, "x-overflow": "reject-publish"},
        "delivery-limit": {**Q, "x-delivery-limit": 6},
        "at-least-once": {
            **Q,
            "x-overflow": "reject-publish",
            "x-dead-letter-exchange": "mastertrade.dlx",
            "x-dead-letter-strategy": "at-least-once",
        },
        "three-members": {**Q, "x-quorum-initial-group-size": 3},
    }
    refused = {
        "priority": ({**Q, "x-max-priority": 10}, {}),
        "exclusive": (Q, {"exclusive": True}),
        "auto-delete": (Q, {"auto_delete": True}),
        "transient": (Q, {"durable": False}),
    }
    outcome: dict[str, str] = {}
    with fresh_vhost.connection() as conn:
        for name, arguments in accepted.items():
            conn.default_channel.queue_declare(
                f"q-{name}", durable=True, auto_delete=False, arguments=arguments
            )
            outcome[name] = "accepted"
        for name, (arguments, flags) in refused.items():
            channel = conn.channel()
            options: dict[str, Any] = {"durable": True, "auto_delete": False, **flags}
            try:
                channel.queue_declare(f"q-{name}", arguments=arguments, **options)
                outcome[name] = "accepted"
            except AMQPError as exc:
                outcome[name] = f"refused {exc.code}"
        channel = conn.channel()
        channel.basic_qos(0, 5, True)  # global QoS, what Celery sets unless it detects quorum queues
        try:
            channel.basic_consume("q-ttl", callback=lambda message: None)
            outcome["global-qos"] = "accepted"
        except AMQPError as exc:
            outcome["global-qos"] = f"refused {exc.code}"
    assert outcome == {
        **dict.fromkeys(accepted, "accepted"),
        **dict.fromkeys(refused, "refused 406"),
        "global-qos": "refused 540",
    }
    members = {q["name"]: q.get("members") for q in fresh_vhost.management.queues()}
    assert len(members["q-three-members"]) == 1, "a single node holds the one member it can"


def test_the_quorum_topology_replicates_the_critical_queues_and_leaves_market_data_classic(
    quorum_vhost: Vhost,
) -> None:
    with_policy = {p.target for p in QUORUM.policies if p.apply_to == "queues"}

    def listed() -> dict[str, dict[str, Any]]:
        queues = {q["name"]: q for q in quorum_vhost.management.queues()}
        return queues if all(queues.get(n, {}).get("policy") for n in with_policy) else {}

    live = wait_until(listed)  # the API lists a new queue's policy a moment after it applied
    assert live, "the policies never showed"
    for name in QUORUM.queues_by_name:
        wanted = "quorum" if name in QUORUM.quorum_queues else "classic"
        assert live[name]["type"] == wanted, name
    for name in ("order_requests", "trading_signals", "risk_checks", "alert_risk_events", "dlq.archive"):
        assert live[name]["arguments"]["x-quorum-initial-group-size"] == 3
    for name in ("order_requests", "strategy_order_updates", "monitoring_order_updates", "order_updates"):
        policy = live[name]["effective_policy_definition"]
        assert policy["overflow"] == "reject-publish" and policy["dead-letter-strategy"] == "at-least-once"
        assert policy["delivery-limit"] == 6
    # RabbitMQ takes the DLQs' explicit, in effect unlimited, delivery limit (4.x would default to 20).
    assert live["dlq.trading_signals"]["effective_policy_definition"]["delivery-limit"] == 1_000_000
    assert live["dlq.trading_signals"]["effective_policy_definition"]["dead-letter-routing-key"] == (
        "dlq.archive"
    )
    assert {live[q]["type"] for q in QUORUM.market_data_queues} == {"classic"}
    # Declaring again changes nothing; the classic topology over it is refused with the migration hint.
    declare_quorum(quorum_vhost)
    with quorum_vhost.connection() as conn, pytest.raises(TopologyConflict) as refused:
        check_and_declare(MASTERTRADE, conn, quorum_vhost.management)
    assert has_queue_type_change(refused.value.differences)


def test_a_full_quorum_order_queue_pushes_back_and_its_dead_letters_are_kept(quorum_vhost: Vhost) -> None:
    """On the real ``order_requests``, shrunk by an operator policy that repeats tradebus's keys: past
    its length the publisher's confirm is a nack (the oldest order stays), and a message that keeps coming
    back is dead-lettered at the broker's delivery limit. (Expiry dead-lettered at least once, which
    reject-publish allows: the retry test, through the delay queue.)"""
    ours = next(p for p in QUORUM.policies if p.target == "order_requests").definition
    small = {**ours, "max-length": 2, "delivery-limit": 1}
    name = f"test-small-{uuid.uuid4().hex[:6]}"

    def operator_policy(definition: dict[str, Any]) -> None:
        quorum_vhost.management.put_policy(
            name,
            {"pattern": "^order_requests$", "definition": definition, "priority": 50, "apply-to": "queues"},
        )
        wait_until(
            lambda: (
                quorum_vhost.management.queue("order_requests").get("policy") == name
                and quorum_vhost.management.queue("order_requests")["effective_policy_definition"]
                == definition
            )
        )

    operator_policy(small)
    try:
        accepted = 0
        with Connection(quorum_vhost.url, transport_options={"confirm_publish": True}) as conn:
            producer = Producer(conn.channel())
            # A quorum queue refuses once it holds *more* than its length: it takes one over it (the
            # publisher learns the queue is full asynchronously, so allow one more on a busy machine).
            with pytest.raises(MessageNacked):  # tradebus.publish raises PublishFailed on it
                for i in range(6):
                    producer.publish(
                        f"order {i}", exchange="mastertrade.orders", routing_key="order.request.X"
                    )
                    accepted += 1
        assert 3 <= accepted <= 4 and depth(quorum_vhost, "order_requests") == accepted  # the oldest kept
        with quorum_vhost.connection() as conn:
            for _ in range(2):  # delivered and given back twice: over the limit of 1
                channel = conn.channel()
                message = channel.basic_get("order_requests", no_ack=False)
                assert message is not None and message.body in (b"order 0", "order 0")
                channel.basic_reject(message.delivery_tag, requeue=True)
                channel.close()
        assert wait_until(lambda: depth(quorum_vhost, "dlq.order_requests") == 1, timeout=15)
        with quorum_vhost.connection() as conn:
            dead = conn.default_channel.basic_get("dlq.order_requests", no_ack=True)
        assert dead.body in (b"order 0", "order 0")
        assert dead.headers["x-death"][0]["reason"] == "delivery_limit"
        assert depth(quorum_vhost, "order_requests") == accepted - 1
    finally:
        quorum_vhost.management.delete_policy(name)
        with quorum_vhost.connection() as conn:
            conn.default_channel.queue_purge("order_requests")


def test_letrade_on_the_quorum_topology_replicates_its_dead_letters_and_keeps_priority_inboxes(
    quorum_vhost: Vhost,
) -> None:
    letrade = routing.build("letrade", queue_type="quorum")
    with quorum_vhost.connection() as conn:
        check_and_declare(letrade, conn, quorum_vhost.management)
    live = {q["name"]: q for q in quorum_vhost.management.queues() if q["name"].startswith("letrade.")}
    assert {n for n, q in live.items() if q["type"] == "quorum"} == letrade.quorum_queues
    assert {live[q.name]["arguments"]["x-max-priority"] for q in letrade.stage_queues} == {10}


class FailOncePool(Pool):
    """The ``order_requests`` pool as users run it, on tests/support/fail_once.py's app (one order fails
    once with a transient error)."""

    def start(self) -> None:
        self.starts += 1
        log = self.log_dir / f"order_requests-{self.starts}.log"
        app = "tests.support.fail_once"
        argv = [sys.executable, "-m", "celery", "-A", app, *worker_argv("order_requests")]
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self.process = PoolProcess("order_requests", process, log)
        self.wait_consuming()


@pytest.mark.slow
def test_the_order_pool_on_quorum_queues_prefetches_per_consumer_and_parks_its_retries_in_the_broker(
    fresh_vhost: Vhost, fresh_state: str, tmp_path: Path
) -> None:
    """``celery worker -Q order_requests`` with TRADEBUS_QUEUE_TYPE=quorum: Celery detects the quorum queue
    and sets its prefetch per consumer (3: 3 processes x 1), not per channel (global QoS is refused on
    quorum queues). An order whose first attempt fails (Redis away) waits its 5 s in
    ``mastertrade.retry.delay.5s``, not in a worker, while the others fill; then it fills too, once."""
    from tradebus.mastertrade import account

    declare_quorum(fresh_vhost)
    for symbol, price in (("BTCUSDT", 45_000.0), ("ETHUSDT", 2_500.0), ("SOLUSDT", 150.0)):
        account.record_price(symbol, price)
    tag = uuid.uuid4().hex[:6]
    batch = orders(20, tag)
    flaky = batch[0].request_id
    env = {
        "TRADEBUS_BROKER_URL": fresh_vhost.url,
        "TRADEBUS_REDIS_PREFIX": fresh_state,
        "TRADEBUS_QUEUE_TYPE": "quorum",
        FAIL_ONCE: flaky,
        FAIL_MARKER: str(tmp_path / "failed"),
    }
    pool = FailOncePool(fresh_vhost, tmp_path, env)
    pool.start()
    try:
        consumer = wait_until(
            lambda: next(
                (c for c in fresh_vhost.management.consumers() if c["queue"]["name"] == "order_requests"),
                None,
            )
        )
        assert consumer is not None and consumer["prefetch_count"] == 3, consumer
        vhost_path = fresh_vhost.management.settings.quoted_vhost

        def listed() -> list[dict[str, Any]]:
            """The vhost's channels, once the API has their statistics (it samples them)."""
            found: list[dict[str, Any]] = fresh_vhost.management.get(f"vhosts/{vhost_path}/channels")
            return found if found and all("global_prefetch_count" in c for c in found) else []

        channels = wait_until(listed)
        assert channels and {c["global_prefetch_count"] for c in channels} == {0}, channels
        assert publish_confirmed(fresh_vhost, batch) == 20
        # Parked in the broker (a ready message in the delay queue cannot be unacknowledged in a worker).
        parked = wait_until(lambda: depth(fresh_vhost, "mastertrade.retry.delay.5s") == 1, timeout=30)
        assert parked, pool.log()[-3000:]
        assert flaky not in fill_records(tag)
        assert wait_until(lambda: len(fill_records(tag)) == 20, timeout=60), pool.log()[-3000:]
        log = pool.log()
        assert "Global QoS is disabled" in log and "retry 1 of 3 in 5.0s" in log
        assert depth(fresh_vhost, "dlq.order_requests") == 0
    finally:
        pool.stop()


def test_a_classic_deployment_moves_to_quorum_queues_with_orders_in_flight_and_loses_none(
    fresh_vhost: Vhost,
) -> None:
    """``tradebus topology migrate``'s procedure on a broker the classic topology declared: orders queued
    before and published during the move all end in the new quorum ``order_requests``; dead letters move
    with their DLQ; nothing is left behind, and the quorum topology then declares cleanly."""
    declare_all(fresh_vhost)
    tag = uuid.uuid4().hex[:6]
    batch = orders(300, tag)
    ids: list[str] = []
    with Connection(fresh_vhost.url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel())

        def publish(order: Any) -> None:
            message_id = f"{order.request_id}"
            producer.publish(
                order.model_dump_json(),
                exchange=order.exchange,
                routing_key=order.routing_key,
                content_type="application/json",
                delivery_mode=2,
                message_id=message_id,
            )
            ids.append(message_id)  # confirmed: publish returned

        for order in batch[:150]:
            publish(order)
        producer.publish(
            "a dead letter", exchange="mastertrade.dlx", routing_key="dlq.order_requests", delivery_mode=2
        )
    published_at: list[float] = []
    moving = threading.Event()
    in_flight_published = threading.Event()

    def keep_publishing() -> None:
        with Connection(fresh_vhost.url, transport_options={"confirm_publish": True}) as conn:
            producer = Producer(conn.channel())
            for order in batch[150:]:
                producer.publish(
                    order.model_dump_json(),
                    exchange=order.exchange,
                    routing_key=order.routing_key,
                    content_type="application/json",
                    delivery_mode=2,
                    message_id=order.request_id,
                )
                ids.append(order.request_id)
                published_at.append(time.monotonic())
                moving.set()
                if len(ids) > 200:
                    in_flight_published.set()
                time.sleep(0.005)

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    assert moving.wait(10)
    finished: dict[str, float] = {}
    started = time.monotonic()
    with fresh_vhost.connection() as conn:
        moves = migrate(
            QUORUM,
            conn,
            fresh_vhost.management,
            on_move=lambda m: finished.setdefault(m.queue, time.monotonic()),
        )
    publisher.join()
    during = sum(1 for t in published_at if started < t < finished["order_requests"])
    assert during, "no order was published while order_requests moved"
    assert in_flight_published.is_set()
    moved = {m.queue: m for m in moves}
    assert set(moved) == {q for q in QUORUM.quorum_queues if not q.startswith("mastertrade.retry.delay")}
    assert moved["order_requests"].moved >= 150 and moved["dlq.order_requests"].moved == 1
    live = {q["name"]: q for q in fresh_vhost.management.queues()}
    assert live["order_requests"]["type"] == "quorum"
    assert not [name for name in live if name.endswith(TEMPORARY_SUFFIX)]
    found: list[str] = []
    with fresh_vhost.connection() as conn:
        channel = conn.default_channel
        while (m := channel.basic_get("order_requests", no_ack=True)) is not None:
            found.append(json.loads(m.body)["request_id"])
        assert channel.basic_get("dlq.order_requests", no_ack=True).body in (
            b"a dead letter",
            "a dead letter",
        )
    assert len(ids) == 300 and set(ids) <= set(found), f"lost: {sorted(set(ids) - set(found))[:5]}"
    print(
        f"\nmigrated: 300 orders confirmed ({during} while order_requests moved), {len(found)} delivered,"
        f" {len(found) - len(set(found))} twice (same id), 0 lost"
    )
    # Only tradebus's quorum policies are left, and the quorum topology declares without a difference.
    names = {p["name"] for p in fresh_vhost.management.policies()}
    assert names == {p.name for p in QUORUM.policies}
    declare_quorum(fresh_vhost)


def test_a_queue_still_consumed_is_not_migrated(fresh_vhost: Vhost) -> None:
    declare_all(fresh_vhost)
    with fresh_vhost.connection() as conn:
        channel = conn.channel()
        channel.basic_consume("risk_checks", callback=lambda message: None)
        with pytest.raises(MigrationBlocked, match="risk_checks"):
            migrate(QUORUM, conn, fresh_vhost.management)
    assert fresh_vhost.management.queue("risk_checks")["type"] == "classic"
