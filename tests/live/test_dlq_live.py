"""Dead-letter tooling on the real broker: list without consuming, replay what is valid, keep the rest."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from kombu import Exchange, Producer, Queue

from tests.support.bus import MASTERTRADE, Vhost
from tests.support.wait import new_symbol, on, raw_publish, wait_until
from tradebus import app, publish
from tradebus.deadletter import dead_letter
from tradebus.mastertrade import account
from tradebus.mastertrade.messages import OrderRequest, Ticker
from tradebus.mastertrade.samples import order_request, order_update
from tradebus.ops import dlq
from tradebus.ops.cli import main

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("celery_session_worker")]


@pytest.fixture
def empty_order_dlq(broker: Vhost) -> Vhost:
    with broker.connection() as conn:
        conn.default_channel.queue_purge("dlq.order_requests")
        conn.default_channel.queue_purge("dlq.strategy_order_updates")
    return broker


def wait_depth(vhost: Vhost, queue: str, count: int) -> int:
    with vhost.connection() as conn:
        return wait_until(lambda: dlq.depth(conn, queue) >= count and dlq.depth(conn, queue))


def test_list_shows_reason_route_count_and_age_and_leaves_the_dead_letters(empty_order_dlq: Vhost) -> None:
    body = json.dumps(order_request().model_dump(mode="json") | {"quantity": 0})
    raw_publish(
        empty_order_dlq, body, "mastertrade.orders", "order.request.BTCUSDT", content_type="application/json"
    )
    assert wait_depth(empty_order_dlq, "dlq.order_requests", 1) == 1
    result = CliRunner().invoke(main, ["dlq", "list", "order_requests"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "dlq.order_requests: 1 dead letter(s)"
    (row,) = [line.split() for line in lines[3:]]
    # reason, exchange, routing key, count, retries (none: refused at once), age
    assert row[:5] == ["schema_violation", "mastertrade.orders", "order.request.BTCUSDT", "1", "0"]
    assert row[5].endswith("s")  # its age, in seconds
    with empty_order_dlq.connection() as conn:
        assert dlq.depth(conn, "dlq.order_requests") == 1


def test_a_message_the_broker_dead_lettered_is_explained_by_its_x_death(declared_vhost: Vhost) -> None:
    with declared_vhost.connection() as conn:
        conn.transport_options["confirm_publish"] = True
        Producer(conn.channel()).publish(
            "{}",
            exchange="mastertrade.orders",
            routing_key="order.request.ETHUSDT",
            expiration=0.001,
            message_id="expired-1",
        )
        wait_until(lambda: dlq.depth(conn, "dlq.order_requests") == 1)
        (letter,) = dlq.peek(MASTERTRADE, conn, "dlq.order_requests", 10)
        assert dlq.depth(conn, "dlq.order_requests") == 1
    assert (letter.reason, letter.origin_queue, letter.exchange, letter.routing_key, letter.count) == (
        "expired",
        "order_requests",
        "mastertrade.orders",
        "order.request.ETHUSDT",
        1,
    )
    assert letter.message_id == "expired-1"
    assert letter.age_seconds is not None and 0 <= letter.age_seconds < 60


def test_replay_republishes_valid_dead_letters_with_a_linked_id_and_keeps_the_invalid(
    empty_order_dlq: Vhost, fresh_state: str
) -> None:
    symbol = new_symbol()
    account.record_price(symbol, 20.0)
    valid = OrderRequest(
        request_id=f"req-{uuid.uuid4().hex[:10]}",
        strategy_id="s-1",
        symbol=symbol,
        side="BUY",
        quantity=3.0,
        timestamp=datetime.now(UTC),
    )
    dead_letter(
        app,
        valid.model_dump_json().encode(),
        queue="order_requests",
        reason="max_retries",
        error="still failing after 3 retries: ConnectionError",
        message_id="old-id-1",
        delivery_info={"exchange": "mastertrade.orders", "routing_key": valid.routing_key},
    )
    invalid = json.dumps(valid.model_dump(mode="json") | {"quantity": -1})
    dead_letter(
        app,
        invalid.encode(),
        queue="order_requests",
        reason="schema_violation",
        error="quantity",
        message_id="old-id-2",
        delivery_info={"exchange": "mastertrade.orders", "routing_key": valid.routing_key},
    )
    assert wait_depth(empty_order_dlq, "dlq.order_requests", 2) == 2

    dry = CliRunner().invoke(main, ["dlq", "replay", "order_requests", "--dry-run"])
    assert "would replay" in dry.output and "still invalid" in dry.output
    assert "0 replayed, 2 left in dlq.order_requests" in dry.output

    with empty_order_dlq.connection() as conn:
        tap = Queue(
            f"tap-{uuid.uuid4().hex[:6]}",
            Exchange("mastertrade.orders", type="topic", no_declare=True),
            routing_key=f"order.request.{symbol}",
            exclusive=True,
        )
        tap(conn.default_channel).declare()
        results = dlq.replay(app, conn, "dlq.order_requests", limit=10)
        assert [r.outcome for r in results] == ["replayed", "still invalid"]
        assert dlq.depth(conn, "dlq.order_requests") == 1
        copy = wait_until(lambda: conn.default_channel.basic_get(tap.name, no_ack=True))
    assert copy.headers["x-tradebus-replay-of"] == "old-id-1"
    assert copy.properties["message_id"] == results[0].new_message_id != "old-id-1"
    assert wait_until(lambda: symbol in account.portfolio().holdings), "the replayed order was not filled"
    assert account.portfolio().holdings[symbol].quantity == 3.0


def test_replay_of_a_fanned_out_message_goes_only_to_the_queue_that_failed_it(
    empty_order_dlq: Vhost, fresh_state: str
) -> None:
    update = order_update("filled", f"order-{uuid.uuid4().hex[:8]}")
    dead_letter(
        app,
        update.model_dump_json().encode(),
        queue="strategy_order_updates",
        reason="max_retries",
        error="redis down",
        message_id="old-update",
        delivery_info={"exchange": "mastertrade.orders", "routing_key": update.routing_key},
    )
    assert wait_depth(empty_order_dlq, "dlq.strategy_order_updates", 1) == 1
    with empty_order_dlq.connection() as conn:
        (result,) = dlq.replay(app, conn, "dlq.strategy_order_updates", limit=10)
    assert result.detail == "'strategy_order_updates' on mastertrade.retry"
    assert wait_until(lambda: on("strategy_order_updates", lambda e: e["id"] == result.new_message_id))
    # A later update on the same exchange reaches every subscriber: once they have recorded it, they have
    # had the replay too had it been sent to them (it was queued first: the replay waits for its confirm).
    later = order_update("filled", f"order-{uuid.uuid4().hex[:8]}")
    later_id = publish(later)
    subscribers = ("order_updates", "monitoring_order_updates", "strategy_order_updates")
    for queue in subscribers:
        got = wait_until(lambda q=queue: on(q, lambda e: e["id"] == later_id))
        assert got, f"{queue} never got the update"
    replayed = {q: on(q, lambda e: e["id"] == result.new_message_id) for q in subscribers}
    assert [q for q, got in replayed.items() if got] == ["strategy_order_updates"]
    assert len(replayed["strategy_order_updates"]) == 1


def test_replay_keeps_back_what_failed_a_signature_check_and_stale_market_data(declared_vhost: Vhost) -> None:
    with declared_vhost.connection() as conn:
        conn.transport_options["confirm_publish"] = True
        producer = Producer(conn.channel())
        producer.publish(  # a dead letter as a stage writes it: a forged order refused for its signature
            order_request().model_dump_json(), exchange="mastertrade.dlx", routing_key="dlq.order_requests",
            headers={"x-tradebus-reason": "bad_signature", "x-tradebus-queue": "order_requests",
                     "x-tradebus-original-exchange": "mastertrade.orders",
                     "x-tradebus-original-routing-key": "order.request.BTCUSDT"},
        )  # fmt: skip
        ticker = Ticker(symbol="BTCUSDT", price=45_000.0)
        producer.publish(
            ticker.model_dump_json(), exchange="", routing_key="ticker_updates", expiration=0.001
        )
        wait_until(lambda: dlq.depth(conn, "dlq.ticker_updates") == 1)
        signed = dlq.replay(app, conn, "dlq.order_requests", limit=10)
        stale = dlq.replay(app, conn, "dlq.ticker_updates", limit=10)
        assert (dlq.depth(conn, "dlq.order_requests"), dlq.depth(conn, "dlq.ticker_updates")) == (1, 1)
    assert [(r.outcome, r.letter.reason) for r in signed] == [("kept", "bad_signature")]
    assert [(r.outcome, r.letter.reason) for r in stale] == [("kept", "expired")]
    assert "stale price" in stale[0].detail
