"""Publishing: every message goes out as its documented JSON, confirmed by the broker.

``publish`` validates first (a clear error and nothing sent), picks exchange and routing key from the
message, and returns only once RabbitMQ has confirmed the message.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from amqp.exceptions import MessageNacked
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from routing import PERSISTENT_EXCHANGES, trace
from tradebus import signing
from tradebus.errors import (
    InvalidJSON,
    InvalidMessage,
    MessageTooLarge,
    PublishFailed,
    SchemaViolation,
    UnknownMessageType,
    UnsupportedContentType,
)
from tradebus.messages import ANY_MESSAGE, MAX_MESSAGE_BYTES, MESSAGE_TYPES, BusMessage, wire_bytes

CONTENT_TYPE = "application/json"
#: Header naming the message type, so a consumer can tell what it got without parsing the body.
TYPE_HEADER = "x-tradebus-type"
#: Header with the publish time (Unix seconds, float): stages measure their latency from it.
PUBLISHED_AT = "x-tradebus-published-at"
PERSISTENT = 2
TRANSIENT = 1
#: Reconnect-and-republish attempts after a lost connection (never after a nack), and their spacing.
CONNECTION_RETRIES = 3
RETRY_INTERVAL = 0.2


def to_message(message: BusMessage | Mapping[str, Any]) -> BusMessage:
    """Validate ``message`` (a model or its dict) against the wire contract, or raise InvalidMessage."""
    data = message.model_dump(mode="json") if isinstance(message, BusMessage) else dict(message)
    kind = data.get("type")
    if kind not in MESSAGE_TYPES:
        raise UnknownMessageType(f"unknown message type {kind!r}; known: {', '.join(sorted(MESSAGE_TYPES))}")
    try:
        return MESSAGE_TYPES[kind].model_validate(data)
    except ValidationError as exc:
        raise SchemaViolation(f"invalid {kind} message: {describe(exc)}") from exc


def describe(exc: ValidationError) -> str:
    """A validation error in one line per field: ``quantity: Input should be greater than 0``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in exc.errors()
    )


#: Content types a JSON body may arrive with; a publisher that sets none is taken at its word that it is JSON.
JSON_CONTENT_TYPES = frozenset({"", "application/json", "text/json", "text/plain"})


def is_json_content_type(content_type: str | None) -> bool:
    """Whether a message labelled ``content_type`` may be read as JSON (pickle never is)."""
    return (content_type or "").split(";")[0].strip().lower() in JSON_CONTENT_TYPES


def parse_wire(body: str | bytes, content_type: str | None = None) -> BusMessage:
    """Parse a message as it arrives from the broker, or raise the InvalidMessage that says why not."""
    if not is_json_content_type(content_type):
        raise UnsupportedContentType(f"content type {content_type!r} is refused; the bus carries JSON only")
    size = len(wire_bytes(body))
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        message: BusMessage = ANY_MESSAGE.validate_json(body)
    except ValidationError:
        pass  # diagnose below, off the fast path
    else:
        return message
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidJSON(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SchemaViolation(f"a message is a JSON object, not {type(data).__name__}")
    return to_message(data)


def encode(message: BusMessage) -> bytes:
    """The JSON body of ``message``, refused when over the size limit."""
    body = message.model_dump_json().encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"{message.type} message is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES} "
            "(send large data by reference)"
        )
    return body


def send(
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    persistent: bool | None = None,
    content_encoding: str = "utf-8",
    app: Celery | None = None,
    signed_route: tuple[str, str] | None = None,
    priority: int | None = None,
) -> str:
    """Publish raw ``body`` and wait for the broker's confirm; returns the message id.

    ``signed_route`` is the (exchange, routing key) the signature covers when it is not the one published
    to: a message sent straight to its queue through ``mastertrade.retry`` is verified against the route
    it names in its ``x-tradebus-original-*`` headers.
    """
    if app is None:
        from tradebus.app import app as default_app

        app = default_app
    message_id = message_id or str(uuid.uuid4())
    if persistent is None:
        persistent = exchange in PERSISTENT_EXCHANGES
    properties: dict[str, Any] = {
        "exchange": exchange,
        "routing_key": routing_key,
        "content_type": CONTENT_TYPE,
        "content_encoding": content_encoding,
        "delivery_mode": PERSISTENT if persistent else TRANSIENT,
        "message_id": message_id,
        "headers": {PUBLISHED_AT: time.time(), **(headers or {})},
    }
    if priority is not None:
        properties["priority"] = priority
    where = f"{routing_key!r} on {exchange!r}"
    with app.producer_or_acquire() as producer:
        if producer.connection.transport.driver_type != "amqp":
            properties["exchange"] = _without_alternate_exchanges(exchange, routing_key)
        # Signed when this service has a key (tradebus/signing.py); the signature covers the wire route.
        signed_exchange, signed_key = signed_route or (properties["exchange"], routing_key)
        properties["headers"] |= signing.outgoing(
            body,
            message_id=message_id,
            exchange=signed_exchange,
            routing_key=signed_key,
            content_type=CONTENT_TYPE,
        )
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


def _without_alternate_exchanges(exchange: str, routing_key: str) -> str:
    """The exchange whose bindings take ``routing_key``, for transports that ignore alternate exchanges.

    Kombu's in-memory transport routes topic and direct exchanges but drops what no binding matches;
    publishing straight to the exchange RabbitMQ would end at keeps the "nothing unroutable vanishes" rule.
    """
    try:
        return trace(exchange, routing_key)[-1].exchange
    except KeyError:  # not a tradebus exchange
        return exchange


def publish(
    message: BusMessage | Mapping[str, Any],
    *,
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    app: Celery | None = None,
) -> str:
    """Validate ``message`` and publish it to its exchange and routing key; returns the message id.

    Raises InvalidMessage (nothing is sent) or PublishFailed (the broker did not confirm).
    """
    if not isinstance(message, BusMessage | Mapping):
        raise InvalidMessage(f"cannot publish {type(message).__name__}; expected a bus message or dict")
    validated = to_message(message)
    all_headers = {TYPE_HEADER: validated.type, **(headers or {})}
    return send(
        encode(validated),
        exchange=validated.exchange,
        routing_key=validated.routing_key,
        message_id=message_id,
        headers=all_headers,
        app=app,
    )
