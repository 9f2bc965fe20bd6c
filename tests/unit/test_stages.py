"""Stage tasks as data: names, queues, acknowledgement, and what ``.delay()`` refuses. No broker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.bus import MASTERTRADE
from tradebus import app
from tradebus.errors import WrongStage
from tradebus.mastertrade.samples import candle, order_request, signal
from tradebus.registry import stage_tasks

app.loader.import_default_modules()


def test_every_stage_queue_has_exactly_one_stage_task_named_after_its_module() -> None:
    stages = stage_tasks(app)
    assert set(stages) == {q.name for q in MASTERTRADE.stage_queues}
    for queue, task in stages.items():
        module = task.run.__module__.removeprefix("tasks.")
        assert task.name == f"tradebus.{module}.{task.run.__name__}", queue
    assert len({t.name for t in stages.values()}) == len(stages)


def test_every_stage_is_configured_to_ack_late_and_critical_ones_to_requeue_on_worker_loss() -> None:
    stages = stage_tasks(app)
    assert all(
        task.acks_late and not task.acks_on_failure and not task.acks_on_timeout for task in stages.values()
    )
    for queue in ("order_requests", "trading_signals"):
        assert stages[queue].reject_on_worker_lost
    assert not stages["market_data"].reject_on_worker_lost


def test_delay_refuses_a_message_its_stage_does_not_accept() -> None:
    from tasks.execution import execute_order

    with pytest.raises(WrongStage, match="accepts OrderRequest, not 'market_data'"):
        execute_order.delay(candle())
    with pytest.raises(WrongStage, match="exactly one message"):
        execute_order.delay(order_request(), order_request())


def test_backtest_signal_cannot_be_handed_to_the_risk_stage() -> None:
    from tasks.risk import evaluate_signal

    with pytest.raises(WrongStage, match="never reaches trading_signals"):
        evaluate_signal.delay(signal(backtest=True))


def test_config_reads_the_environment_and_accepts_json_only() -> None:
    code = (
        "from tradebus import app; c = app.conf; print(c.broker_url); print(c.result_backend); "
        "print(c.accept_content, c.task_serializer, c.result_serializer, c.event_serializer)"
    )
    env = {
        **os.environ,
        "TRADEBUS_BROKER_URL": "amqp://u:p@rabbit.example:5672/trading",
        "TRADEBUS_REDIS_URL": "redis://cache.example:6379/2",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "amqp://u:p@rabbit.example:5672/trading",
        "redis://cache.example:6379/2",
        "['json'] json json json",
    ]


def test_celery_configuration_leaves_the_routing_data_as_declared() -> None:
    assert set(app.amqp.queues) >= {q.name for q in MASTERTRADE.stage_queues}
    assert all(q.exchange is None for q in app.topology.stage_queues)
