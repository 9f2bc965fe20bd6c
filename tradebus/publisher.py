"""Publishing: a body goes out to an exchange of the app's topology, confirmed by the broker.

``send`` is the one way tradebus publishes, for both buses: persistent on the topology's persistent
exchanges, signed when the service has a key, retried over a lost connection but never after a nack, and
returned only once RabbitMQ has confirmed it. Each profile validates and routes its own messages before it
sends them (tradebus/mastertrade/wire.py, tradebus/letrade/stage.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from amqp.exceptions import MessageNacked
from celery import Celery
from kombu.exceptions import OperationalError

from routing import Topology
from tradebus import headers as h
from tradebus import signing, tracing
from tradebus.codec import CONTENT_TYPE, new_message_id
from tradebus.errors import PublishFailed
from tradebus.settings import SigningSettings, TracingSettings

PERSISTENT = 2
TRANSIENT = 1
#: Reconnect-and-republish attempts after a lost connection (never after a nack), and their spacing.
CONNECTION_RETRIES = 3
RETRY_INTERVAL = 0.2


def send(
    app: Celery,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    persistent: bool | None = None,
    content_encoding: str = "utf-8",
    signed_route: tuple[str, str] | None = None,
    priority: int | None = None,
) -> str:
    """Publish raw ``body`` and wait for the broker's confirm; returns the message id.

    ``signed_route`` is the (exchange, routing key) the signature covers when it is not the one published
    to: a message sent straight to its queue through ``mastertrade.retry`` is verified against the route
    it names in its ``x-tradebus-original-*`` headers.
    """
    where = f"{routing_key!r} on {exchange!r}"
    with app.producer_or_acquire() as producer:
        wire_exchange = exchange
        if producer.connection.transport.driver_type != "amqp":
            wire_exchange = _without_alternate_exchanges(app.topology, exchange, routing_key)
        properties = outgoing(
            app.topology,
            app.settings.signing,
            body,
            exchange=wire_exchange,
            routing_key=routing_key,
            message_id=message_id,
            headers=headers,
            persistent=exchange in app.topology.persistent_exchanges if persistent is None else persistent,
            content_encoding=content_encoding,
            signed_route=signed_route,
            priority=priority,
            trace=app.settings.tracing,
        )
        message_id = properties["message_id"]
        for attempt in range(CONNECTION_RETRIES + 1):
            try:
                # Kombu's own retry would also republish a nacked message (py-amqp counts a nack as a
                # recoverable connection error), duplicating it in every queue that did accept it.
                producer.publish(body, retry=False, **properties)
                return message_id
            except MessageNacked as exc:
                raise PublishFailed(f"broker refused {where}: a queue is full or rejected it") from exc
            except producer.connection.channel_errors as exc:
                # The broker closed the channel (an exchange that does not exist, for example): give the
                # pooled producer a fresh channel for the next publish.
                producer.revive(producer.connection.channel())
                raise PublishFailed(f"broker refused {where}: {exc}") from exc
            except (*producer.connection.connection_errors, OperationalError) as exc:
                if attempt == CONNECTION_RETRIES:
                    raise PublishFailed(f"broker unreachable for {where}: {exc}") from exc
                time.sleep(RETRY_INTERVAL * (attempt + 1))
                with contextlib.suppress(*producer.connection.connection_errors, OperationalError):
                    producer.connection.close()
                    producer.connection.ensure_connection(max_retries=1)
                    producer.revive(producer.connection.default_channel)
    raise AssertionError("unreachable")  # pragma: no cover


def outgoing(
    topology: Topology,
    settings: SigningSettings,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    persistent: bool | None = None,
    content_encoding: str = "utf-8",
    signed_route: tuple[str, str] | None = None,
    priority: int | None = None,
    trace: TracingSettings | None = None,
) -> dict[str, Any]:
    """The properties ``body`` is published with (exchange and routing key included): content type,
    persistence (by default: whether ``exchange`` is one of the topology's persistent exchanges), message
    id, publish time, priority, when ``settings`` give this service a key, its signature and, when ``trace``
    is on and the message is in a trace (or begins one), its W3C trace context (tradebus/tracing.py).

    Pure: ``send`` hands them to Kombu, the asyncio client (tradebus/letrade/aio.py) to aio-pika.
    """
    if persistent is None:
        persistent = exchange in topology.persistent_exchanges
    message_id = message_id or new_message_id()
    properties: dict[str, Any] = {
        "exchange": exchange,
        "routing_key": routing_key,
        "content_type": CONTENT_TYPE,
        "content_encoding": content_encoding,
        "delivery_mode": PERSISTENT if persistent else TRANSIENT,
        "message_id": message_id,
        "headers": {h.PUBLISHED_AT: time.time(), **(headers or {})},
    }
    if priority is not None:
        properties["priority"] = priority
    # Signed when this service has a key (tradebus/signing.py); the signature covers the wire route.
    signed_exchange, signed_key = signed_route or (exchange, routing_key)
    properties["headers"] |= signing.outgoing(
        body,
        message_id=message_id,
        exchange=signed_exchange,
        routing_key=signed_key,
        content_type=CONTENT_TYPE,
        settings=settings,
    )
    if trace is not None and trace.enabled:
        properties["headers"] |= tracing.outgoing(
            trace,
            topology,
            exchange=signed_exchange,
            routing_key=signed_key,
            message_id=message_id,
            headers=properties["headers"],
        )
    return properties


def _without_alternate_exchanges(topology: Topology, exchange: str, routing_key: str) -> str:
    """The exchange whose bindings take ``routing_key``, for transports that ignore alternate exchanges.

    Kombu's in-memory transport routes topic and direct exchanges but drops what no binding matches;
    publishing straight to the exchange RabbitMQ would end at keeps the "nothing unroutable vanishes" rule.
    """
    try:
        return topology.trace(exchange, routing_key)[-1].exchange
    except KeyError:  # not a tradebus exchange
        return exchange
