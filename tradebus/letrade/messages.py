"""The Letrade_v1 wire contract: the envelope ``{message_id, timestamp, source, payload}`` and the seed's
payloads, as Pydantic v2 models.

A Letrade message carries no type field: its routing key says what it is, so a body is parsed against the
payload model of the key it arrived with (``parse``), and a model computes the key it is published with
(``message.routing_key``). Timestamps go out as the seed writes them: UTC, milliseconds, ``Z``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    model_validator,
)

from routing.letrade import ROUTES, LetradeRoute
from routing.match import topic_matches
from tradebus.errors import InvalidJSON, MessageTooLarge, Misrouted, SchemaViolation, UnknownMessageType
from tradebus.messages import MAX_MESSAGE_BYTES, wire_bytes
from tradebus.publisher import describe, is_json_content_type

#: ``BTC/USDT``: base and quote, upper case, one slash.
Pair = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,15}/[A-Z0-9]{1,15}$")]
#: An exchange as it appears in a routing key: ``binance``.
ExchangeName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")]
#: An id that may travel in a header or a key: no dots, no spaces.
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-:]{1,128}$")]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
Timeframe = Literal["1m", "5m", "15m", "1h", "4h", "1d"]
#: Candles one market-data response may carry (about 110 bytes each: the 128 KB limit holds ~1,100).
MAX_CANDLES = 1_000


def _iso_ms(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[AwareDatetime, PlainSerializer(_iso_ms, return_type=str)]


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def routing_word(symbol: str) -> str:
    """A pair as its routing-key word: ``BTC/USDT`` -> ``btcusdt`` (the seed's example)."""
    return symbol.replace("/", "").lower()


class Payload(BaseModel):
    """Base of every payload: strict fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ExecuteTrade(Payload):
    """``commands.execute_trade``. ``client_order_id`` makes a redelivered command fill once."""

    strategy_id: Annotated[int, Field(ge=0)]
    exchange: ExchangeName
    symbol: Pair
    side: Side
    type: OrderType = "market"
    amount: Positive
    price: Positive | None = None
    stop_loss: Positive | None = None
    take_profit: Positive | None = None
    client_order_id: Ident | None = None

    @model_validator(mode="after")
    def _limit_has_price(self) -> ExecuteTrade:
        if self.type == "limit" and self.price is None:
            raise ValueError("a limit order needs a price")
        return self


class CancelOrder(Payload):
    """``commands.cancel_order``."""

    order_id: Ident
    symbol: Pair
    exchange: ExchangeName


class TradeExecuted(Payload):
    """``events.trade_executed``: an order's state after the exchange answered (CCXT's order fields)."""

    strategy_id: Annotated[int, Field(ge=0)]
    order_id: Ident
    symbol: Pair
    side: Side
    type: OrderType
    amount: Positive
    filled: NonNegative
    status: Literal["filled", "open", "canceled"]
    average_price: Positive | None = None
    cost: NonNegative = 0.0
    fee: NonNegative = 0.0
    timestamp: Timestamp = Field(default_factory=utcnow)
    exchange: ExchangeName
    #: Not in the seed's example: the command's id, so the strategy knows which command this answers.
    client_order_id: Ident | None = None


class Candle(Payload):
    """One OHLCV bar of a market-data response."""

    timestamp: Timestamp
    open: Positive
    high: Positive
    low: Positive
    close: Positive
    volume: NonNegative


class MarketData(Payload):
    """``market_data.{exchange}.{symbol}``: a candle."""

    symbol: Pair
    timestamp: Timestamp = Field(default_factory=utcnow)
    open: Positive
    high: Positive
    low: Positive
    close: Positive
    volume: NonNegative
    exchange: ExchangeName

    @model_validator(mode="after")
    def _candle_is_consistent(self) -> MarketData:
        if self.low > min(self.open, self.close) or self.high < max(self.open, self.close):
            raise ValueError("candle must satisfy low <= open, close <= high")
        return self


class ErrorReport(Payload):
    """``events.error``."""

    error_type: Ident
    error_message: Annotated[str, Field(max_length=2_000)]
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: Timestamp = Field(default_factory=utcnow)


class CapitalAllocationRequest(Payload):
    """``request.capital.allocation``: the envelope's ``message_id`` is the request id."""

    strategy_id: Annotated[int, Field(ge=0)]
    symbol: Pair
    side: Side
    quantity: Positive
    price: Positive
    stop_loss: Positive | None = None
    take_profit: Positive | None = None


