"""RabbitMQ policies: dead-lettering for the queues whose declared arguments do not dead-letter.

The seed declares most queues with a TTL or a length limit but no dead-letter exchange, so an expired or
overflowed message would vanish. Their arguments stay exactly the seed's; a policy per queue (the way
RabbitMQ recommends setting dead-lettering) sends what they expire, overflow or reject to ``dlq.<queue>``,
where ``x-death`` says why. ``dlq.trading_signals`` keeps the seed's 24-hour TTL and hands what expires
there to ``dlq.archive`` instead of dropping it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from routing.exchanges import DLX
from routing.queues import ARCHIVE_QUEUE, QUEUES, STAGE_QUEUES, dead_letter_queue_name

DEAD_LETTER_EXCHANGE = "x-dead-letter-exchange"
#: Above an operator's catch-all policies (priority 0); an operator policy that must win over ours has to
#: repeat the dead-letter keys.
PRIORITY = 10


@dataclass(frozen=True)
class Policy:
    """A RabbitMQ policy applied to exactly one queue."""

    name: str
    queue: str
    definition: dict[str, Any]
    priority: int = PRIORITY
    apply_to: str = "queues"

    @property
    def pattern(self) -> str:
        """The policy's pattern: the queue's name and nothing else."""
        return f"^{re.escape(self.queue)}$"

    def as_json(self) -> dict[str, Any]:
        """The body of ``PUT /api/policies/{vhost}/{name}``."""
        return {
            "pattern": self.pattern,
            "definition": self.definition,
            "priority": self.priority,
            "apply-to": self.apply_to,
        }


def _dead_letter_to(queue: str, routing_key: str) -> Policy:
    return Policy(
        f"tradebus-dead-letter.{queue}",
        queue,
        {"dead-letter-exchange": DLX.name, "dead-letter-routing-key": routing_key},
    )


def _needs_policy(arguments: dict[str, Any]) -> bool:
    return DEAD_LETTER_EXCHANGE not in arguments


POLICIES: tuple[Policy, ...] = (
    *(
        _dead_letter_to(q.name, dead_letter_queue_name(q.name))
        for q in STAGE_QUEUES
        if _needs_policy(q.queue_arguments or {})
    ),
    *(
        _dead_letter_to(q.name, ARCHIVE_QUEUE.name)
        for q in QUEUES
        if q.name.startswith("dlq.") and "x-message-ttl" in (q.queue_arguments or {})
    ),
)
