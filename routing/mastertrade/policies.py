"""RabbitMQ policies: every exchange's alternate exchange, and dead-lettering for the queues whose declared
arguments do not dead-letter.

What tradebus adds to the seed's exchanges and queues is a policy, never a declared argument: RabbitMQ
refuses a declaration whose arguments differ from the live object's, so an argument the seed does not write
would make every service declaring the seed's way fail at start-up.

The seed declares most queues with a TTL or a length limit but no dead-letter exchange, so an expired or
overflowed message would vanish. Their arguments stay exactly the seed's; a policy per queue (the way
RabbitMQ recommends setting dead-lettering) sends what they expire, overflow or reject to ``dlq.<queue>``,
where ``x-death`` says why. ``dlq.trading_signals`` keeps the seed's 24-hour TTL and hands what expires
there to ``dlq.archive`` instead of dropping it.

Under the quorum topology each quorum queue's one policy, ``tradebus-quorum.<queue>``, carries its
dead-lettering (when its arguments declare none) and the quorum keys (routing/quorum.py ``policy_keys``).
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from routing.build import alternate_exchange_policy
from routing.mastertrade.exchanges import ALTERNATES, DLX
from routing.mastertrade.queues import ARCHIVE_QUEUE, dead_letter_queue_name
from routing.model import Policy
from routing.quorum import policy_keys

DEAD_LETTER_EXCHANGE = "x-dead-letter-exchange"


def _dead_letter_keys(routing_key: str) -> dict[str, Any]:
    return {"dead-letter-exchange": DLX.name, "dead-letter-routing-key": routing_key}


def _dead_letter_to(queue: str, routing_key: str) -> Policy:
    return Policy(f"tradebus-dead-letter.{queue}", queue, _dead_letter_keys(routing_key))


def _needs_policy(arguments: dict[str, Any]) -> bool:
    return DEAD_LETTER_EXCHANGE not in arguments


def _quorum(queue: Queue, dead_letter_key: str | None, *, consumed: bool) -> Policy:
    """A quorum queue's one policy: its dead-lettering unless declared, and the quorum keys."""
    keys = policy_keys(consumed=consumed)
    if dead_letter_key is not None and _needs_policy(queue.queue_arguments or {}):
        keys = _dead_letter_keys(dead_letter_key) | keys
    return Policy(f"tradebus-quorum.{queue.name}", queue.name, keys)


def policies(
    stage_queues: tuple[Queue, ...],
    dead_letter_queues: tuple[Queue, ...],
    *,
    quorum: frozenset[str] = frozenset(),
    alternates: tuple[tuple[Exchange, Exchange], ...] = ALTERNATES,
) -> tuple[Policy, ...]:
    """Each exchange's alternate exchange, a dead-letter policy for each stage queue that declares none, and
    the archive for expiring DLQs; the queues named in ``quorum`` (DLQs too) get their quorum policy
    instead."""
    expiring = {
        q.name
        for q in dead_letter_queues
        if q.name.startswith("dlq.") and "x-message-ttl" in (q.queue_arguments or {})
    }
    return (
        *(alternate_exchange_policy(exchange, alternate) for exchange, alternate in alternates),
        *(
            _quorum(q, dead_letter_queue_name(q.name), consumed=True)
            if q.name in quorum
            else _dead_letter_to(q.name, dead_letter_queue_name(q.name))
            for q in stage_queues
            if q.name in quorum or _needs_policy(q.queue_arguments or {})
        ),
        *(
            _quorum(q, ARCHIVE_QUEUE.name if q.name in expiring else None, consumed=False)
            if q.name in quorum
            else _dead_letter_to(q.name, ARCHIVE_QUEUE.name)
            for q in dead_letter_queues
            # A quorum DLQ gets its policy even when nothing expires there: its explicit delivery limit.
            if q.name in expiring or q.name in quorum
        ),
    )
