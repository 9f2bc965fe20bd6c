"""Seen ids: the message ids a consumer queue's stage has handled, so that a repeated copy is dropped.

An outcome can be published twice (tradebus/outcomes.py): both copies carry one message id. Each stage
queue keeps the ids it handled in Redis, in a sorted set of its own (``seen:<queue>``) scored by the time it
handled them: the newest ``KEEP`` of the last ``WINDOW_SECONDS``, so the record stays bounded however
busy the queue. A delivery whose id the record holds is dropped by the stage (tradebus/stage.py).

* Per queue: a fan-out copy of the same message on another queue is that queue's first, and runs there.
* An id is noted once its stage has handled it, never before: a delivery that dies or fails before then is
  delivered again, and runs. Two copies handled at the same moment both run, which is why the stages whose
  effects matter are idempotent besides (docs/reliability.md).
* Redis unreachable: nothing is dropped (a repeat costs less than a loss), and the failure is logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.asyncio import Redis as AsyncRedis

from tradebus import store

logger = logging.getLogger(__name__)
#: How long a handled id is remembered: a repeat follows its first copy within a redelivery, seconds.
WINDOW_SECONDS = 3600
#: At most this many ids are remembered per queue (the newest).
KEEP = 10_000


def _key(queue: str) -> str:
    return store.key("seen", queue)


def recent(score: float | str | None) -> bool:
    """Whether a handled id's score (its ``read``) is within the window: the delivery is a repeat."""
    return score is not None and float(score) >= time.time() - WINDOW_SECONDS


def read(queue: str, message_id: str) -> tuple[str, ...]:
    """The Redis read (a client method and its arguments) whose value ``recent`` judges: ``handled`` in a
    round trip of the caller's (a stage whose handler reads its state anyway)."""
    return ("zscore", _key(queue), message_id)


def _noting(pipe: Any, key: str, message_id: str) -> None:
    now = time.time()
    pipe.zadd(key, {message_id: now})
    pipe.zremrangebyscore(key, "-inf", now - WINDOW_SECONDS)
    pipe.zremrangebyrank(key, 0, -(KEEP + 1))
    pipe.expire(key, WINDOW_SECONDS)


def handled(queue: str, message_id: str) -> bool:
    """Whether the stage of ``queue`` has handled ``message_id`` within the window (Redis away: no)."""
    try:
        score = store.client().zscore(_key(queue), message_id)
    except Exception as exc:  # noqa: BLE001 - without the record, handle it rather than lose it
        logger.warning("%s: cannot tell whether %s was handled: %s", queue, message_id, exc)
        return False
    return recent(score)


def note(queue: str, message_id: str) -> None:
    """Remember that the stage of ``queue`` handled ``message_id``; forget what fell out of the window."""
    try:
        pipe = store.client().pipeline(transaction=False)
        _noting(pipe, _key(queue), message_id)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001 - the message is handled; a repeat of it will run again
        logger.warning("%s: cannot note %s as handled: %s", queue, message_id, exc)


async def handled_async(client: AsyncRedis, queue: str, message_id: str) -> bool:
    """``handled`` on an asyncio Redis client (the asyncio ``MessageBus``: no thread per delivery)."""
    try:
        score = await client.zscore(_key(queue), message_id)
    except Exception as exc:  # noqa: BLE001 - without the record, handle it rather than lose it
        logger.warning("%s: cannot tell whether %s was handled: %s", queue, message_id, exc)
        return False
    return recent(score)


async def note_async(client: AsyncRedis, queue: str, message_id: str) -> None:
    """``note`` on an asyncio Redis client."""
    try:
        pipe = client.pipeline(transaction=False)
        _noting(pipe, _key(queue), message_id)
        await pipe.execute()
    except Exception as exc:  # noqa: BLE001 - the message is handled; a repeat of it will run again
        logger.warning("%s: cannot note %s as handled: %s", queue, message_id, exc)
