"""A repeated outcome is the same message: one id for both copies, and a tradebus stage acts on it once.

The ``order_requests`` pool runs with one fault (tests/support/die_before_note.py): the pool process that
publishes an order's updates is SIGKILLed before it notes them published. RabbitMQ delivers the order
again, the redelivery finds the fill booked and publishes the updates again. A plain queue bound to the
order's update key (what MasterTrade's alert system or a pika service would consume) gets both copies with
one message id; the stages of ``strategy_order_updates`` and ``monitoring_order_updates`` each run the
first copy and drop the second (tradebus/seen.py, per queue), and the fill is booked once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Producer

from tests.support.bus import Vhost
from tests.support.die_before_note import DIE_BEFORE_NOTE, DIE_MARKER
from tests.support.wait import new_symbol, on, raw_publish, wait_until
from tradebus import recorder, seen, store
from tradebus.mastertrade import account
from tradebus.mastertrade.messages import OrderRequest, Ticker
from tradebus.mastertrade.samples import order_update
from tradebus.outcomes import outcome_id
from workers.launch import PoolProcess
from workers.run import worker_argv

pytestmark = [pytest.mark.broker, pytest.mark.slow]

UPDATE_QUEUES = ("strategy_order_updates", "monitoring_order_updates")
QUANTITY = 0.5


def start(log: Path, app: str, argv: list[str], env: dict[str, str]) -> PoolProcess:
    """``celery -A app <argv>`` in a process group of its own, logging to ``log``."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
        )
    return PoolProcess(log.stem, process, log)


def consumed(vhost: Vhost, queues: tuple[str, ...], workers: list[PoolProcess]) -> bool:
    """Wait until each of ``queues`` has a consumer (a worker that exited fails the test with its log)."""
    with vhost.connection() as conn:
        channel = conn.channel()

        def ready() -> bool:
            for worker in workers:
                assert worker.process.poll() is None, worker.log.read_text()[-3000:]
            return all(channel.queue_declare(q, passive=True)[2] > 0 for q in queues)

        return bool(wait_until(ready, timeout=90))


