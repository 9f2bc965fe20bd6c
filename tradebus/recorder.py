"""What each stage received, kept in Redis so people and tests can see the bus at work.

Per queue: a count, and the last ``RECENT`` deliveries (message type, routing key, exchange, id, time).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis

from tradebus.settings import get_settings

#: How many recent deliveries are kept per queue.
RECENT = 1_000


@cache
def client() -> redis.Redis:
    """This process's Redis client (redis-py reconnects by itself after a fork)."""
    return redis.Redis.from_url(get_settings().redis_url)


def _key(*parts: str) -> str:
    return ":".join((get_settings().redis_prefix, *parts))


def record(queue: str, stage: str, entry: dict[str, Any]) -> None:
    """Note that ``stage`` received ``entry`` on ``queue``."""
    item = json.dumps({**entry, "queue": queue, "stage": stage, "at": datetime.now(UTC).isoformat()})
    pipe = client().pipeline(transaction=False)
    pipe.lpush(_key("received", queue), item)
    pipe.ltrim(_key("received", queue), 0, RECENT - 1)
    pipe.hincrby(_key("counts"), queue, 1)
    pipe.execute()


def received(queue: str, limit: int = RECENT) -> list[dict[str, Any]]:
    """The most recent deliveries recorded on ``queue``, newest first."""
    return [json.loads(item) for item in client().lrange(_key("received", queue), 0, limit - 1)]


def counts() -> dict[str, int]:
    """How many messages each queue's stage has received."""
    raw: dict[bytes, bytes] = client().hgetall(_key("counts"))  # type: ignore[assignment]
    return {k.decode(): int(v) for k, v in raw.items()}


def clear() -> None:
    """Forget everything recorded under this prefix."""
    keys = list(client().scan_iter(match=_key("*")))
    if keys:
        client().delete(*keys)
