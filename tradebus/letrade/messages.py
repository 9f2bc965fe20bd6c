"""The Letrade_v1 wire contract: the envelope ``{message_id, timestamp, source, payload}`` and the seed's
payloads, as Pydantic v2 models.

A Letrade message carries no type field: its routing key says what it is, so a body is parsed against the
payload model of the key it arrived with (``parse``), and a model computes the key it is published with
(``message.routing_key``). Timestamps go out as the seed writes them: UTC, milliseconds, ``Z``.
"""

from __future__ import annotations

import json
import uuid
from functools import lru_cache
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from routing.letrade import ROUTES, LetradeRoute
from routing.match import topic_matches
from tradebus.codec import check_incoming, describe, encode_json, encode_model, new_message_id
from tradebus.encryption import Keyring, revealed, seal, unseal
from tradebus.errors import InvalidJSON, Misrouted, SchemaViolation, UnknownMessageType
from tradebus.letrade.payloads import (
    CancelOrder,
    CandleBatch,
    CapitalAllocationRequest,
    CapitalAllocationResponse,
    ErrorReport,
    ExecuteTrade,
    Ident,
    MarketData,
    MarketDataRequest,
    MarketDataResponse,
    Payload,
    Timestamp,
    TradeExecuted,
    routing_word,
    utcnow,
)

#: Header naming the strategy a message belongs to, for ``*.strategy_<id>.*`` subscriptions.
STRATEGY_HEADER = "x-letrade-strategy-id"
#: Namespace of the ids derived from other ids (a response's from its request's).
_DERIVED = uuid.UUID("5c1f2a8e-7d3b-4f6a-9e0c-2b8d4a6f1c3e")


def derived_id(*parts: str) -> str:
    """A message id computed from ``parts``: the same on every redelivery, and always a valid id."""
    return str(uuid.uuid5(_DERIVED, "\x1f".join(parts)))


class Envelope(BaseModel):
    """Every Letrade message: ``{message_id, timestamp, source, payload}``; routed by its class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route_name: ClassVar[str]
    message_id: Ident = Field(default_factory=new_message_id)
    timestamp: Timestamp = Field(default_factory=utcnow)
    source: Ident
    payload: Payload

    @property
    def type(self) -> str:
        """The route name (``execute_trade``), what a stage's errors call this message."""
        return self.route_name

    @property
    def route(self) -> LetradeRoute:
        """The exchange, key template and priority of this message."""
        return ROUTES[self.route_name]

    @property
    def exchange(self) -> str:
        """The exchange it is published to."""
        return self.route.exchange

    @property
    def routing_key(self) -> str:
        """Its routing key, computed from the payload (``market_data.binance.btcusdt``)."""
        route = ROUTES[self.route_name]
        if not route.fields:
            return route.key()
        payload = self.payload
        values = {name: str(getattr(payload, name)) for name in route.fields}
        if "symbol" in values:
            values["symbol"] = routing_word(values["symbol"])
        return route.key(**values)

    @property
    def strategy_id(self) -> int | None:
        """The strategy the payload belongs to, if it names one."""
        # From the fields, not getattr: a payload without one would raise (and catch) an AttributeError
        # inside Pydantic on every publish of it (3 us of a candle's).
        value = self.payload.__dict__.get("strategy_id")
        return value if isinstance(value, int) else None


class ExecuteTradeMessage(Envelope):
    route_name = "execute_trade"
    payload: ExecuteTrade


class CancelOrderMessage(Envelope):
    route_name = "cancel_order"
    payload: CancelOrder


class TradeExecutedMessage(Envelope):
    route_name = "trade_executed"
    payload: TradeExecuted


class ErrorMessage(Envelope):
    route_name = "error"
    payload: ErrorReport


class MarketDataMessage(Envelope):
    route_name = "market_data"
    payload: MarketData


class CandleBatchMessage(Envelope):
    """Many candles of one pair in one message, on the market-data route and key (docs/letrade.md,
    "Batched market data"): not a route of its own, so it reaches every queue a single candle reaches."""

    route_name = "market_data"
    payload: CandleBatch

    @property
    def type(self) -> str:
        """``market_data_batch``: what errors and the type header call it."""
        return BATCH_TYPE


#: The type a batched market-data message goes by (its route is ``market_data``).
BATCH_TYPE = "market_data_batch"


def is_batch(body: str | bytes) -> bool:
    """Whether a market-data body is a batch: a JSON object whose ``payload`` has a ``candles`` key.

    Decided on the structure, not the text, so a single candle whose ``source`` or ``message_id`` reads
    "candles" stays a single candle; a body without the word at all skips the parse.
    """
    if b'"candles"' not in body if isinstance(body, bytes) else '"candles"' not in body:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    payload = data.get("payload") if isinstance(data, dict) else None
    return isinstance(payload, dict) and "candles" in payload


class CapitalAllocationRequestMessage(Envelope):
    route_name = "capital_allocation_request"
    payload: CapitalAllocationRequest


