"""The Celery application. ``celery -A tradebus`` finds it as ``tradebus.app``."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.utils.objects import cached_property

import tradebus.memory  # noqa: F401 - memory:// deliveries name their consumer tag, as RabbitMQ's do
from tradebus import flower


class TradebusCelery(Celery):  # type: ignore[misc]
    """Celery, with a worker that sizes itself from the pool profile of the queues it consumes."""

    @cached_property  # type: ignore[untyped-decorator]
    def Worker(self) -> Any:  # noqa: N802 - Celery's own attribute name
        return self.subclass_with_self("workers.profiled:ProfiledWorker")


app = TradebusCelery("tradebus")
app.config_from_object("celeryconfig")
# `celery -A tradebus flower` is secure by default: login from the environment or loopback only.
flower.install()
