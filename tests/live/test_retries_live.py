"""Retries on a real broker: transient failures are tried again with the seed's policy, then dead-lettered.

The stages run in the session's in-process worker, so a test can make one fail on purpose.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable

import pytest
import redis

from tests.support.bus import LETRADE, SETTINGS, Vhost
from tests.support.wait import dead_letters, wait_until
from tradebus import publish, recorder, seen
from tradebus.headers import ORIGINAL_ROUTING_KEY, REASON, RETRIES
from tradebus.mastertrade.samples import signal
from tradebus.retries import SEED_POLICY

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("celery_session_worker")]


def failing(times: int, error: Exception, calls: list[float]) -> Callable[[object], None]:
    """A stage handler that raises ``error`` on its first ``times`` calls, noting when each call came."""

    def handler(message: object) -> None:
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise error

    return handler


def test_the_retry_policy_is_the_seeds_three_retries_after_5_10_and_20_seconds() -> None:
    """The seed's policy (``x-max-retries: 3``, ``x-retry-delay: 5000``, ``x-backoff-multiplier: 2``) is what
    every stage of both buses retries with."""
    from tradebus import app
    from tradebus.application import create_app
    from tradebus.registry import stages_of_queues

    seed = {"x-max-retries": 3, "x-retry-delay": 5000, "x-backoff-multiplier": 2}
    assert (SEED_POLICY.max_retries, SEED_POLICY.first_delay * 1000, SEED_POLICY.multiplier) == tuple(
        seed.values()
    )
    assert SEED_POLICY.delays == (5.0, 10.0, 20.0)
    letrade_app = create_app(LETRADE, SETTINGS, main="retries-letrade")
    try:
        for bus in (app, letrade_app):
            stages = [task for tasks in stages_of_queues(bus).values() for task in tasks]
            assert stages, bus.main
            assert {task.name: task.retry_policy for task in stages} == {
                task.name: SEED_POLICY for task in stages
            }
    finally:
        letrade_app.close()


def test_transient_failure_is_retried_after_five_seconds_and_then_succeeds(
    broker: Vhost, fresh_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.backtest import record_signal
    from tradebus import store

    calls: list[float] = []
    fail_once = failing(1, redis.ConnectionError("redis is down"), calls)
    real = record_signal.handler

    def handler(message: object) -> None:
        fail_once(message)  # raises at the first call only
        real(message)

    monkeypatch.setattr(record_signal, "handler", handler)
    message = signal(f"bt-{uuid.uuid4().hex[:8]}", backtest=True)
    kept = store.key("backtest", message.strategy_id)
    message_id = publish(message)
    assert wait_until(lambda: len(calls) >= 2, timeout=30), "the message was not retried"
    # Not before its 5 seconds; the upper bound catches a wrong delay (the next one would be 10 s).
    assert 4.5 <= calls[1] - calls[0] <= 9.5
    # It succeeded: the retry did what the stage does (kept the signal once), under the same message id...
    assert wait_until(lambda: store.client().lrange(kept, 0, -1), timeout=10)
    assert [json.loads(s)["symbol"] for s in store.client().lrange(kept, 0, -1)] == [message.symbol]
    tries = wait_until(
        lambda: (
            sorted(e["retries"] for e in recorder.received("backtest_signals") if e["id"] == message_id)
            == [0, 1]
        )
    )
    assert tries, recorder.received("backtest_signals")
    # ...and was done with: acknowledged (nothing left on the queue or held by the worker), not dead-lettered,
    # not tried again.
    assert wait_until(lambda: queue_empty(broker, "backtest_signals"), timeout=20), "still on the queue"
    assert dead_letters(broker, "backtest_signals", 1, timeout=2) == []
    assert len(calls) == 2
    # Noted as handled under its id once the retry succeeded, so a copy sent again later is dropped.
    assert seen.handled("backtest_signals", message_id)


def queue_empty(vhost: Vhost, queue: str) -> bool:
    """Nothing ready and nothing unacknowledged on ``queue`` (the management API's view)."""
    info = vhost.management.queue(queue)
    return info.get("messages_ready") == 0 and info.get("messages_unacknowledged") == 0


@pytest.mark.slow
def test_transient_failure_that_persists_is_dead_lettered_after_the_third_retry(
    broker: Vhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.backtest import record_signal

    calls: list[float] = []
    monkeypatch.setattr(record_signal, "handler", failing(99, TimeoutError("store timed out"), calls))
    message = signal(f"bt-{uuid.uuid4().hex[:8]}", backtest=True)
    publish(message)
    ((_, headers),) = dead_letters(broker, "backtest_signals", 1, timeout=60)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(calls)]
    assert len(calls) == 4, gaps
    for gap, wanted in zip(gaps, SEED_POLICY.delays, strict=True):
        assert wanted - 0.5 <= gap <= wanted * 1.9, gaps  # the delays grow: 5, 10, 20 seconds
    assert headers[REASON] == "max_retries"
    assert headers[RETRIES] == 3
    assert headers[ORIGINAL_ROUTING_KEY] == message.routing_key
    assert "TimeoutError: store timed out" in headers["x-tradebus-error"]


def test_a_bug_in_a_stage_is_dead_lettered_at_once_not_retried(
    broker: Vhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.backtest import record_signal

    calls: list[float] = []
    monkeypatch.setattr(record_signal, "handler", failing(99, KeyError("position"), calls))
    publish(signal(f"bt-{uuid.uuid4().hex[:8]}", backtest=True))
    ((_, headers),) = dead_letters(broker, "backtest_signals", 1)
    assert headers[REASON] == "stage_error"
    assert headers[RETRIES] == 0
    assert len(calls) == 1