class PortfolioImpact(Payload):
    """What an approved allocation would do to the portfolio."""

    position_size_percent: NonNegative
    new_portfolio_risk_percent: NonNegative
    available_capital_after: float


class CapitalAllocationResponse(Payload):
    """``response.capital.allocation``: ``request_id`` is the request's ``message_id``."""

    request_id: Ident
    result: Literal["approved", "reduced", "rejected"]
    approved_quantity: NonNegative
    risk_level: Literal["low", "medium", "high"]
    reasons: list[str] = Field(default_factory=list)
    suggested_stop_loss: Positive | None = None
    suggested_take_profit: Positive | None = None
    portfolio_impact: PortfolioImpact


class MarketDataRequest(Payload):
    """``request.market_data``."""

    symbol: Pair
    timeframe: Timeframe = "1m"
    limit: Annotated[int, Field(ge=1, le=MAX_CANDLES)] = 100
    request_id: Ident


class MarketDataResponse(Payload):
    """``response.market_data``."""

    request_id: Ident
    symbol: Pair
    timeframe: Timeframe
    data: list[Candle]


class Envelope(BaseModel):
    """Every Letrade message: ``{message_id, timestamp, source, payload}``; routed by its class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route_name: ClassVar[str]
    message_id: Ident = Field(default_factory=lambda: str(uuid.uuid4()))
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
        values = {name: str(getattr(self.payload, name)) for name in self.route.fields}
        if "symbol" in values:
            values["symbol"] = routing_word(values["symbol"])
        return self.route.key(**values)

    @property
    def strategy_id(self) -> int | None:
        """The strategy the payload belongs to, if it names one."""
        value = getattr(self.payload, "strategy_id", None)
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


def class_for_key(routing_key: str) -> type[Envelope]:
    """The message class a routing key carries, or UnknownMessageType."""
    for name, route in ROUTES.items():
        if topic_matches(route.pattern, routing_key):
            return MESSAGE_CLASSES[name]
    known = ", ".join(r.pattern for r in ROUTES.values())
    raise UnknownMessageType(f"no Letrade message is routed as {routing_key!r}; known keys: {known}")


def encode(message: Envelope) -> bytes:
    """The JSON body of ``message``; MessageTooLarge over 128 KB (send large data by reference)."""
    body = message.model_dump_json().encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"{message.type} message is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES} "
            "(send large data by reference)"
        )
    return body


def build(cls: type[Envelope], payload: Payload | dict[str, Any], source: str, **envelope: Any) -> Envelope:
    """A message of ``cls`` around ``payload``, validated; SchemaViolation says what is wrong."""
    data = payload.model_dump() if isinstance(payload, Payload) else payload
    try:
        return cls.model_validate({"source": source, "payload": data, **envelope})
    except ValidationError as exc:
        raise SchemaViolation(f"invalid {cls.route_name} message: {describe(exc)}") from exc


def parse(body: str | bytes, routing_key: str, content_type: str | None = None) -> Envelope:
    """Validate a delivery as the message its routing key names, or raise the InvalidMessage saying why."""
    from tradebus.errors import UnsupportedContentType

    if not is_json_content_type(content_type):
        raise UnsupportedContentType(f"content type {content_type!r} is refused; the bus carries JSON only")
    size = len(wire_bytes(body))
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
    cls = class_for_key(routing_key)
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
