"""A batch run in this process (``tradebus.batch``'s ``run_batch``, tradebus/batching.py) against the
real app and Redis (a prefix of the test's own): each delivery of a batch runs as itself.

No worker: the batch task is called as a pool process would, with deliveries as the worker's consumer
builds them (tradebus/consumer.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery import current_task
from celery._state import pop_current_task, push_current_task

from tradebus import app, recorder, seen
from tradebus.batching import BATCH_TASK, BatchMessage, BatchRequest, run_batch
from tradebus.errors import DeliveriesFailed, SchemaViolation
from tradebus.mastertrade.messages import MarketData, Ticker
from tradebus.outcomes import outcome_id
from tradebus.publisher import PERSISTENT
from tradebus.stage import delivery_id

pytestmark = [pytest.mark.broker]
STRATEGY = "tradebus.strategy.on_market_data"
MONITOR = "tradebus.monitoring.on_ticker"


def entry(body: str, routing_key: str, persistent: bool = False) -> dict[str, Any]:
    """One delivery of a batch, as tradebus/batching.py ``item`` makes it."""
    message_id = f"m-{uuid.uuid4().hex}"
    properties: dict[str, Any] = {"message_id": message_id}
    if persistent:
        properties["delivery_mode"] = PERSISTENT
    return {
        "body": body,
        "id": message_id,
        "headers": {"x-tradebus-content-type": "application/json"},
        "properties": properties,
        "delivery_info": {"exchange": "mastertrade.market", "routing_key": routing_key, "redelivered": False},
    }


def run(stage: str, batch: list[dict[str, Any]]) -> int:
    """``run_batch`` as the batch task runs in a pool process: Celery's tracer made it the current task."""
    task = app.tasks[BATCH_TASK]
    push_current_task(task)
    task.push_request(id=f"batch-{uuid.uuid4().hex}")
    try:
        return run_batch(task, stage, batch)
    finally:
        task.pop_request()
        pop_current_task()


def candle(symbol: str) -> dict[str, Any]:
    body = MarketData(
        symbol=symbol, interval="1m", open=1.0, high=2.0, low=0.5, close=1.5, volume=10.0
    ).model_dump_json()
    return entry(body, f"market.data.{symbol}")


def tick(symbol: str, price: float) -> dict[str, Any]:
    return entry(Ticker(symbol=symbol, price=price).model_dump_json(), f"ticker.{symbol}", persistent=True)


@pytest.fixture
def stage(fresh_state: str) -> Iterator[Any]:
    """A stage whose handler and batch handler a test replaces, put back afterwards."""
    app.loader.import_default_modules()
    patched: list[Any] = []

    def get(name: str) -> Any:
        patched.append(app.tasks[name])
        return patched[-1]

    yield get
    for task in patched:
        task.__dict__.pop("handler", None)
        task.__dict__.pop("batch_handler", None)


def test_each_delivery_of_a_batch_is_the_current_task_so_two_signals_get_two_ids(stage: Any) -> None:
    strategy = stage(STRATEGY)
    seen_ids: list[tuple[str, str]] = []
    strategy.handler = lambda message: seen_ids.append(
        (outcome_id(delivery_id(), "trading_signal"), current_task.request.id)
    )
    batch = [candle("AAAUSDT"), candle("BBBUSDT")]
    assert run(STRATEGY, batch) == 2
    # Each signal's outcome id derives from its own candle, not the batch: risk takes both.
    assert seen_ids == [(outcome_id(e["id"], "trading_signal"), e["id"]) for e in batch]
    assert len({signal_id for signal_id, _ in seen_ids}) == 2


def test_a_failed_batch_handler_runs_each_message_alone_once_recorded_and_noted_once(stage: Any) -> None:
    monitor = stage(MONITOR)
    handled: list[str] = []

    def fail(messages: list[Any]) -> None:
        raise RuntimeError("the batch handler broke")

    monitor.batch_handler = fail
    monitor.handler = lambda message: handled.append(message.symbol)
    batch = [tick("CCCUSDT", 1.0), tick("DDDUSDT", 2.0)]
    assert run(MONITOR, batch) == 2
    # Not dropped as repeats of themselves, recorded once each, noted as handled once they were.
    assert handled == ["CCCUSDT", "DDDUSDT"]
    recorder._buffer.flush()  # what the recorder's thread writes every few milliseconds, written now
    assert recorder.counts().get("ticker_updates") == 2
    assert all(seen.handled("ticker_updates", e["id"]) for e in batch)


def test_a_batch_handler_notes_nothing_handled_before_it_ran(stage: Any) -> None:
    monitor = stage(MONITOR)
    noted: list[bool] = []
    batch = [tick("EEEUSDT", 1.0), tick("FFFUSDT", 2.0)]
    monitor.batch_handler = lambda _: noted.extend(seen.handled("ticker_updates", e["id"]) for e in batch)
    assert run(MONITOR, batch) == 2
    assert noted == [False, False]  # the positive control: noted once it ran
    assert all(seen.handled("ticker_updates", e["id"]) for e in batch)


def test_a_delivery_that_cannot_even_be_dead_lettered_fails_alone_the_rest_is_acknowledged(
    stage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_batching import Channel, delivery

    monitor = stage(MONITOR)

    def handler(message: Any) -> None:
        if message.symbol == "BADUSDT":
            raise SchemaViolation("breaks a rule")

    def unconfirmed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the broker did not confirm the dead letter")

    monitor.__dict__.pop("batch_handler", None)
    monkeypatch.setattr(type(monitor), "batch_handler", None)
    monitor.handler = handler
    monkeypatch.setattr(monitor, "dead_letter", unconfirmed)
    batch = [tick("GGGUSDT", 1.0), tick("BADUSDT", 2.0), tick("HHHUSDT", 3.0)]
    with pytest.raises(DeliveriesFailed) as failed:
        run(MONITOR, batch)
    assert failed.value.positions == [1]

    # The worker's side: the batch task's request acknowledges the others, requeues the failed one.
    channel, done = Channel(), []
    message = BatchMessage([delivery(channel, t) for t in (1, 2, 3)], MONITOR, batch, lambda: done.append(1))
    request = BatchRequest(message, app=app, task=app.tasks[BATCH_TASK])
    try:
        raise failed.value
    except DeliveriesFailed:
        request.on_failure(ExceptionInfo())
    assert channel.acks == [1, 3] and channel.rejects == [(2, True)] and done == [1]
