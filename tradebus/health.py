"""Health of the bus from the broker's own numbers: consumers per service, dead letters per queue.

Read with passive queue declarations, so it needs only an AMQP connection (no management API) and works
on every transport. ``report`` turns them into the system health messages and the seed's DLQ alert
(more than 10 dead letters in a queue means a systematic failure).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kombu import Connection

from routing import DEAD_LETTER_QUEUES
from tradebus.messages import SystemAlert, SystemHealth

#: The seed's rule: alert when a dead-letter queue holds more than this many messages.
DLQ_ALERT_DEPTH = 10


@dataclass(frozen=True)
class QueueStats:
    """Messages waiting in a queue and its consumers (None when the queue does not exist)."""

    messages: int | None
    consumers: int | None


def queue_stats(connection: Connection, names: Iterable[str]) -> dict[str, QueueStats]:
    """Depth and consumers of each queue in ``names``."""
    stats: dict[str, QueueStats] = {}
    channel = connection.channel()
    try:
        for name in names:
            try:
                _, messages, consumers = channel.queue_declare(queue=name, passive=True)
            except connection.channel_errors:
                channel = connection.channel()  # a missing queue closes the channel
                stats[name] = QueueStats(None, None)
            else:
                stats[name] = QueueStats(int(messages), int(consumers))
    finally:
        channel.close()
    return stats


def service_health(service: str, queues: dict[str, QueueStats]) -> SystemHealth:
    """``healthy`` when every queue of the service has a consumer, ``unhealthy`` when none has."""
    serving = [q for q, s in queues.items() if s.consumers]
    if len(serving) == len(queues):
        status = "healthy"
    elif serving:
        status = "degraded"
    else:
        status = "unhealthy"
    details = {q: {"messages": s.messages, "consumers": s.consumers} for q, s in queues.items()}
    return SystemHealth(service=service, status=status, details=details)


def dlq_alerts(stats: dict[str, QueueStats], threshold: int = DLQ_ALERT_DEPTH) -> list[SystemAlert]:
    """A warning for each dead-letter queue holding more than ``threshold`` messages."""
    names = {q.name for q in DEAD_LETTER_QUEUES}
    return [
        SystemAlert(
            severity="warning",
            message=f"{name} holds {s.messages} dead letters (more than {threshold}): a systematic failure",
            source="tradebus.monitoring",
            details={"queue": name, "depth": s.messages, "threshold": threshold},
        )
        for name, s in sorted(stats.items())
        if name in names and s.messages is not None and s.messages > threshold
    ]


def bus_health(
    connection: Connection,
    worker_queues: Iterable[str],
    dead_letter_queues: Iterable[str] = (),
    unrouted_queues: Iterable[str] = (),
) -> dict[str, object]:
    """The seed's ``health_check()``: ``status`` and ``queue_depth``, with what they are made of.

    ``status`` is ``healthy`` when every worker queue has a consumer, ``degraded`` when some have none,
    ``unhealthy`` when none has (or a queue is missing: the topology is not declared). ``queue_depth`` is
    what waits in the worker queues; dead letters and unrouted messages are counted apart.
    """
    workers, dead, unrouted = list(worker_queues), list(dead_letter_queues), list(unrouted_queues)
    stats = queue_stats(connection, [*workers, *dead, *unrouted])
    missing = [q for q in workers if stats[q].messages is None]
    serving = [q for q in workers if stats[q].consumers]
    if missing or not serving:
        status = "unhealthy"
    elif len(serving) < len(workers):
        status = "degraded"
    else:
        status = "healthy"
    return {
        "status": status,
        "queue_depth": sum(stats[q].messages or 0 for q in workers),
        "dead_letters": sum(stats[q].messages or 0 for q in dead),
        "unrouted": sum(stats[q].messages or 0 for q in unrouted),
        "missing_queues": missing,
        "queues": {q: {"messages": stats[q].messages, "consumers": stats[q].consumers} for q in workers},
    }
