"""Application-level dead letters: a message a stage cannot process goes to its DLQ with the reason.

RabbitMQ dead-letters expired, overflowed and rejected messages itself (with ``x-death``), but only on
queues that name a dead-letter exchange, and without saying *why* a consumer gave up. A stage that meets
invalid input publishes the original body to the dead-letter exchange (MasterTrade: ``mastertrade.dlx``
with the ``dlq.<queue>`` key; Letrade: ``letrade.dlq`` with the original key plus ``.dead``) and these
headers, waits for the broker's confirm, and only then acknowledges the original.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from routing import Topology
from tradebus import headers as h
from tradebus.codec import wire_bytes
from tradebus.publisher import send

#: Longest error text kept in a header (RabbitMQ headers live in memory with the message).
MAX_ERROR_CHARS = 2_000


@dataclass(frozen=True)
class DeadLetter:
    """What goes to a DLQ: the original body, where it goes, and the headers that say why."""

    body: bytes
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    #: ``utf-8``, or ``binary`` for a body that is not text (kept byte for byte).
    content_encoding: str


def letter(
    topology: Topology,
    body: str | bytes,
    *,
    queue: str,
    reason: str,
    error: str,
    delivery_info: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    retries: int = 0,
) -> DeadLetter:
    """The dead letter of ``body`` that failed on ``queue``, routed by the topology's rule
    (``Topology.dead_letter_route``). Pure: both Letrade clients and every stage publish it."""
    delivery_info = delivery_info or {}
    headers = {
        h.REASON: str(reason),
        h.ERROR: error[:MAX_ERROR_CHARS],
        h.QUEUE: queue,
        h.ORIGINAL_EXCHANGE: delivery_info.get("exchange") or "",
        h.ORIGINAL_ROUTING_KEY: delivery_info.get("routing_key") or "",
        h.ORIGINAL_MESSAGE_ID: message_id or "",
        h.DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
        h.RETRIES: retries,
    }
    raw = wire_bytes(body)
    try:
        raw.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "binary"  # kept byte for byte, and labelled as what it is
    exchange, routing_key = topology.dead_letter_route(queue, delivery_info.get("routing_key") or "")
    return DeadLetter(raw, exchange, routing_key, headers, encoding)


def dead_letter(
    app: Celery,
    body: str | bytes,
    *,
    queue: str,
    reason: str,
    error: str,
    delivery_info: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    retries: int = 0,
) -> str:
    """Publish ``body`` to the DLQ of ``queue`` with why it failed, confirmed; returns its id."""
    dead = letter(
        app.topology,
        body,
        queue=queue,
        reason=reason,
        error=error,
        delivery_info=delivery_info,
        message_id=message_id,
        retries=retries,
    )
    return send(
        app,
        dead.body,
        exchange=dead.exchange,
        routing_key=dead.routing_key,
        headers=dead.headers,
        persistent=True,
        content_encoding=dead.content_encoding,
    )
