"""The sync LetradeBus's retries (tradebus/letrade/bus.py ``_retry_due``): each due delivery is handled on
its own, so one that fails outside its handler (an ack on a dead channel, Redis down) strands no other.

No broker: the deliveries are stand-ins, already admitted (``parsed``), and the bus never connects.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from tradebus import seen
from tradebus.letrade import simulator
from tradebus.letrade.bus import LetradeBus, _Waiting
from tradebus.retries import RetryPolicy

QUICK = RetryPolicy(max_retries=3, first_delay=0.0, multiplier=2.0)


class Delivery:
    """A stand-in kombu Message: records its ack, or fails it as a dead channel would."""

    def __init__(self, *, ack_fails: bool = False, channel_open: bool = True, persistent: bool = False):
        self.acked, self.ack_fails = False, ack_fails
        self.channel = SimpleNamespace(is_open=channel_open)
        self.properties = {"delivery_mode": 2 if persistent else 1, "message_id": "m-1"}
        self.headers: dict[str, Any] = {}
        self.delivery_info = {"exchange": "letrade.events"}

    def ack(self) -> None:
        if self.ack_fails:
            raise ConnectionError("channel closed")
        self.acked = True


def waiting(delivery: Delivery, handled: list[Delivery]) -> _Waiting:
    candle = next(itertools.islice(simulator.candles(seed=1), 1))
    return _Waiting(0.0, "q", candle.routing_key, delivery, lambda *_: handled.append(delivery), candle, 1)  # type: ignore[arg-type]


def test_one_failing_retry_does_not_strand_the_others() -> None:
    bus, handled = LetradeBus("amqp://guest:guest@localhost//", retry_policy=QUICK), list[Delivery]()
    dead, fine, flaky = Delivery(ack_fails=True, channel_open=False), Delivery(), Delivery(ack_fails=True)
    bus._waiting = [waiting(d, handled) for d in (dead, fine, flaky)]
    bus._retry_due()
    assert handled == [dead, fine, flaky]  # all three ran: the first failure stopped nothing
    assert fine.acked and not dead.acked and not flaky.acked
    # The flaky one waits again on its open channel; the dead channel's is left to the broker's redelivery.
    assert [w.message for w in bus._waiting] == [flaky]
    flaky.ack_fails = False
    bus._retry_due()
    assert flaky.acked and bus._waiting == []


def test_redis_down_when_noting_a_handled_event_is_retried_not_left_unacked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def down(*_: Any) -> None:
        raise ConnectionError("Redis down")

    monkeypatch.setattr(seen, "note", down)
    bus, handled = LetradeBus("amqp://guest:guest@localhost//", retry_policy=QUICK), list[Delivery]()
    delivery = Delivery(persistent=True)
    bus._waiting = [waiting(delivery, handled)]
    bus._retry_due()
    assert handled == [delivery] and not delivery.acked
    assert [(w.message, w.retries) for w in bus._waiting] == [(delivery, 2)]  # waits for its next retry
    monkeypatch.undo()
    monkeypatch.setattr(seen, "note", lambda *_: None)
    bus._retry_due()
    assert delivery.acked and bus._waiting == []
