"""Quorum queues: how a profile's queue becomes one, and the policy keys that go with it.

A quorum queue is replicated by Raft to ``QUORUM_INITIAL_GROUP_SIZE`` nodes (fewer when the cluster has
fewer: one on a single node), and survives the loss of a minority of them. What RabbitMQ 3.10 accepts on
one, checked live (tests/live/test_quorum_live.py): message TTL, ``x-max-length`` with ``drop-head`` or
``reject-publish``, ``x-delivery-limit``, ``x-dead-letter-strategy: at-least-once`` (effective with
``reject-publish`` only); it refuses ``x-max-priority``, exclusive, auto-delete and non-durable queues and
global QoS. Each decision per queue is in docs/topology.md, "Quorum queues".

Only the type and the replication factor are declared arguments (they are fixed for the queue's life);
overflow, dead-letter strategy and delivery limit are policy keys (``policy_keys``), so they can change
without moving the queue, exactly like the dead-letter policies of the classic topology.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kombu import Exchange, Queue

from routing.build import durable_queue
from routing.model import QUEUE_TYPE_ARGUMENT, QUORUM

#: Members of each quorum queue: a majority (2 of 3) must be up for it to take and give messages.
QUORUM_INITIAL_GROUP_SIZE = 3
#: The broker dead-letters a message (``x-death`` reason ``delivery_limit``) once it came back more often
#: than this. One more than the stages' own limit (redeliveries.MAX_REDELIVERIES): the stage sees the
#: 7th delivery first and dead-letters it with ``redelivery_limit`` and its headers; the broker's limit is
#: the backstop for a delivery that dies before the stage can look at it.
BROKER_DELIVERY_LIMIT = 6
#: A dead-letter queue's delivery limit: in effect none. RabbitMQ 4 gives a quorum queue without one a
#: limit of 20, and ``tradebus dlq list`` reads a DLQ by taking and giving back (a delivery each time), so
#: its dead letters would be dropped after ~20 listings. RabbitMQ 4 takes ``-1`` for "no limit", but 3.x
#: takes integers >= 0 only ("-1 is not a valid delivery limit", checked live on 3.10.8); a million is
#: valid everywhere (docs/topology.md, "Quorum queues").
DEAD_LETTER_DELIVERY_LIMIT = 1_000_000
REJECT_PUBLISH = "reject-publish"
AT_LEAST_ONCE = "at-least-once"


def quorum_arguments(arguments: dict[str, Any] | None) -> dict[str, Any]:
    """``arguments`` plus the ones that make the queue a quorum queue on three nodes."""
    return {
        **(arguments or {}),
        QUEUE_TYPE_ARGUMENT: QUORUM,
        "x-quorum-initial-group-size": QUORUM_INITIAL_GROUP_SIZE,
    }


def as_quorum(queue: Queue, extra_bindings: Iterable[tuple[Exchange, str]] = ()) -> Queue:
    """A quorum-queue copy of ``queue``: same name, bindings (plus ``extra_bindings``) and arguments."""
    bindings = [(b.exchange, b.routing_key or "") for b in queue.bindings]
    return durable_queue(queue.name, [*bindings, *extra_bindings], quorum_arguments(queue.queue_arguments))


def policy_keys(*, consumed: bool) -> dict[str, Any]:
    """What a quorum queue's policy adds to its dead-lettering: push back on the publisher when full
    (``reject-publish``, which at-least-once dead-lettering needs), dead letters that cannot vanish between
    nodes, and the broker's delivery limit: on a queue a worker consumes, BROKER_DELIVERY_LIMIT.

    A dead-letter queue gets DEAD_LETTER_DELIVERY_LIMIT, in effect none: ``tradebus dlq list`` reads it by
    taking messages and giving them back, which counts as a delivery on a quorum queue.
    """
    return {
        "overflow": REJECT_PUBLISH,
        "dead-letter-strategy": AT_LEAST_ONCE,
        "delivery-limit": BROKER_DELIVERY_LIMIT if consumed else DEAD_LETTER_DELIVERY_LIMIT,
    }
