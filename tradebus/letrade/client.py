"""What both Letrade clients share, whatever their I/O: the seed's short keys, the message a publish or a
request makes, and the admission of a delivery (JWT, envelope, payload, sealed fields).

The synchronous ``LetradeBus`` (tradebus/letrade/bus.py, Kombu) and the asyncio ``MessageBus``
(tradebus/letrade/aio.py, aio-pika) differ only in how they talk to RabbitMQ; what they publish and what
they accept is made here, and sent through tradebus/letrade/stage.py's ``wire`` and tradebus/publisher.py's
``outgoing``, as a stage's messages are.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from routing import letrade
from tradebus.errors import Misrouted, Reason, SignatureCheckUnavailable, UnknownMessageType
from tradebus.letrade import tokens
from tradebus.letrade.messages import (
    CandleBatchMessage,
    Envelope,
    MarketDataMessage,
    build,
    class_for_key,
    parse,
)
from tradebus.letrade.payloads import CandleBatch, Payload
from tradebus.publisher import PERSISTENT
from tradebus.settings import Settings

#: How long a request waits for its response unless told otherwise (seconds).
DEFAULT_TIMEOUT = 5.0


@lru_cache(maxsize=4096)
def qualify(exchange: str, routing_key: str) -> str:
    """The full key for a short one: ``("letrade.commands", "execute_trade")`` -> ``commands.execute_trade``.

    The seed's publisher example publishes ``execute_trade`` to ``letrade.commands``; the bindings are on
    ``commands.execute_trade``, so the short key would reach no queue.
    """
    if routing_key.split(".")[0] in letrade.EXCHANGE_OF_FAMILY:
        return routing_key
    families = [f for f, e in letrade.EXCHANGE_OF_FAMILY.items() if e == exchange and f != "market_data"]
    for family in families:
        candidate = f"{family}.{routing_key}"
        if any(r.pattern == candidate for r in letrade.ROUTES.values()):
            return candidate
    return routing_key


def outgoing(
    exchange: str, routing_key: str, payload: Envelope | Payload | dict[str, Any], source: str
) -> Envelope:
    """The validated message a ``publish(exchange, routing_key, payload)`` sends: InvalidMessage when the
    payload is not what the key carries, Misrouted when the message belongs elsewhere."""
    key = qualify(exchange, routing_key)
    message = payload if isinstance(payload, Envelope) else build(class_for(key, payload), payload, source)
    if (message.exchange, message.routing_key) != (exchange, key):
        raise Misrouted(
            f"a {message.type} message goes to {message.routing_key!r} on {message.exchange}, "
            f"not {key!r} on {exchange}"
        )
    return message


def class_for(routing_key: str, payload: Payload | dict[str, Any]) -> type[Envelope]:
    """The message class ``payload`` makes on ``routing_key``: a market-data key takes a single candle or a
    batch of them (``candles``, docs/letrade.md: "Batched market data")."""
    cls = class_for_key(routing_key)
    if cls is MarketDataMessage and (
        isinstance(payload, CandleBatch) or (isinstance(payload, dict) and "candles" in payload)
    ):
        return CandleBatchMessage
    return cls


@dataclass(frozen=True)
class Request:
    """A request message, the id its response names, and the key the response comes on."""

    message: Envelope
    request_id: str
    response_key: str


def request(
    routing_key: str, payload: Payload | dict[str, Any], source: str, message_id: str | None = None
) -> Request:
    """The ``request.*`` message ``payload`` makes (UnknownMessageType for any other key); a market-data
    request without its own ``request_id`` gets the message id."""
    key = qualify(letrade.REQUESTS.name, routing_key)
    if not key.startswith("request."):
        raise UnknownMessageType(f"{routing_key!r} is not a request key (request.*)")
    data = payload.model_dump() if isinstance(payload, Payload) else dict(payload)
    message_id = message_id or str(uuid.uuid4())
    payload_model = class_for_key(key).model_fields["payload"].annotation
    if isinstance(payload_model, type) and "request_id" in getattr(payload_model, "model_fields", {}):
        data.setdefault("request_id", message_id)
    message = build(class_for_key(key), data, source, message_id=message_id)
    request_id = getattr(message.payload, "request_id", message.message_id)
    return Request(message, str(request_id), "response." + key.removeprefix("request."))


def admit(
    settings: Settings,
    queue: str,
    routing_key: str,
    body: bytes | str,
    headers: Mapping[str, Any],
    *,
    content_type: str | None,
    message_id: str,
    redelivered: bool,
) -> Envelope:
    """A delivery on ``queue`` as the message its key names, its JWT checked when required (which may
    ask Redis: blocking). InvalidMessage / SignatureRejected: dead-letter it; SignatureCheckUnavailable:
    try again later."""
    tokens.admit(settings.jwt, queue, body, headers, message_id=message_id, redelivered=redelivered)
    return parse(body, routing_key, content_type, settings.encryption.keyring)


def repeat_id(delivery_mode: int | None, message_id: str | None) -> str | None:
    """The id a repeat of a delivery would be told by: a persistent message's own id, as a stage takes it
    (tradebus/stage.py: ``publisher_id``); None for market data and for messages without an id."""
    if delivery_mode != PERSISTENT or not message_id:
        return None
    return str(message_id)


def give_up_reason(failure: BaseException) -> Reason:
    """Why a subscriber's delivery is dead-lettered once the retry policy is spent: ``max_retries`` for a
    JWT replay check Redis could not answer (a transient failure outlasted every retry), else
    ``handler_error`` (the handler failed). Both clients' subscribers follow it."""
    return Reason.MAX_RETRIES if isinstance(failure, SignatureCheckUnavailable) else Reason.HANDLER_ERROR
