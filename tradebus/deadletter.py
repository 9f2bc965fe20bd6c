"""Application-level dead letters: a message a stage cannot process goes to its DLQ with the reason.

RabbitMQ dead-letters expired, overflowed and rejected messages itself (with ``x-death``), but only on
queues that name a dead-letter exchange, and without saying *why* a consumer gave up. A stage that meets
invalid input publishes the original body to the dead-letter exchange (MasterTrade: ``mastertrade.dlx``
with the ``dlq.<queue>`` key; Letrade: ``letrade.dlq`` with the original key plus ``.dead``) and these
headers, waits for the broker's confirm, and only then acknowledges the original.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from routing import dead_letter_route
from tradebus.messages import wire_bytes
from tradebus.publisher import send

REASON = "x-tradebus-reason"
ERROR = "x-tradebus-error"
QUEUE = "x-tradebus-queue"
ORIGINAL_EXCHANGE = "x-tradebus-original-exchange"
ORIGINAL_ROUTING_KEY = "x-tradebus-original-routing-key"
ORIGINAL_MESSAGE_ID = "x-tradebus-original-message-id"
DEAD_LETTERED_AT = "x-tradebus-dead-lettered-at"
RETRIES = "x-tradebus-retries"
#: Longest error text kept in a header (RabbitMQ headers live in memory with the message).
MAX_ERROR_CHARS = 2_000


def dead_letter(
    body: str | bytes,
    *,
    queue: str,
    reason: str,
    error: str,
    delivery_info: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    retries: int = 0,
) -> str:
    """Publish ``body`` to the DLQ of ``queue`` with why it failed; returns the dead letter's id."""
    delivery_info = delivery_info or {}
    headers = {
        REASON: reason,
        ERROR: error[:MAX_ERROR_CHARS],
        QUEUE: queue,
        ORIGINAL_EXCHANGE: delivery_info.get("exchange") or "",
        ORIGINAL_ROUTING_KEY: delivery_info.get("routing_key") or "",
        ORIGINAL_MESSAGE_ID: message_id or "",
        DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
        RETRIES: retries,
    }
    raw = wire_bytes(body)
    try:
        raw.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "binary"  # kept byte for byte, and labelled as what it is
    exchange, routing_key = dead_letter_route(queue, delivery_info.get("routing_key") or "")
    return send(
        raw,
        exchange=exchange,
        routing_key=routing_key,
        headers=headers,
        persistent=True,
        content_encoding=encoding,
    )
