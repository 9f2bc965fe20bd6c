"""Worker bootsteps: declare the whole topology whenever the worker's consumer (re)connects.

Celery declares the queues a worker consumes, but not the alternate exchanges, the unrouted queues or the
dead-letter queues; without those, unroutable messages and dead letters would vanish.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from tradebus.topology import declare


class DeclareTopology(bootsteps.StartStopStep):  # type: ignore[misc]
    """Declare every exchange, queue and binding of ``routing`` on the worker's connection."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, parent: Any) -> None:
        declare(parent.connection)
