"""Kombu's in-memory transport, for the embedded demo: ``memory://`` as tradebus runs it.

One change: a delivery names the consumer tag it was delivered to, as RabbitMQ's deliveries do, so the
stage consumer (tradebus/consumer.py) can tell which queue a message came from. Kombu resolves the
``memory`` scheme through ``TRANSPORT_ALIASES``; importing this module points it here.

What this transport cannot enforce (docs/topology.md): message TTLs, length limits and overflow,
broker dead-lettering (``x-death``), alternate exchanges (the publisher emulates them), policies and
publisher confirms. Application dead letters, retries and topic routing work as on RabbitMQ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, memory


class Channel(memory.Channel):  # type: ignore[misc]
    """An in-memory channel whose deliveries carry their consumer tag."""

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Callable[[Any], Any], consumer_tag: str, **kwargs: Any
    ) -> Any:
        def tagged(message: Any) -> Any:
            message.delivery_info["consumer_tag"] = consumer_tag
            return callback(message)

        return super().basic_consume(queue, no_ack, tagged, consumer_tag, **kwargs)


class Transport(memory.Transport):  # type: ignore[misc]
    """Kombu's in-memory transport with :class:`Channel`."""

    Channel = Channel


TRANSPORT_ALIASES["memory"] = f"{__name__}:Transport"
