"""Factories for the exchanges and queues every profile declares: one way to make each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kombu import Exchange, Queue, binding

from routing.match import ALTERNATE_EXCHANGE
from routing.model import EXCHANGES, Policy

#: The prefix of every alternate-exchange policy's name (``tradebus-alternate-exchange.mastertrade.market``).
ALTERNATE_POLICY_PREFIX = "tradebus-alternate-exchange."


def fanout_exchange(name: str) -> Exchange:
    """A durable fanout exchange (what keeps whatever a topic exchange could not route)."""
    return Exchange(name, type="fanout", durable=True, auto_delete=False)


def exchange(name: str, type: str = "topic") -> Exchange:
    """A durable exchange of ``type`` with no arguments: exactly what the seeds' own services declare.

    RabbitMQ refuses a redeclaration whose arguments differ (PRECONDITION_FAILED), so an exchange declared
    with an argument the seed does not write would crash every service that declares it the seed's way.
    What tradebus adds (the alternate exchange) is a policy: ``alternate_exchange_policy``.
    """
    return Exchange(name, type=type, durable=True, auto_delete=False)


def alternate_exchange_policy(exchange: Exchange, alternate: Exchange) -> Policy:
    """The policy that sends what no binding of ``exchange`` matched to ``alternate``."""
    return Policy(
        f"{ALTERNATE_POLICY_PREFIX}{exchange.name}",
        exchange.name,
        {ALTERNATE_EXCHANGE: alternate.name},
        apply_to=EXCHANGES,
    )


def durable_queue(
    name: str, bindings: Iterable[tuple[Exchange, str]], arguments: dict[str, Any] | None = None
) -> Queue:
    """A durable queue bound to each ``(exchange, routing key)`` with exactly ``arguments``."""
    return Queue(
        name,
        bindings=[binding(ex, routing_key=key) for ex, key in bindings],
        durable=True,
        auto_delete=False,
        queue_arguments=dict(arguments or {}),
    )


def bind(queue: Queue, ex: Exchange, routing_key: str) -> Queue:
    """``queue``, also bound to ``ex`` with ``routing_key``."""
    queue.bindings.add(binding(ex, routing_key=routing_key))
    return queue
