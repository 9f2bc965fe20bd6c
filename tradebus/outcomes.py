"""Message ids of outcomes: what a stage publishes because of another message, the same at every attempt.

A stage publishes its outcome (an order update of a fill, the order of an approved signal, a breach, a
Letrade event or response) and then notes that it did (tradebus/state.py: ``publish_once``). A delivery
that dies between the two leaves the note unwritten, and the next delivery publishes the outcome again:
outcomes are delivered at least once. So that a consumer can tell a repeat from a new message, an outcome's
message id is computed from what produced it, never drawn at random: :func:`outcome_id` of its source (the
message or record it is the outcome of), its kind and its position among the messages of that outcome.
A republished copy has the same id as the first; any other message has another. tradebus's own stages drop
a repeated id (tradebus/seen.py); a plain consumer dedupes by the AMQP ``message_id`` (docs/reliability.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

#: The namespace of every outcome id (a UUID version 5 under it).
NAMESPACE = uuid.UUID("0b0f6a2e-54c1-4b8e-9d6f-7a3c2e1d5f48")


def outcome_id(source: str, kind: str, index: int = 0) -> str:
    """The message id of the ``index``-th message of kind ``kind`` that ``source`` produced.

    ``source`` names what the outcome is the outcome of, stable across deliveries: the input message's id,
    or the key the outcome is stored under (an order request's ``request_id``). The same arguments always
    give the same id; a different source, kind or position gives another.
    """
    if not source:
        raise ValueError("an outcome id needs the id of what produced it")
    return str(uuid.uuid5(NAMESPACE, f"{source}:{kind}:{index}"))


def outcome_ids(source: str, kinds: Iterable[str]) -> list[str]:
    """The ids of an outcome's messages, in order: :func:`outcome_id` of each kind at its position."""
    return [outcome_id(source, kind, index) for index, kind in enumerate(kinds)]
