"""The topology on a real RabbitMQ: arguments, the routing contract, dead letters, unrouted messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Producer

from tests.support.bus import MASTERTRADE, Vhost
from tests.support.contract import CONTRACT, UNROUTABLE
from tradebus.topology import declare, diff

pytestmark = pytest.mark.broker

#: Every argument the seed declares, copied from the seed (TTL in ms).
SEED_ARGUMENTS = {
    "market_data": {"x-message-ttl": 60000, "x-max-length": 100000, "x-overflow": "drop-head"},
    "ticker_updates": {"x-message-ttl": 10000, "x-max-length": 50000},
    "sentiment_data": {"x-message-ttl": 300000, "x-max-length": 10000},
    "stock_index_data": {"x-message-ttl": 300000, "x-max-length": 1000},
    "strategy_service_onchain_metrics": {"x-message-ttl": 300000},
    "strategy_service_whale_alerts": {"x-message-ttl": 600000},
    "trading_signals": {
        "x-message-ttl": 30000,
        "x-max-length": 10000,
        "x-dead-letter-exchange": "mastertrade.dlx",
        "x-dead-letter-routing-key": "dlq.trading_signals",
    },
    "order_requests": {
        "x-message-ttl": 60000,
        "x-max-length": 5000,
        "x-dead-letter-exchange": "mastertrade.dlx",
        "x-dead-letter-routing-key": "dlq.order_requests",
    },
    "order_updates": {"x-message-ttl": 300000},
    "risk_checks": {"x-message-ttl": 30000, "x-max-length": 5000},
    "system_notifications": {"x-message-ttl": 600000},
    "dlq.trading_signals": {"x-message-ttl": 86400000},
}


def _producer(conn: Connection) -> Producer:
    conn.transport_options["confirm_publish"] = True
    return Producer(conn.channel())


def _text(body: str | bytes) -> str:
    return body.decode() if isinstance(body, bytes) else body


def _drain(conn: Connection, queue: str) -> list[tuple[str, dict[str, object], dict[str, object]]]:
    """Take every message off ``queue``: (body, headers, delivery_info)."""
    channel = conn.channel()
    got = []
    while (message := channel.basic_get(queue, no_ack=True)) is not None:
        got.append((_text(message.body), dict(message.headers or {}), dict(message.delivery_info)))
    channel.close()
    return got


def _wait_for(
    conn: Connection, queue: str, count: int, timeout: float = 10.0
) -> list[tuple[str, dict, dict]]:
    deadline = time.monotonic() + timeout
    got: list[tuple[str, dict, dict]] = []
    while time.monotonic() < deadline and len(got) < count:
        got += _drain(conn, queue)
        time.sleep(0.05)
    return got


def test_seed_queues_carry_exactly_the_seed_arguments(topology_vhost: Vhost) -> None:
    live = {q["name"]: q for q in topology_vhost.management.queues()}
    for name, arguments in SEED_ARGUMENTS.items():
        assert live[name]["arguments"] == arguments, name
        assert live[name]["durable"] is True


def test_every_declared_queue_and_exchange_matches_the_broker(topology_vhost: Vhost) -> None:
    live_queues = topology_vhost.management.queues()
    live_exchanges = topology_vhost.management.exchanges()
    assert {q.name for q in MASTERTRADE.queues} <= {q["name"] for q in live_queues}
    assert {e.name for e in MASTERTRADE.exchanges} <= {e["name"] for e in live_exchanges}
    assert diff(MASTERTRADE, live_exchanges, live_queues) == []
    types = {e["name"]: e["type"] for e in live_exchanges}
    for name in ("mastertrade.market", "mastertrade.trading", "mastertrade.orders", "mastertrade.risk"):
        assert types[name] == "topic"
    assert types["mastertrade.system"] == "topic"
    assert types["mastertrade.dlx"] == "direct"


def test_declaring_twice_changes_nothing(topology_vhost: Vhost) -> None:
    before = {q["name"]: q["arguments"] for q in topology_vhost.management.queues()}
    with topology_vhost.connection() as conn:
        declare(MASTERTRADE, conn)
        declare(MASTERTRADE, conn)
    after = {q["name"]: q["arguments"] for q in topology_vhost.management.queues()}
    assert after == before


@pytest.fixture(scope="module")
def deliveries(topology_vhost: Vhost) -> Iterator[dict[tuple[str, str], set[str]]]:
    """Publish one message per contract and probe key, then record which queues each one reached."""
    probes = [(ex, key) for ex, key, _, _ in CONTRACT] + [(ex, key) for ex, key, _ in UNROUTABLE]
    with topology_vhost.connection() as conn:
        producer = _producer(conn)
        for exchange, key in probes:
            producer.publish(
                f"{exchange}|{key}", exchange=exchange, routing_key=key, content_type="text/plain"
            )
        reached: dict[tuple[str, str], set[str]] = {probe: set() for probe in probes}
        for queue in MASTERTRADE.queues:
            for body, _, _ in _drain(conn, queue.name):
                exchange, key = body.split("|", 1)
                reached[(exchange, key)].add(queue.name)
    yield reached


@pytest.mark.parametrize(("exchange", "key", "seed", "added"), CONTRACT, ids=[c[1] for c in CONTRACT])
def test_documented_key_lands_in_its_documented_queues_on_the_broker(
    deliveries: dict[tuple[str, str], set[str]], exchange: str, key: str, seed: set[str], added: set[str]
) -> None:
    assert deliveries[(exchange, key)] == seed | added
    routed = MASTERTRADE.route(exchange, key)
    assert deliveries[(exchange, key)] == routed, "tradebus route disagrees with the broker"


@pytest.mark.parametrize(("exchange", "key", "unrouted"), UNROUTABLE, ids=[u[1] for u in UNROUTABLE])
def test_unroutable_key_is_kept_in_its_unrouted_queue_on_the_broker(
    deliveries: dict[tuple[str, str], set[str]], exchange: str, key: str, unrouted: str
) -> None:
    assert deliveries[(exchange, key)] == {unrouted}


def test_every_order_update_subscriber_gets_every_update(topology_vhost: Vhost) -> None:
    subscribers = ("order_updates", "strategy_order_updates", "monitoring_order_updates")
    with topology_vhost.connection() as conn:
        producer = _producer(conn)
        for i in range(10):
            producer.publish(f"u{i}", exchange="mastertrade.orders", routing_key=f"order.update.filled.o-{i}")
        for queue in subscribers:
            assert sorted(body for body, _, _ in _drain(conn, queue)) == sorted(f"u{i}" for i in range(10))


def test_rejected_order_request_is_dead_lettered_with_its_reason(declared_vhost: Vhost) -> None:
    body = f"order-{uuid.uuid4()}"
    with declared_vhost.connection() as conn:
        _producer(conn).publish(body, exchange="mastertrade.orders", routing_key="order.request.BTCUSDT")
        channel = conn.channel()
        message = channel.basic_get("order_requests", no_ack=False)
        assert message is not None and _text(message.body) == body
        channel.basic_reject(message.delivery_tag, requeue=False)
        (dead,) = _wait_for(conn, "dlq.order_requests", 1)
    text, headers, _ = dead
    assert text == body
    death = headers["x-death"][0]
    assert (death["reason"], death["queue"]) == ("rejected", "order_requests")
    assert death["routing-keys"] == ["order.request.BTCUSDT"]


@pytest.mark.parametrize(
    ("queue", "exchange", "key"),
    [
        ("trading_signals", "mastertrade.trading", "signal.BTCUSDT.uuid-1234"),
        ("order_requests", "mastertrade.orders", "order.request.BTCUSDT"),
        ("strategy_order_updates", "mastertrade.orders", "order.update.filled.order-1"),
    ],
)
def test_expired_critical_message_is_dead_lettered_not_dropped(
    declared_vhost: Vhost, queue: str, exchange: str, key: str
) -> None:
    body = f"expiring-{uuid.uuid4()}"
    with declared_vhost.connection() as conn:
        _producer(conn).publish(body, exchange=exchange, routing_key=key, expiration=0.001)
        dead = _wait_for(conn, f"dlq.{queue}", 1)
    assert [d[0] for d in dead] == [body]
    assert dead[0][1]["x-death"][0]["reason"] == "expired"


@pytest.mark.parametrize("queue", [q.name for q in MASTERTRADE.worker_queues])
def test_message_that_expires_on_any_stage_queue_is_dead_lettered_with_x_death(
    topology_vhost: Vhost, queue: str
) -> None:
    body = f"stale-{uuid.uuid4()}"
    with topology_vhost.connection() as conn:
        # Straight to the queue through the default exchange, so no other queue gets a copy.
        _producer(conn).publish(body, exchange="", routing_key=queue, expiration=0.001)
        dead = _wait_for(conn, f"dlq.{queue}", 1)
    assert [d[0] for d in dead] == [body]
    death = dead[0][1]["x-death"][0]
    assert (death["reason"], death["queue"]) == ("expired", queue)


def test_every_stage_queue_dead_letters_by_argument_or_by_exactly_one_tradebus_policy(
    topology_vhost: Vhost,
) -> None:
    # The management API shows a queue's policy with its next statistics, about a second after it is set.
    deadline = time.monotonic() + 60
    while True:
        live = {q["name"]: q for q in topology_vhost.management.queues()}
        shown = all(
            live[p.target].get("policy")
            for p in MASTERTRADE.policies
            if p.apply_to == "queues" and p.target in live
        )
        if shown or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    for queue in MASTERTRADE.stage_queues:
        arguments = live[queue.name]["arguments"]
        if "x-dead-letter-exchange" in arguments:
            assert live[queue.name].get("policy") in (None, ""), queue.name
            continue
        assert live[queue.name]["policy"] == f"tradebus-dead-letter.{queue.name}"
        assert live[queue.name]["effective_policy_definition"] == {
            "dead-letter-exchange": "mastertrade.dlx",
            "dead-letter-routing-key": f"dlq.{queue.name}",
        }


def test_dead_signal_outliving_its_24_hour_dlq_is_archived_not_dropped(topology_vhost: Vhost) -> None:
    body = f"old-dead-signal-{uuid.uuid4()}"
    with topology_vhost.connection() as conn:
        _producer(conn).publish(
            body, exchange="mastertrade.dlx", routing_key="dlq.trading_signals", expiration=0.001
        )
        dead = _wait_for(conn, "dlq.archive", 1)
    assert [d[0] for d in dead] == [body]
    assert dead[0][1]["x-death"][0]["queue"] == "dlq.trading_signals"


def _fill(vhost: Vhost, queue: str, bodies: list[str], exchange: str = "", routing_key: str = "") -> None:
    """Fill ``queue`` fast (no confirm per message: a 10 s TTL must not expire the first ones while the
    last are still being published), and wait until it holds them all."""
    with vhost.connection() as bulk:
        producer = Producer(bulk.channel())
        for body in bodies:
            producer.publish(body, exchange=exchange, routing_key=routing_key or queue)
        deadline = time.monotonic() + 10
        while bulk.default_channel.queue_declare(queue, passive=True).message_count < len(bodies):
            assert time.monotonic() < deadline, f"{queue} never held the {len(bodies)} messages"
            time.sleep(0.05)


def test_overflowing_orderbook_updates_dead_letters_the_dropped_head(declared_vhost: Vhost) -> None:
    limit = 10_000
    _fill(declared_vhost, "orderbook_updates", [f"b{i}" for i in range(limit)])
    with declared_vhost.connection() as conn:
        _producer(conn).publish(f"b{limit}", exchange="", routing_key="orderbook_updates")
        dead = _wait_for(conn, "dlq.orderbook_updates", 1)
    assert [d[0] for d in dead] == ["b0"]
    assert dead[0][1]["x-death"][0]["reason"] == "maxlen"


def test_overflowing_order_requests_dead_letters_the_oldest(declared_vhost: Vhost) -> None:
    limit = 5000
    key = "order.request.BTCUSDT"
    _fill(declared_vhost, "order_requests", [f"o{i}" for i in range(limit)], "mastertrade.orders", key)
    with declared_vhost.connection() as conn:
        _producer(conn).publish(f"o{limit}", exchange="mastertrade.orders", routing_key=key)
        dead = _wait_for(conn, "dlq.order_requests", 1)
        kept = _drain(conn, "order_requests")
    assert [d[0] for d in dead] == ["o0"]
    assert dead[0][1]["x-death"][0]["reason"] == "maxlen"
    assert len(kept) == limit