class CapitalAllocationResponseMessage(Envelope):
    route_name = "capital_allocation_response"
    payload: CapitalAllocationResponse


class MarketDataRequestMessage(Envelope):
    route_name = "market_data_request"
    payload: MarketDataRequest


class MarketDataResponseMessage(Envelope):
    route_name = "market_data_response"
    payload: MarketDataResponse


#: Route name -> envelope class.
MESSAGE_CLASSES: dict[str, type[Envelope]] = {
    cls.route_name: cls
    for cls in (
        ExecuteTradeMessage,
        CancelOrderMessage,
        TradeExecutedMessage,
        ErrorMessage,
        MarketDataMessage,
        CapitalAllocationRequestMessage,
        CapitalAllocationResponseMessage,
        MarketDataRequestMessage,
        MarketDataResponseMessage,
    )
}
assert set(MESSAGE_CLASSES) == set(ROUTES), "every Letrade route needs exactly one message class"


@lru_cache(maxsize=4096)
def class_for_key(routing_key: str) -> type[Envelope]:
    """The message class a routing key carries, or UnknownMessageType (keys found are remembered: every
    publish and every delivery asks)."""
    for name, route in ROUTES.items():
        if topic_matches(route.pattern, routing_key):
            return MESSAGE_CLASSES[name]
    known = ", ".join(r.pattern for r in ROUTES.values())
    raise UnknownMessageType(f"no Letrade message is routed as {routing_key!r}; known keys: {known}")


#: The bus name sealed values are bound to (tradebus/encryption.py: associated data).
BUS = "letrade"


#: Message class -> (its payload class, the ``sensitive`` fields seen there, their paths).
_SENSITIVE: dict[type[Envelope], tuple[Any, tuple[str, ...], tuple[str, ...]]] = {}


def sensitive_paths(cls: type[Envelope]) -> tuple[str, ...]:
    """Where the payload of ``cls`` keeps what must be sealed: ``payload.<field>`` (the paths remembered
    for the payload class's ``sensitive`` value as it is at every call: what a payload declares sensitive
    may change, in a test at least)."""
    known = _SENSITIVE.get(cls)
    if known is not None and getattr(known[0], "sensitive", ()) is known[1]:
        return known[2]
    payload = cls.model_fields["payload"].annotation
    fields = getattr(payload, "sensitive", ())
    paths = tuple(f"payload.{name}" for name in fields)
    _SENSITIVE[cls] = (payload, fields, paths)
    return paths


def encode(message: Envelope, keyring: Keyring | None = None) -> bytes:
    """The JSON body of ``message``, its sensitive fields sealed with ``keyring``; MessageTooLarge over
    128 KB (send large data by reference), EncryptionUnavailable for a sensitive value and no key."""
    paths = sensitive_paths(type(message))
    if not paths:
        return encode_model(message, message.type)
    return encode_json(seal(revealed(message, paths), paths, BUS, message.type, keyring), message.type)


def build(cls: type[Envelope], payload: Payload | dict[str, Any], source: str, **envelope: Any) -> Envelope:
    """A message of ``cls`` around ``payload``, validated; SchemaViolation says what is wrong."""
    data = payload.model_dump() if isinstance(payload, Payload) else payload
    try:
        return cls.model_validate({"source": source, "payload": data, **envelope})
    except ValidationError as exc:
        raise SchemaViolation(f"invalid {cls.route_name} message: {describe(exc)}") from exc


def _opened(body: str | bytes, paths: tuple[str, ...], route_name: str, keyring: Keyring | None) -> str:
    """``body`` with its sealed fields opened (Undecryptable), or InvalidJSON."""
    try:
        data = json.loads(body)
    except ValueError as bad:
        raise InvalidJSON(f"body is not valid JSON: {bad}") from bad
    if not isinstance(data, dict):
        return json.dumps(data)  # the model says why it is not a message
    return json.dumps(unseal(data, paths, BUS, route_name, keyring))


def parse(
    body: str | bytes, routing_key: str, content_type: str | None = None, keyring: Keyring | None = None
) -> Envelope:
    """Validate a delivery as the message its routing key names, its sealed fields opened with
    ``keyring``, or raise the InvalidMessage saying why (Undecryptable for a field that does not open)."""
    check_incoming(body, content_type)
    cls = class_for_key(routing_key)
    if cls is MarketDataMessage and is_batch(body):
        cls = CandleBatchMessage
    if paths := sensitive_paths(cls):
        body = _opened(body, paths, cls.route_name, keyring)
    try:
        message = cls.model_validate_json(body)
    except ValidationError as exc:
        try:
            json.loads(body)
        except ValueError as bad:
            raise InvalidJSON(f"body is not valid JSON: {bad}") from bad
        raise SchemaViolation(f"invalid {cls.route_name} message: {describe(exc)}") from exc
    if message.routing_key != routing_key:
        raise Misrouted(f"its payload routes as {message.routing_key!r}, not {routing_key!r}")
    return message
