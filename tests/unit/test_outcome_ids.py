"""Outcome ids (tradebus/outcomes.py): computed from what produced a message, so a republished copy has
the same id as the first and every other message has another."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tradebus.mastertrade import account
from tradebus.mastertrade.messages import OrderRequest, OrderUpdate
from tradebus.outcomes import NAMESPACE, outcome_id, outcome_ids


def test_an_outcome_id_is_the_same_at_every_computation_and_a_uuid5_of_the_namespace() -> None:
    first = outcome_id("req-1", "order_update", 0)
    assert first == outcome_id("req-1", "order_update", 0)
    assert first == str(uuid.uuid5(NAMESPACE, "req-1:order_update:0"))
    assert uuid.UUID(first).version == 5


def test_an_outcome_id_differs_by_source_kind_and_position() -> None:
    ids = {
        outcome_id(source, kind, index)
        for source in ("req-1", "req-2")
        for kind in ("order_update", "risk_breach")
        for index in range(3)
    }
    assert len(ids) == 2 * 2 * 3


def test_the_ids_of_an_outcome_follow_its_messages_in_order() -> None:
    kinds = ["order_request", "circuit_breaker", "risk_breach", "risk_breach"]
    ids = outcome_ids("signal-key", kinds)
    assert ids == [outcome_id("signal-key", kind, i) for i, kind in enumerate(kinds)]
    assert len(set(ids)) == len(kinds)  # two breaches of one decision still have ids of their own


def test_an_outcome_without_a_source_has_no_id() -> None:
    with pytest.raises(ValueError, match="needs the id"):
        outcome_id("", "order_update")


def _update(status: str, filled: float) -> OrderUpdate:
    return OrderUpdate(
        order_id="order-1",
        request_id="req-ids",
        symbol="BTCUSDT",
        side="BUY",
        status=status,  # type: ignore[arg-type]
        filled_quantity=filled,
        average_fill_price=45_000.0,
        filled_at=datetime.now(UTC),
    )


def test_account_publishes_each_update_of_a_fill_with_its_derived_id_the_same_at_a_second_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``account.publish_once`` hands the publisher: a partial and the fill, ids from the request id;
    the publication claim is left out (the live test runs it on Redis)."""
    published: list[tuple[str, str | None]] = []

    def publish_once(
        _client: Any, _outcome: str, messages: Any, _claimant: str, publish: Any, **_: Any
    ) -> bool:
        for message in messages:
            publish(message)
        return True

    monkeypatch.setattr(account.state, "publish_once", publish_once)
    monkeypatch.setattr(account.store, "text_client", lambda: None)
    monkeypatch.setattr(
        account, "publish", lambda message, message_id=None: published.append((message.status, message_id))
    )
    order = OrderRequest(request_id="req-ids", strategy_id="s", symbol="BTCUSDT", side="BUY", quantity=2.0)
    updates = [_update("partial", 1.0), _update("filled", 2.0)]
    for delivery in ("first-delivery", "redelivery"):
        account.publish_once(account.fill_outcome(order), updates, delivery, order.request_id)
    expected = [
        ("partial", outcome_id("req-ids", "order_update", 0)),
        ("filled", outcome_id("req-ids", "order_update", 1)),
    ]
    assert published == expected * 2
