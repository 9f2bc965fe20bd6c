"""What each stage received, kept in Redis so people and tests can see the bus at work.

Per queue: a count, the last ``RECENT`` deliveries (message type, routing key, exchange, id, time) and the
last ``RECENT`` latencies from publish to the stage, in milliseconds.

Recording is off the message's path: deliveries are buffered in the process and written by a background
thread in one pipeline every ``FLUSH_SECONDS`` (a Redis round trip per message would cost a market-data
stage a third of its throughput). Counters and alerts (``bump``, ``alert``) are written at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from tradebus import store

logger = logging.getLogger(__name__)
#: How many recent deliveries (and latencies) are kept per queue.
RECENT = 1_000
#: How often the buffered deliveries are written to Redis.
FLUSH_SECONDS = 0.05


class _Buffer:
    """Deliveries waiting to be written, and the thread that writes them (one per process)."""

    def __init__(self) -> None:
        #: (prefix, queue, delivery, latency, messages): keys are made at flush time under the prefix of
        #: record time; a delivery of a batch counts its messages.
        self.items: list[tuple[str, str, str, float | None, int]] = []
        self.lock = threading.Lock()
        self.pid = 0

    def add(self, prefix: str, queue: str, item: str, latency_ms: float | None, count: int = 1) -> None:
        with self.lock:
            if self.pid != os.getpid():  # first use in this process (a pool process forks without threads)
                self.pid = os.getpid()
                self.items = []
                threading.Thread(target=self._run, name="tradebus-recorder", daemon=True).start()
            self.items.append((prefix, queue, item, latency_ms, count))

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - observability must never cost a message
                logger.warning("could not record deliveries: %s", exc)

    def flush(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        if not items:
            return
        pipe = store.client().pipeline(transaction=False)
        counts: dict[tuple[str, str], int] = {}
        for prefix, queue, item, latency_ms, count in items:
            pipe.lpush(f"{prefix}:received:{queue}", item)
            if latency_ms is not None:
                pipe.lpush(f"{prefix}:latency:{queue}", f"{latency_ms:.3f}")
            counts[prefix, queue] = counts.get((prefix, queue), 0) + count
        for (prefix, queue), total in counts.items():
            pipe.ltrim(f"{prefix}:received:{queue}", 0, RECENT - 1)
            pipe.ltrim(f"{prefix}:latency:{queue}", 0, RECENT - 1)
            pipe.hincrby(f"{prefix}:counts", queue, total)
        pipe.execute()


_buffer = _Buffer()


def _reset_after_fork() -> None:
    """A forked child starts with an empty buffer and a free lock (the parent's writer thread may have held
    it at the fork, and that thread does not exist in the child)."""
    _buffer.lock = threading.Lock()
    _buffer.items = []
    _buffer.pid = 0


os.register_at_fork(after_in_child=_reset_after_fork)


def record(
    queue: str,
    stage: str,
    entry: dict[str, Any],
    latency_ms: float | None = None,
    count: int = 1,
    at: float | None = None,
) -> None:
    """Note that ``stage`` received ``entry`` on ``queue`` (at ``at``, a time.time(); by default now),
    ``latency_ms`` after it was published; a batch delivery counts as its ``count`` messages."""
    when = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    item = json.dumps({**entry, "queue": queue, "stage": stage, "at": when.isoformat()})
    _buffer.add(store.key(), queue, item, latency_ms, count)


def received(queue: str, limit: int = RECENT) -> list[dict[str, Any]]:
    """The most recent deliveries recorded on ``queue``, newest first."""
    return [json.loads(item) for item in store.client().lrange(store.key("received", queue), 0, limit - 1)]


def latencies(queue: str) -> list[float]:
    """The most recent publish-to-stage latencies on ``queue``, in milliseconds, newest first."""
    return [float(v) for v in store.client().lrange(store.key("latency", queue), 0, RECENT - 1)]


def counts() -> dict[str, int]:
    """How many messages each queue's stage has received."""
    raw: dict[str, str] = store.text_client().hgetall(store.key("counts"))  # type: ignore[assignment]
    return {k: int(v) for k, v in raw.items()}


def flush() -> None:
    """Write what this process holds now, not at the next flush (a test's keys are about to be removed)."""
    _buffer.flush()


def clear() -> None:
    """Forget everything recorded (and every stage's state) under this prefix."""
    store.clear()


def bump(name: str, amount: int = 1) -> None:
    """Count a pipeline event (``signals``, ``orders``, ``fills``...)."""
    store.client().hincrby(store.key("metrics"), name, amount)


def metrics() -> dict[str, int]:
    """Every pipeline event counted so far."""
    raw: dict[str, str] = store.text_client().hgetall(store.key("metrics"))  # type: ignore[assignment]
    return {k: int(v) for k, v in raw.items()}


def alert(severity: str, source: str, text: str, **details: Any) -> None:
    """Keep an alert for operators (newest first, the last ``RECENT``)."""
    item = json.dumps(
        {
            "severity": severity,
            "source": source,
            "text": text,
            "details": details,
            "at": datetime.now(UTC).isoformat(),
        },
        default=str,
    )
    pipe = store.client().pipeline(transaction=False)
    pipe.lpush(store.key("alerts"), item)
    pipe.ltrim(store.key("alerts"), 0, RECENT - 1)
    pipe.execute()


def alerts(limit: int = RECENT) -> list[dict[str, Any]]:
    """The most recent alerts, newest first."""
    return [json.loads(item) for item in store.client().lrange(store.key("alerts"), 0, limit - 1)]