@pytest.fixture
def workers(declared_vhost: Vhost, fresh_state: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The faulty order_requests pool and one worker for the two update queues, in a vhost of their own."""
    request_id = f"req-ids-{uuid.uuid4().hex[:10]}"
    marker = tmp_path / "died"
    base = {"TRADEBUS_BROKER_URL": declared_vhost.url, "TRADEBUS_REDIS_PREFIX": fresh_state}
    faulty = {**base, DIE_BEFORE_NOTE: f"fills:{request_id}", DIE_MARKER: str(marker)}
    started = [
        start(
            tmp_path / "order_requests.log",
            "tests.support.die_before_note",
            worker_argv("order_requests"),
            faulty,
        ),
        start(
            tmp_path / "updates.log",
            "tradebus",
            ["worker", "-Q", ",".join(UPDATE_QUEUES), "-n", "updates@%h", "-c", "1", "--loglevel", "INFO"],
            base,
        ),
    ]
    try:
        assert consumed(declared_vhost, ("order_requests", *UPDATE_QUEUES), started), (
            "the workers never consumed"
        )
        yield {"request_id": request_id, "marker": marker, "logs": [p.log for p in started]}
    finally:
        for process in started:
            process.stop()


def observe(vhost: Vhost, routing_key: str) -> str:
    """A plain queue bound to ``routing_key`` on ``mastertrade.orders``, as a non-tradebus consumer has."""
    name = f"observer-{uuid.uuid4().hex[:8]}"
    with vhost.connection() as conn:
        channel = conn.channel()
        channel.queue_declare(name, durable=False, auto_delete=False)
        channel.queue_bind(name, "mastertrade.orders", routing_key)
    return name


def take(vhost: Vhost, queue: str, count: int) -> list[Any]:
    """Wait for ``count`` messages on ``queue`` and take them."""
    got: list[Any] = []
    with vhost.connection() as conn:
        channel = conn.channel()

        def more() -> bool:
            while (message := channel.basic_get(queue, no_ack=True)) is not None:
                got.append(message)
            return len(got) >= count

        wait_until(more, timeout=90)
    return got


def test_an_update_republished_after_its_publisher_died_has_the_first_ones_id_and_runs_once(
    declared_vhost: Vhost, workers: dict[str, Any]
) -> None:
    request_id = workers["request_id"]
    account.record_price("BTCUSDT", 45_000.0)
    order_id = account.order_id_for(request_id)
    observer = observe(declared_vhost, f"order.update.*.{order_id}")
    order = OrderRequest(
        request_id=request_id, strategy_id="ids-test", symbol="BTCUSDT", side="BUY", quantity=QUANTITY
    )
    with Connection(declared_vhost.url, transport_options={"confirm_publish": True}) as conn:
        Producer(conn.channel()).publish(  # as MasterTrade's risk manager would: persistent, its own id
            order.model_dump_json(),
            exchange=order.exchange,
            routing_key=order.routing_key,
            content_type="application/json",
            delivery_mode=2,
            message_id=str(uuid.uuid4()),
        )

    copies = take(declared_vhost, observer, 2)
    logs = "\n".join(log.read_text(errors="replace") for log in workers["logs"])
    assert len(copies) == 2, f"{len(copies)} update(s) on the observer queue; logs:\n{logs[-4000:]}"
    # The fault happened: the publishing process died before its note, and the redelivery published again.
    assert workers["marker"].exists()
    assert "WorkerLostError" in logs
    first, second = copies
    expected_id = outcome_id(request_id, "order_update", 0)
    assert first.properties["message_id"] == second.properties["message_id"] == expected_id
    assert first.body == second.body
    assert json.loads(first.body)["status"] == "filled"

    # Each tradebus stage of the update acted on it once and dropped the repeat (its own per-queue record).
    for queue in UPDATE_QUEUES:
        assert wait_until(lambda q=queue: recorder.metrics().get(f"repeats_dropped:{q}") == 1), (
            f"{queue} never dropped the repeat; logs:\n{logs[-4000:]}"
        )
        assert [e["id"] for e in recorder.received(queue)] == [expected_id]
    blotter = [json.loads(o) for o in store.client().lrange(store.key("monitor", "orders"), 0, -1)]
    assert [o["order_id"] for o in blotter] == [order_id]
    updates_log = workers["logs"][1].read_text(errors="replace")
    assert updates_log.count(f"dropping {expected_id}, a repeat") == len(UPDATE_QUEUES)

    # The order was delivered again (not taken for a repeat: its first delivery never finished), found its
    # fill booked, and was booked once. (The killed process's own record of the first delivery, buffered
    # for up to 50 ms, may have died with it.)
    # The stage's record is written up to 50 ms after it ran: wait for it.
    assert wait_until(lambda: any(e["redelivered"] for e in recorder.received("order_requests")), timeout=20)
    assert wait_until(lambda: recorder.metrics().get("duplicate_deliveries") == 1, timeout=20)
    assert recorder.metrics()["fills"] == 1
    assert account.portfolio().holdings["BTCUSDT"].quantity == QUANTITY


# --- the seen-ids record itself, on the real Redis --------------------------------------------------------


@pytest.mark.usefixtures("fresh_state")
def test_an_id_handled_on_one_queue_is_seen_there_only() -> None:
    message_id = str(uuid.uuid4())
    assert not seen.handled("strategy_order_updates", message_id)
    seen.note("strategy_order_updates", message_id)
    assert seen.handled("strategy_order_updates", message_id)
    assert not seen.handled("monitoring_order_updates", message_id)  # a fan-out copy runs there
    assert store.client().ttl(store.key("seen", "strategy_order_updates")) > 0


@pytest.mark.usefixtures("fresh_state")
def test_the_record_keeps_only_the_newest_ids_and_those_of_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(seen, "KEEP", 3)
    ids = [f"m-{i}" for i in range(5)]
    for message_id in ids:
        seen.note("q", message_id)
    assert [seen.handled("q", m) for m in ids] == [False, False, True, True, True]
    assert store.client().zcard(store.key("seen", "q")) == 3
    # One noted more than a window ago counts as not handled, and the next note drops it.
    store.client().zadd(store.key("seen", "q"), {"m-old": time.time() - seen.WINDOW_SECONDS - 1})
    assert not seen.handled("q", "m-old")
    seen.note("q", "m-5")
    assert store.client().zscore(store.key("seen", "q"), "m-old") is None


# --- the stages' drop, on the session's worker ------------------------------------------------------------


@pytest.mark.usefixtures("celery_session_worker", "fresh_state")
def test_a_stage_drops_a_persistent_message_whose_id_it_handled_and_runs_a_transient_one_again(
    broker: Vhost,
) -> None:
    update, message_id = order_update(order_id=f"order-{uuid.uuid4().hex[:10]}"), str(uuid.uuid4())
    ticker, ticker_id = Ticker(symbol=new_symbol(), price=101.0), str(uuid.uuid4())
    for _ in range(2):  # each copy after the first has run, as a republished outcome arrives
        raw_publish(
            broker,
            update.model_dump_json(),
            update.exchange,
            update.routing_key,
            content_type="application/json",
            delivery_mode=2,
            message_id=message_id,
        )
        raw_publish(  # market data is transient: no id record, a repeat runs (it changes nothing)
            broker,
            ticker.model_dump_json(),
            ticker.exchange,
            ticker.routing_key,
            content_type="application/json",
            delivery_mode=1,
            message_id=ticker_id,
        )
        assert wait_until(lambda: seen.handled("strategy_order_updates", message_id))  # the first has run
    assert wait_until(lambda: recorder.metrics().get("repeats_dropped:strategy_order_updates") == 1)
    assert wait_until(lambda: len(on("ticker_updates", lambda e: e["id"] == ticker_id)) == 2)
    assert len(on("strategy_order_updates", lambda e: e["id"] == message_id)) == 1
    assert "repeats_dropped:ticker_updates" not in recorder.metrics()


@pytest.mark.usefixtures("fresh_state")
def test_a_letrade_subscriber_hands_a_repeated_event_to_its_handler_once(letrade_vhost: Vhost) -> None:
    from tests.support.letrade_samples import PAYLOADS
    from tradebus.letrade.bus import LetradeBus

    got: list[dict[str, Any]] = []
    with LetradeBus(letrade_vhost.url, source="exchange_connector") as bus:
        bus.subscribe("events.trade_executed", lambda topic, payload: got.append(payload))
        first = bus.message("events.trade_executed", {**PAYLOADS["trade_executed"][1], "strategy_id": 901})
        bus.send(first)
        bus.send(first)  # the connector sends its event again after a crash: the same id
        # Positive control behind the copy: another event, so the copy has been taken once this one is.
        control = bus.message("events.trade_executed", {**PAYLOADS["trade_executed"][1], "strategy_id": 902})
        bus.send(control)
        assert wait_until(lambda: bus.drain(0.2) >= 0 and len(got) >= 2 and got[-1]["strategy_id"] == 902, 20)
        bus.drain(0.5)
    assert [p["strategy_id"] for p in got] == [901, 902]
