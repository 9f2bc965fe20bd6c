"""Health of the bus from the broker's own numbers: consumers per service, dead letters per queue.

Read with passive queue declarations, so it needs only an AMQP connection (no management API) and works
on every transport. Both buses use it; MasterTrade turns it into its system health messages and the seed's
DLQ alert (tradebus/mastertrade/health.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kombu import Connection


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
    return summary(queue_stats(connection, [*workers, *dead, *unrouted]), workers, dead, unrouted)


def summary(
    stats: Mapping[str, QueueStats], workers: list[str], dead: list[str], unrouted: list[str]
) -> dict[str, object]:
    """The health ``stats`` of the queues make (``bus_health`` says how); pure, for both Letrade clients."""
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
