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
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from routing.build import alternate_exchange_policy
from routing.mastertrade.exchanges import ALTERNATES, DLX
from routing.mastertrade.queues import ARCHIVE_QUEUE, dead_letter_queue_name
from routing.model import Policy

DEAD_LETTER_EXCHANGE = "x-dead-letter-exchange"


def _dead_letter_to(queue: str, routing_key: str) -> Policy:
    return Policy(
        f"tradebus-dead-letter.{queue}",
        queue,
        {"dead-letter-exchange": DLX.name, "dead-letter-routing-key": routing_key},
    )


def _needs_policy(arguments: dict[str, Any]) -> bool:
    return DEAD_LETTER_EXCHANGE not in arguments


def policies(stage_queues: tuple[Queue, ...], dead_letter_queues: tuple[Queue, ...]) -> tuple[Policy, ...]:
    """Each exchange's alternate exchange, a dead-letter policy for each stage queue that declares none, and
    the archive for expiring DLQs."""
    return (
        *(alternate_exchange_policy(exchange, alternate) for exchange, alternate in ALTERNATES),
        *(
            _dead_letter_to(q.name, dead_letter_queue_name(q.name))
            for q in stage_queues
            if _needs_policy(q.queue_arguments or {})
        ),
        *(
            _dead_letter_to(q.name, ARCHIVE_QUEUE.name)
            for q in dead_letter_queues
            if q.name.startswith("dlq.") and "x-message-ttl" in (q.queue_arguments or {})
        ),
    )
