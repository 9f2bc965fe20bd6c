"""MasterTrade's health messages: each service's ``system.health`` and the seed's DLQ alert.

The seed's rule: more than 10 dead letters in a queue means a systematic failure, so a warning goes out.
"""

from __future__ import annotations

from collections.abc import Iterable

from tradebus.health import QueueStats
from tradebus.mastertrade.messages import SystemAlert, SystemHealth

#: The seed's rule: alert when a dead-letter queue holds more than this many messages.
DLQ_ALERT_DEPTH = 10


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


def dlq_alerts(
    stats: dict[str, QueueStats], dead_letter_queues: Iterable[str], threshold: int = DLQ_ALERT_DEPTH
) -> list[SystemAlert]:
    """A warning for each of ``dead_letter_queues`` holding more than ``threshold`` messages."""
    names = set(dead_letter_queues)
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
