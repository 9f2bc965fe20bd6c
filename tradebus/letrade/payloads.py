"""The seed's Letrade_v1 payloads, as Pydantic v2 models: the ``payload`` of each message.

Field names are the seed's; docs/letrade.md lists the defaults and the few additions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

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
#: The exchange a trade command goes to when it names none: the paper connector's (the seed's examples
#: trade on ``binance``; its Publisher example leaves the exchange out). docs/letrade.md, "Defaults".
DEFAULT_EXCHANGE = "binance"
#: Candles one market-data response may carry (about 110 bytes each: the 128 KB limit holds ~1,100).
MAX_CANDLES = 1_000
#: Candles one batched market-data message may carry (the 128 KB limit still applies to the whole body).
MAX_BATCH_CANDLES = 1_000


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
    #: Fields a broker operator must not read, sealed on the wire (tradebus/encryption.py). None of the
    #: seed's payloads carries a credential (docs/security.md, "Encryption").
    sensitive: ClassVar[tuple[str, ...]] = ()


class ExecuteTrade(Payload):
    """``commands.execute_trade``. ``client_order_id`` makes a redelivered command fill once; ``exchange``
    and ``type`` default to the paper connector's exchange and a market order, as the seed's Publisher
    example leaves them out."""

    strategy_id: Annotated[int, Field(ge=0)]
    exchange: ExchangeName = DEFAULT_EXCHANGE
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


class FeedCandle(Candle):
    """One candle of a batched market-data message: a ``Candle`` held to ``MarketData``'s rule."""

    @model_validator(mode="after")
    def _candle_is_consistent(self) -> FeedCandle:
        if self.low > min(self.open, self.close) or self.high < max(self.open, self.close):
            raise ValueError("candle must satisfy low <= open, close <= high")
        return self


class CandleBatch(Payload):
    """Batched ``market_data.{exchange}.{symbol}``: many candles of one pair on one exchange, oldest first,
    each as a ``response.market_data`` candle (docs/letrade.md, "Batched market data")."""

    symbol: Pair
    exchange: ExchangeName
    candles: Annotated[list[FeedCandle], Field(min_length=1, max_length=MAX_BATCH_CANDLES)]


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
