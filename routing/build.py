"""Factories for the exchanges and queues every profile declares: one way to make each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kombu import Exchange, Queue, binding

from routing.match import ALTERNATE_EXCHANGE


def fanout_exchange(name: str) -> Exchange:
    """A durable fanout exchange (what keeps whatever a topic exchange could not route)."""
    return Exchange(name, type="fanout", durable=True, auto_delete=False)


def exchange(name: str, alternate: Exchange | None, type: str = "topic") -> Exchange:
    """A durable exchange of ``type`` whose unroutable messages go to ``alternate``."""
    arguments = {ALTERNATE_EXCHANGE: alternate.name} if alternate is not None else None
    return Exchange(name, type=type, durable=True, auto_delete=False, arguments=arguments)


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
