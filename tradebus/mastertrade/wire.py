"""MasterTrade's wire contract: validate a message, parse a delivery, encode and publish a message.

``publish`` validates first (a clear error and nothing sent), picks exchange and routing key from the
message's own fields, seals the fields its type declares sensitive (tradebus/encryption.py), and returns
only once RabbitMQ has confirmed it (tradebus/publisher.py). ``parse_wire`` opens them again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from celery import Celery
from pydantic import Field, TypeAdapter, ValidationError

from tradebus import headers as h
from tradebus.application import current
from tradebus.codec import check_incoming, describe, encode_json, encode_model
from tradebus.encryption import Keyring, revealed, seal, unseal
from tradebus.errors import InvalidJSON, InvalidMessage, SchemaViolation, UnknownMessageType
from tradebus.mastertrade.messages import MESSAGE_CLASSES, BusMessage
from tradebus.publisher import send


def message_type(cls: type[BusMessage]) -> str:
    """The ``type`` value a message class carries on the wire."""
    default = cls.model_fields["type"].default
    assert isinstance(default, str)
    return default


MESSAGE_TYPES: dict[str, type[BusMessage]] = {message_type(cls): cls for cls in MESSAGE_CLASSES}


def adapter_for(classes: tuple[type[BusMessage], ...]) -> TypeAdapter[Any]:
    """A validator for any of ``classes``, picked by the ``type`` field."""
    if len(classes) == 1:
        return TypeAdapter(classes[0])
    union: Any = classes[0]
    for cls in classes[1:]:
        union = union | cls
    return TypeAdapter(Annotated[union, Field(discriminator="type")])


#: Validates any bus message.
ANY_MESSAGE = adapter_for(MESSAGE_CLASSES)
#: The bus name sealed values are bound to (tradebus/encryption.py: associated data).
BUS = "mastertrade"


def to_message(message: BusMessage | Mapping[str, Any]) -> BusMessage:
    """Validate ``message`` (a model or its dict) against the wire contract, or raise InvalidMessage."""
    data = revealed(message, message.sensitive) if isinstance(message, BusMessage) else dict(message)
    kind = data.get("type")
    if kind not in MESSAGE_TYPES:
        raise UnknownMessageType(f"unknown message type {kind!r}; known: {', '.join(sorted(MESSAGE_TYPES))}")
    try:
        return MESSAGE_TYPES[kind].model_validate(data)
    except ValidationError as exc:
        raise SchemaViolation(f"invalid {kind} message: {describe(exc)}") from exc


def from_wire(data: Mapping[str, Any], keyring: Keyring | None = None) -> BusMessage:
    """A message's JSON object as it travelled, its sensitive fields opened, validated; Undecryptable or
    another InvalidMessage says why not."""
    cls = MESSAGE_TYPES.get(data.get("type"))  # type: ignore[arg-type]
    if cls is not None and cls.sensitive:
        data = unseal(dict(data), cls.sensitive, BUS, message_type(cls), keyring)
    return to_message(data)


def parse_wire(
    body: str | bytes, content_type: str | None = None, keyring: Keyring | None = None
) -> BusMessage:
    """Parse a message as it arrives from the broker, opening its sealed fields with ``keyring``, or raise
    the InvalidMessage that says why not."""
    check_incoming(body, content_type)
    try:
        message: BusMessage = ANY_MESSAGE.validate_json(body)
    except ValidationError:
        pass  # diagnose below, off the fast path
    else:
        if not message.sensitive:
            return message
        # A type with sensitive fields is opened below: the fast path read them as they travelled.
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidJSON(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SchemaViolation(f"a message is a JSON object, not {type(data).__name__}")
    return from_wire(data, keyring)


def encode(message: BusMessage, keyring: Keyring | None = None) -> bytes:
    """The JSON body of ``message``, its sensitive fields sealed with ``keyring``'s current key, refused
    when over the size limit (or EncryptionUnavailable: a sensitive value and no key)."""
    if not message.sensitive:
        return encode_model(message, message.type)
    sealed = seal(revealed(message, message.sensitive), message.sensitive, BUS, message.type, keyring)
    return encode_json(sealed, message.type)


def publish(
    message: BusMessage | Mapping[str, Any],
    *,
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    app: Celery | None = None,
) -> str:
    """Validate ``message`` and publish it to its exchange and routing key; returns the message id.

    Raises InvalidMessage (nothing is sent), EncryptionUnavailable (a sensitive value and no key: nothing
    is sent) or PublishFailed (the broker did not confirm).
    """
    if not isinstance(message, BusMessage | Mapping):
        raise InvalidMessage(f"cannot publish {type(message).__name__}; expected a bus message or dict")
    validated = to_message(message)
    all_headers = {h.TYPE: validated.type, **(headers or {})}
    symbol = getattr(validated, "symbol", None)
    if isinstance(symbol, str):  # the shard of a sharded queue (docs/topology.md, "Sharding by symbol")
        all_headers[h.SYMBOL] = symbol
    target = app or current()
    return send(
        target,
        encode(validated, target.settings.encryption.keyring),
        exchange=validated.exchange,
        routing_key=validated.routing_key,
        message_id=message_id,
        headers=all_headers,
    )
