"""A message whose fill or decision is booked is never refused as stale: when the WAIT after its booking
fell short (NotReplicated), it went to its DLQ, and its replay, however late, must still find the record and
publish what it produced (staleness refuses only a NEW fill or decision)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tradebus import app
from tradebus.errors import NotReplicated
from tradebus.mastertrade import account, samples
from tradebus.mastertrade.errors import StaleMessage

pytestmark = pytest.mark.broker


def _wait_replicas(monkeypatch: pytest.MonkeyPatch, replicas: int) -> None:
    """Each durable write WAITs for ``replicas`` (the shared Redis has none: 1 comes up short at once)."""
    redis = app.settings.redis.model_copy(update={"wait_replicas": replicas, "wait_timeout": 0.01})
    monkeypatch.setattr(app, "settings", app.settings.with_(redis=redis))


def test_an_order_booked_before_its_wait_fell_short_is_replayed_after_the_window_not_refused(
    fresh_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    account.record_price("BTCUSDT", 45_000.0)
    order = samples.order_request(request_id=f"req-{uuid.uuid4().hex[:8]}", quantity=0.01)
    _wait_replicas(monkeypatch, 1)
    with pytest.raises(NotReplicated):
        account.fill(order)  # booked on the master, not acknowledged: retried, then dead-lettered
    _wait_replicas(monkeypatch, 0)
    later = time.time() + account.ORDER_MAX_AGE_SECONDS + 60  # the replay, after the staleness window
    record = account.fill(order, now=later)
    assert record["again"] and record["status"] == "filled" and account.updates_of(record)
    # Positive control: an order never filled, as old, is refused and books nothing.
    other = samples.order_request(request_id=f"req-{uuid.uuid4().hex[:8]}", quantity=0.01)
    with pytest.raises(StaleMessage, match="s old"):
        account.fill(other, now=later)
    assert account.portfolio().holdings["BTCUSDT"].quantity == pytest.approx(0.01)


def test_a_signal_decided_before_its_wait_fell_short_is_replayed_after_the_window_not_refused(
    fresh_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    signal = samples.signal(strategy_id=f"stale-{uuid.uuid4().hex[:6]}")
    _wait_replicas(monkeypatch, 1)
    with pytest.raises(NotReplicated):
        account.decide(signal)
    _wait_replicas(monkeypatch, 0)
    later = time.time() + account.SIGNAL_MAX_AGE_SECONDS + 60
    record = account.decide(signal, now=later)
    assert record["again"] and record["order"] is not None
    old = samples.signal(
        strategy_id=f"stale-{uuid.uuid4().hex[:6]}", at=datetime.now(UTC) - timedelta(days=3)
    )
    with pytest.raises(StaleMessage):
        account.decide(old)
