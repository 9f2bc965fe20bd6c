"""How many times a message came back to a stage: poison messages are dead-lettered before they loop.

A quorum queue counts for itself (``x-delivery-count``, the deliveries that came back before this one); a
classic queue does not, so the count is kept in Redis for a day. On a classic queue the header is read
never: nothing there sets it but the publisher, who could disable the protection with ``0``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tradebus import store

logger = logging.getLogger(__name__)

MAX_REDELIVERIES = 5
#: The header in which a quorum queue counts a message's earlier deliveries (routing/quorum.py sets the
#: broker's own limit one above MAX_REDELIVERIES, as a backstop).
DELIVERY_COUNT = "x-delivery-count"
#: How long a redelivery count is remembered.
REDELIVERY_WINDOW_SECONDS = 24 * 3600


def over_limit(
    queue: str, delivery: str, redelivered: bool, headers: Mapping[str, Any], quorum: bool = False
) -> bool:
    """Whether ``delivery`` (a message id and attempt) came back more than MAX_REDELIVERIES times to
    ``queue``, a quorum queue when ``quorum`` (its count in the headers) or not (Redis counts; Redis down:
    no, rather than stall)."""
    if not redelivered:
        return False
    counted = headers.get(DELIVERY_COUNT) if quorum else None
    if counted is not None:
        return int(counted) > MAX_REDELIVERIES
    key = store.key("redeliveries", queue, delivery)
    try:
        pipe = store.client().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, REDELIVERY_WINDOW_SECONDS)
        count = int(pipe.execute()[0])
    except Exception as exc:  # noqa: BLE001 - without Redis, keep processing rather than stall
        logger.warning("%s: cannot count redeliveries of %s: %s", queue, delivery, exc)
        return False
    return count > MAX_REDELIVERIES
