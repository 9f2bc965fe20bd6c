"""Stages on a real broker: the queue a message arrives on decides which stage runs it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kombu import Connection, Producer

from tests.support.bus import MASTERTRADE, Vhost
from tests.support.contract import CONTRACT
from tests.support.wait import dead_letters, entry, on, raw_publish, wait_until
from tradebus import app, publish, recorder, store
from tradebus.headers import ORIGINAL_ROUTING_KEY, QUEUE, REASON
from tradebus.mastertrade.samples import candle, documented_messages, order_request, order_update, signal
from tradebus.redeliveries import MAX_REDELIVERIES
from tradebus.registry import stage_tasks

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("celery_session_worker")]


def test_every_documented_message_runs_the_stage_of_each_queue_it_reaches(broker: Vhost) -> None:
    stages = {queue: task.name for queue, task in stage_tasks(app).items()}
    sent = [
        (publish(m), m, seed | added)
        for m, (_, _, seed, added) in zip(documented_messages(), CONTRACT, strict=True)
    ]
    for message_id, message, queues in sent:
        for queue in queues:
            got = wait_until(lambda q=queue, i=message_id: entry(q, i))
            assert got, f"{message.routing_key}: stage of {queue} never ran"
            assert (got["stage"], got["type"], got["routing_key"]) == (
                stages[queue],
                message.type,
                message.routing_key,
            )


def test_one_candle_runs_three_different_stages(broker: Vhost) -> None:
    message_id = publish(candle("SOLUSDT", "15m"))
    queues = {"market_data", "strategy_market_data", "executor_market_data"}
    ran = {q: wait_until(lambda q=q: entry(q, message_id)) for q in queues}
    assert {q: e["stage"] for q, e in ran.items() if e} == {
        "market_data": "tradebus.market_data.record_candle",
        "strategy_market_data": "tradebus.strategy.on_market_data",
        "executor_market_data": "tradebus.execution.on_market_data",
    }


def test_execute_order_delay_goes_to_the_orders_exchange_with_the_key_of_its_symbol(broker: Vhost) -> None:
    from tasks.execution import execute_order

    order = order_request(f"req-{uuid.uuid4().hex[:8]}").model_copy(update={"symbol": "ETHUSDT"})
    result = execute_order.delay(order)
    got = wait_until(lambda: entry("order_requests", result.id))
    assert got is not None
    assert (got["exchange"], got["routing_key"]) == ("mastertrade.orders", "order.request.ETHUSDT")
    assert got["stage"] == "tradebus.execution.execute_order"


def test_plain_json_from_a_non_celery_publisher_runs_the_right_stage(broker: Vhost) -> None:
    message = signal(f"s-{uuid.uuid4().hex[:8]}")
    raw_publish(
        broker,
        message.model_dump_json(),
        "mastertrade.trading",
        message.routing_key,
        content_type="application/json",
        message_id=f"pika-{uuid.uuid4()}",
    )
    got = wait_until(
        lambda: next(
            (e for e in recorder.received("trading_signals") if e["routing_key"] == message.routing_key), None
        )
    )
    assert got is not None and got["stage"] == "tradebus.risk.evaluate_signal"
    assert got["id"].startswith("pika-")


def test_celery_task_message_on_a_fanout_key_runs_each_queues_own_stage(broker: Vhost) -> None:
    update = order_update("filled", f"order-{uuid.uuid4().hex[:8]}")
    result = app.send_task(
        "tradebus.alerts.on_order_update",
        args=[update.model_dump_json()],
        queue="order_updates",
        exchange="mastertrade.orders",
        routing_key=update.routing_key,
    )
    stages = {
        q: wait_until(lambda q=q: entry(q, result.id))
        for q in ("order_updates", "strategy_order_updates", "monitoring_order_updates")
    }
    assert {q: e and e["stage"] for q, e in stages.items()} == {
        "order_updates": "tradebus.alerts.on_order_update",
        "strategy_order_updates": "tradebus.strategy.on_order_update",
        "monitoring_order_updates": "tradebus.monitoring.on_order_update",
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "invalid_json"),
        (json.dumps(order_request().model_dump(mode="json") | {"quantity": 0}), "schema_violation"),
        (json.dumps(order_request().model_dump(mode="json") | {"quantity": -2}), "schema_violation"),
        (json.dumps({"type": "teleport", "symbol": "BTCUSDT"}), "unknown_message_type"),
        (candle().model_dump_json(), "unknown_message_type"),
        (
            json.dumps(order_request().model_dump(mode="json") | {"strategy_id": "s" * 140_000}),
            "message_too_large",
        ),
        (json.dumps(order_request().model_dump(mode="json") | {"risk_approved": False}), "order_refused"),
        # An order id of its own: a replay of an order already filled is answered with its fill, however old.
        (
            order_request(
                f"req-old-{uuid.uuid4().hex[:8]}", at=datetime.now(UTC) - timedelta(hours=1)
            ).model_dump_json(),
            "stale",
        ),
    ],
    ids=[
        "invalid-json",
        "zero-quantity",
        "negative-quantity",
        "unknown-type",
        "candle-on-order-key",
        "over-128-kb",
        "not-risk-approved",
        "an-hour-old",
    ],
)
def test_invalid_order_request_is_dead_lettered_with_its_reason_and_the_next_one_runs(
    broker: Vhost, body: str, reason: str
) -> None:
    # The session's DLQ may hold an earlier test's dead order (tests share a vhost per process): start empty.
    with broker.connection() as conn:
        conn.default_channel.queue_purge(MASTERTRADE.dead_letter_prefix + "order_requests")
    raw_publish(broker, body, "mastertrade.orders", "order.request.BTCUSDT", content_type="application/json")
    good = publish(order_request(f"req-{uuid.uuid4().hex[:8]}"))
    assert wait_until(lambda: entry("order_requests", good)), "worker stopped after a bad message"
    ((dead_body, headers),) = dead_letters(broker, "order_requests", 1)
    assert dead_body == body
    assert headers[REASON] == reason
    assert headers[QUEUE] == "order_requests"
    assert headers[ORIGINAL_ROUTING_KEY] == "order.request.BTCUSDT"
    assert headers["x-tradebus-error"]


@pytest.mark.parametrize(
    ("content_type", "headers"),
    [
        ("application/x-python-serialize", {}),
        ("application/x-python-serialize", {"task": "tradebus.execution.execute_order", "id": "t-pickle"}),
        ("application/x-yaml", {}),
    ],
    ids=["pickle", "pickled-celery-task", "yaml"],
)
def test_message_that_is_not_json_is_dead_lettered_unread(
    broker: Vhost, content_type: str, headers: dict[str, str]
) -> None:
    body = b"\x80\x04\x95 pretend this is a pickle"
    with Connection(broker.url, transport_options={"confirm_publish": True}) as conn:
        Producer(conn.channel()).publish(
            body,
            exchange="mastertrade.orders",
            routing_key="order.request.BTCUSDT",
            content_type=content_type,
            content_encoding="binary",
            headers=headers,
        )
    ((_, dead_headers),) = dead_letters(broker, "order_requests", 1)
    assert dead_headers[REASON] == "unsupported_content_type"
    assert content_type in dead_headers["x-tradebus-error"]


def test_malformed_celery_task_message_is_dead_lettered_not_dropped(broker: Vhost) -> None:
    raw_publish(
        broker,
        json.dumps({"not": "a task body"}),
        "mastertrade.orders",
        "order.request.BTCUSDT",
        content_type="application/json",
        headers={"task": "tradebus.execution.execute_order", "id": "t-malformed"},
    )
    ((body, headers),) = dead_letters(broker, "order_requests", 1)
    assert json.loads(body) == {"not": "a task body"}
    assert headers[REASON] == "unknown_message_type"


def test_stage_that_fails_dead_letters_its_message_with_the_error(
    broker: Vhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.backtest import record_signal

    def boom(message: object) -> None:
        raise RuntimeError("strategy store unavailable")

    monkeypatch.setattr(record_signal, "handler", boom)
    message = signal(f"bt-{uuid.uuid4().hex[:8]}", backtest=True)
    publish(message)
    ((body, headers),) = dead_letters(broker, "backtest_signals", 1)
    assert json.loads(body)["strategy_id"] == message.strategy_id
    assert headers[REASON] == "stage_error"
    assert headers["x-tradebus-error"] == "RuntimeError: strategy store unavailable"


def test_signal_marked_backtest_on_a_live_key_is_dead_lettered_never_evaluated(broker: Vhost) -> None:
    message = signal(f"bt-{uuid.uuid4().hex[:8]}", backtest=True)
    live_key = f"signal.BTCUSDT.{message.strategy_id}"
    raw_publish(
        broker, message.model_dump_json(), "mastertrade.trading", live_key, content_type="application/json"
    )
    ((_, headers),) = dead_letters(broker, "trading_signals", 1)
    assert headers[REASON] == "misrouted"
    assert headers[ORIGINAL_ROUTING_KEY] == live_key
    assert not [e for e in recorder.received("trading_signals") if e["routing_key"] == live_key]


def test_body_that_is_not_utf8_reaches_the_dlq_byte_for_byte(broker: Vhost) -> None:
    body = bytes([0xFF, 0xFE]) + b" is neither UTF-8 nor JSON"
    with Connection(broker.url, transport_options={"confirm_publish": True}) as conn:
        Producer(conn.channel()).publish(
            body,
            exchange="mastertrade.orders",
            routing_key="order.request.BTCUSDT",
            content_type="application/json",
        )
        channel = conn.channel()
        got = wait_until(lambda: channel.basic_get("dlq.order_requests", no_ack=True))
    assert got is not None
    raw = got.body if isinstance(got.body, bytes) else got.body.encode("utf-8", "surrogateescape")
    assert raw == body
    assert got.headers[REASON] == "invalid_json"


def test_celery_message_naming_another_task_on_a_stage_queue_runs_the_stage_not_that_task(
    broker: Vhost,
) -> None:
    order = order_request(f"req-{uuid.uuid4().hex[:8]}")
    result = app.send_task(
        "tradebus.monitoring.health_report",
        args=[order.model_dump_json()],
        exchange="mastertrade.orders",
        routing_key=order.routing_key,
    )
    got = wait_until(lambda: entry("order_requests", result.id))
    assert got is not None and got["stage"] == "tradebus.execution.execute_order"


def test_message_without_an_id_gets_the_same_id_at_every_delivery(broker: Vhost, fresh_state: str) -> None:
    body = order_request(f"req-{uuid.uuid4().hex[:8]}").model_dump_json()
    for _ in range(2):
        raw_publish(
            broker, body, "mastertrade.orders", "order.request.BTCUSDT", content_type="application/json"
        )
    got = wait_until(lambda: len(on("order_requests", lambda e: e["id"].startswith("sha256-"))) >= 2)
    ids = {e["id"] for e in on("order_requests", lambda e: e["id"].startswith("sha256-"))}
    assert got and len(ids) == 1


def test_a_stage_message_an_operator_revokes_is_dead_lettered_not_dropped(broker: Vhost) -> None:
    message_id = f"revoked-{uuid.uuid4().hex[:8]}"
    app.control.revoke(message_id)

    def worker_knows() -> bool:  # the revocation reached the worker's remote control
        answers = app.control.inspect(timeout=1.0).revoked() or {}
        return any(message_id in ids for ids in answers.values())

    assert wait_until(worker_knows, timeout=30), "the worker never heard of the revocation"
    raw_publish(
        broker,
        order_request(f"req-{uuid.uuid4().hex[:8]}").model_dump_json(),
        "mastertrade.orders",
        "order.request.BTCUSDT",
        content_type="application/json",
        message_id=message_id,
    )
    ((_, headers),) = dead_letters(broker, "order_requests", 1)
    assert headers[REASON] == "revoked"
    assert headers["x-tradebus-original-message-id"] == message_id
    assert entry("order_requests", message_id) is None, "the revoked order ran"


def test_a_message_redelivered_more_than_five_times_is_dead_lettered_as_a_likely_crasher(
    broker: Vhost, fresh_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real redeliveries: the handler gives the delivery back to RabbitMQ each time, as a worker process that
    dies on it would (unacknowledged, requeued), and the broker hands it out again marked redelivered."""
    from celery.exceptions import Reject

    from tasks.backtest import record_signal

    seen: list[tuple[str, bool]] = []

    def crasher(message: object) -> None:
        request = record_signal.request
        seen.append((request.id, bool((request.delivery_info or {}).get("redelivered"))))
        raise Reject("this message kills whoever runs it", requeue=True)

    monkeypatch.setattr(record_signal, "handler", crasher)
    message = signal(f"bt-{uuid.uuid4().hex[:8]}", backtest=True)
    message_id = publish(message)
    ((_, headers),) = dead_letters(broker, "backtest_signals", 1, timeout=60)
    assert headers[REASON] == "redelivery_limit"
    assert headers["x-tradebus-original-message-id"] == message_id
    # The first delivery, then MAX_REDELIVERIES redeliveries the broker marked as such, ran the handler; the
    # next redelivery was dead-lettered instead of running it.
    assert seen == [(message_id, False)] + [(message_id, True)] * MAX_REDELIVERIES
    counted = store.client().get(store.key("redeliveries", "backtest_signals", f"{message_id}:0"))
    assert int(counted or 0) == MAX_REDELIVERIES + 1
    assert wait_until(lambda: broker.management.queue("backtest_signals").get("messages") == 0, timeout=20)
    assert len(seen) == MAX_REDELIVERIES + 1
