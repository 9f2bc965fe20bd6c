"""Confirmed publishing for the asyncio client (``MessageBus``), on aiormq under aio-pika's robust channel.

Each publish returns once RabbitMQ confirmed it; after a lost connection it is published again on the
reconnected channel (a repeat keeps its message id); a nack or a channel the broker closed (a missing
exchange) is ``PublishFailed``. A publish waits for its confirm, not for its frame to reach the socket
(aiormq's ``wait=False``, docs/performance.md), and never on a connection that closed (writes.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from tradebus.errors import PublishFailed
from tradebus.letrade.writes import Writes

logger = logging.getLogger(__name__)
#: How long a publish keeps trying over a lost connection (published again once aio-pika reconnected).
RECONNECT_WAIT = 15.0
#: Pause after a lost publish before waiting for the connection (aio-pika notices the loss after us).
RETRY_INTERVAL = 0.2
#: What a lost connection raises (a publish is made again; a health check is unhealthy).
CONNECTION_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    asyncio.TimeoutError,
)


def _unreachable(key: str, name: str) -> PublishFailed:
    return PublishFailed(f"{key!r} on {name!r} not confirmed within {RECONNECT_WAIT:g} s: broker unreachable")


class ConfirmedPublisher:
    """Publishes on one robust channel with publisher confirms; see the module's docstring."""

    def __init__(self, connection: AbstractRobustConnection, channel: AbstractChannel) -> None:
        self.connection = connection
        self.channel = channel
        self._writes = Writes()

    async def publish(self, body: bytes, properties: Mapping[str, Any]) -> None:
        """Publish ``body`` with ``properties`` (publisher.py's ``outgoing``), confirmed: again over a lost
        connection (never after a nack), PublishFailed when it cannot be (no aio-pika Message)."""
        amqp_properties = aiormq.spec.Basic.Properties(
            # pamqp writes a float as a 32-bit one (a publication time to within 128 s): as text instead.
            headers={k: repr(v) if isinstance(v, float) else v for k, v in properties["headers"].items()},
            content_type=properties["content_type"],
            content_encoding=properties["content_encoding"],
            delivery_mode=properties["delivery_mode"],
            priority=properties.get("priority"),
            message_id=properties["message_id"],
        )
        name, key = properties["exchange"], properties["routing_key"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_WAIT
        task = asyncio.current_task()
        cancelled_before = task.cancelling() if task is not None else 0
        connection = self.connection
        while True:
            while not (closed := connection.close_called or connection.is_closed) and (
                not connection.connected.is_set() and loop.time() < deadline
            ):  # lost, not back yet (or lost again before this task ran): wait, until the deadline
                await self._connected(deadline)
            if closed:
                raise PublishFailed(f"{key!r} on {name!r} not confirmed: the bus was closed")
            if not connection.connected.is_set():
                raise _unreachable(key, name)
            lost: BaseException
            try:
                await self._publish_once(body, name, key, amqp_properties)
                return
            except aiormq.exceptions.DeliveryError as exc:
                raise PublishFailed(
                    f"broker refused {key!r} on {name!r}: a queue is full or rejected it"
                ) from exc
            except aiormq.exceptions.ChannelClosed as exc:
                raise PublishFailed(f"broker refused {key!r} on {name!r}: {exc}") from exc
            except asyncio.CancelledError as exc:
                if task is None or task.cancelling() > cancelled_before:
                    raise  # the caller's cancellation
                lost = exc  # a confirm aiormq failed with CancelledError: ``close()`` closed the connection
            except CONNECTION_LOST as exc:
                lost = exc
            # Sent, perhaps, but not confirmed: it may have reached its queues (PublishFailed says so).
            if connection.close_called or connection.is_closed:
                raise PublishFailed(f"{key!r} on {name!r} not confirmed: the bus was closed") from lost
            if loop.time() >= deadline:
                raise _unreachable(key, name) from lost
            logger.info("publishing %r on %r again after a lost connection: %r", key, name, lost)
            await asyncio.sleep(RETRY_INTERVAL)  # the loss is noticed (``connected`` cleared) after the error

    async def _publish_once(
        self, body: bytes, exchange: str, key: str, properties: aiormq.spec.Basic.Properties
    ) -> None:
        """One attempt on the robust channel's current aiormq channel (a new one after a reconnection)."""
        # aiormq's abstract channel does not declare basic_publish's ``wait``; its channel has it (6.8+).
        channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
        publish = channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=key,
            properties=properties,
            mandatory=False,
            # No timer and no wait for the socket: a lost connection fails the pending confirms, and
            # Writes the wait for room in its write queue; each cost throughput (docs/performance.md).
            timeout=None,
            wait=False,
        )
        await self._writes.run(channel.connection, publish)

    async def _connected(self, deadline: float) -> None:
        """Wait until the robust connection is back, the bus is closed or the loop's clock reaches
        ``deadline``, whichever comes first (aio-pika's own ``ready`` would wait for ever)."""
        waits = [
            asyncio.ensure_future(self.connection.connected.wait()),
            asyncio.ensure_future(self.connection.closed()),
        ]
        try:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
