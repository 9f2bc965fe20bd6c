"""The wire contract: Pydantic v2 models of every message the MasterTrade bus carries.

The six documented formats (market data, trading signal, order request, order update, risk check, whale
alert) keep the seed's field names; the rest are the ones the topology implies. Every model knows its own
route: ``message.exchange`` and ``message.routing_key`` come from ``routing.mastertrade.keys.ROUTES`` and
the payload.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    model_validator,
)

from routing.mastertrade.keys import CANDLE_INTERVALS, INTERVAL_SECONDS, ROUTES
from routing.model import Route

#: Most ticks in one TickerBatch (about 100 bytes each, well under the size limit).
MAX_BATCH_TICKS = 1_000

#: A trading pair or token as it appears in a routing key: upper-case letters and digits, no dots.
Symbol = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{2,20}$")]
#: Any other routing-key word (strategy ids, order ids, metric names...): no dots, no wildcards.
Word = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,128}$")]
Price = Annotated[float, Field(gt=0)]
Amount = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Side = Literal["BUY", "SELL"]


def utcnow() -> datetime:
    """Now, timezone-aware in UTC (the bus never carries naive timestamps)."""
    return datetime.now(UTC)


class BusMessage(BaseModel):
    """Base of every message: strict fields, immutable, routed by its ``type``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    route_name: ClassVar[str]
    #: Fields a broker operator must not read: sealed on the wire (tradebus/encryption.py, docs/security.md).
    sensitive: ClassVar[tuple[str, ...]] = ()

    @property
    def route(self) -> Route:
        """The exchange and routing-key template this message is published with."""
        return ROUTES[self.route_name]

    @property
    def exchange(self) -> str:
        """The exchange this message is published to."""
        return self.route.exchange

    @property
    def routing_key(self) -> str:
        """The routing key, computed from the payload."""
        route = self.route
        return route.key(**{name: str(getattr(self, name)) for name in route.fields})


class MarketData(BusMessage):
    """An OHLCV candle (documented format)."""

    route_name = "market_data"
    type: Literal["market_data"] = "market_data"
    symbol: Symbol
    interval: str
    timestamp: AwareDatetime = Field(default_factory=utcnow)
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Amount
    quote_volume: Amount | None = None
    trades_count: Annotated[int, Field(ge=0)] | None = None

    @property
    def closed_at(self) -> datetime:
        """When the candle closed: its open time plus its interval."""
        return self.timestamp + timedelta(seconds=INTERVAL_SECONDS[self.interval])

    @model_validator(mode="after")
    def _candle_is_consistent(self) -> MarketData:
        if self.interval not in CANDLE_INTERVALS:
            raise ValueError(f"interval {self.interval!r} is not one of {', '.join(CANDLE_INTERVALS)}")
        if self.low > min(self.open, self.close) or self.high < max(self.open, self.close):
            raise ValueError("candle must satisfy low <= open, close <= high")
        return self


class Ticker(BusMessage):
    """A real-time price ticker."""

    route_name = "ticker"
    type: Literal["ticker"] = "ticker"
    symbol: Symbol
    price: Price
    bid: Price | None = None
    ask: Price | None = None
    volume_24h: Amount | None = None
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class Tick(BaseModel):
    """One price in a ticker batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    price: Price
    bid: Price | None = None
    ask: Price | None = None
    timestamp: AwareDatetime


class TickerBatch(BusMessage):
    """Many tickers of one symbol in one message, oldest first (producer-side batching of ``ticker.*``)."""

    route_name = "ticker_batch"
    type: Literal["ticker_batch"] = "ticker_batch"
    symbol: Symbol
    ticks: Annotated[list[Tick], Field(min_length=1, max_length=MAX_BATCH_TICKS)]

    @property
    def last_price(self) -> float:
        """The newest price of the batch."""
        return self.ticks[-1].price


class OrderBook(BusMessage):
    """An order book snapshot: price levels as ``[price, quantity]``, best first."""

    route_name = "orderbook"
    type: Literal["orderbook"] = "orderbook"
    symbol: Symbol
    bids: list[tuple[Price, Amount]]
    asks: list[tuple[Price, Amount]]
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class Trade(BusMessage):
    """One trade printed on the exchange."""

    route_name = "trade"
    type: Literal["trade"] = "trade"
    symbol: Symbol
    trade_id: Word
    price: Price
    quantity: Price
    side: Side
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class Sentiment(BusMessage):
    """A social sentiment score in [-1, 1] for a symbol on one platform."""

    route_name = "sentiment"
    type: Literal["sentiment"] = "sentiment"
    symbol: Symbol
    platform: Word
    score: Annotated[float, Field(ge=-1, le=1)]
    mentions: Annotated[int, Field(ge=0)] | None = None
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class StockIndex(BusMessage):
    """A stock market index level (SPX, VIX...)."""

    route_name = "stock_index"
    type: Literal["stock_index"] = "stock_index"
    index_name: Word
    value: float
    change_pct: float | None = None
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class OnchainMetric(BusMessage):
    """An on-chain metric for a token."""

    route_name = "onchain_metric"
    type: Literal["onchain_metric"] = "onchain_metric"
    metric_name: Word
    symbol: Symbol
    value: float
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class WhaleAlert(BusMessage):
    """A large on-chain transfer (documented format)."""

    route_name = "whale_alert"
    type: Literal["whale_alert"] = "whale_alert"
    transaction_hash: str
    blockchain: str
    token: Symbol
    from_address: str
    to_address: str
    from_label: str | None = None
    to_label: str | None = None
    amount_token: Amount
    amount_usd: Amount
    alert_level: Literal["low", "medium", "high", "critical"]
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class TradingSignal(BusMessage):
    """A strategy's trading signal (documented format). ``backtest`` signals are never executed."""

    type: Literal["trading_signal"] = "trading_signal"
    strategy_id: Word
    symbol: Symbol
    action: Side
    confidence: Fraction
    entry_price: Price
    stop_loss: Price | None = None
    take_profit: Price | None = None
    position_size_pct: Annotated[float, Field(gt=0, le=1)] | None = None
    reasoning: str = ""
    indicators: dict[str, float] = Field(default_factory=dict)
    timestamp: AwareDatetime = Field(default_factory=utcnow)
    backtest: bool = False

    @property
    def route_name(self) -> str:  # type: ignore[override]
        return "backtest_signal" if self.backtest else "trading_signal"


class OrderRequest(BusMessage):
    """A risk-approved order for the executor (documented format)."""

    route_name = "order_request"
    type: Literal["order_request"] = "order_request"
    request_id: Word
    strategy_id: Word
    symbol: Symbol
    side: Side
    order_type: Literal["MARKET", "LIMIT"] = "MARKET"
    quantity: Price
    price: Price | None = None
    stop_loss: Price | None = None
    take_profit: Price | None = None
    environment: Literal["paper", "live"] = "paper"
    risk_approved: bool = True
    timestamp: AwareDatetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _limit_has_price(self) -> OrderRequest:
        if self.order_type == "LIMIT" and self.price is None:
            raise ValueError("a LIMIT order needs a price")
        return self


class OrderUpdate(BusMessage):
    """The executor's answer to an order request; ``request_id`` names the request it answers."""

    route_name = "order_update"
    type: Literal["order_update"] = "order_update"
    order_id: Word
    request_id: Word
    exchange_order_id: str | None = None
    status: Literal["filled", "cancelled", "rejected", "partial"]
    symbol: Symbol | None = None
    side: Side | None = None
    strategy_id: Word | None = None
    filled_quantity: Amount = 0.0
    average_fill_price: Price | None = None
    commission: Amount | None = None
    commission_asset: str | None = None
    filled_at: AwareDatetime | None = None
    reason: str | None = None


class RiskCheck(BusMessage):
    """A risk validation request (documented format)."""

    route_name = "risk_check"
    type: Literal["risk_check"] = "risk_check"
    check_id: Word
    strategy_id: Word
    symbol: Symbol
    proposed_position_size: Annotated[float, Field(gt=0, le=1)]
    current_portfolio_value: Amount
    current_positions: Annotated[int, Field(ge=0)]
    max_drawdown_current: Fraction
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class RiskBreach(BusMessage):
    """A risk threshold was crossed."""

    route_name = "risk_breach"
    type: Literal["risk_breach"] = "risk_breach"
    metric: Word
    value: float
    threshold: float
    strategy_id: Word | None = None
    message: str = ""
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class CircuitBreaker(BusMessage):
    """The circuit breaker tripped (trading halted) or was reset."""

    route_name = "circuit_breaker"
    type: Literal["circuit_breaker"] = "circuit_breaker"
    trigger: Word
    state: Literal["tripped", "reset"]
    reason: str = ""
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class SystemHealth(BusMessage):
    """A service's health report."""

    route_name = "system_health"
    type: Literal["system_health"] = "system_health"
    service: Word
    status: Literal["healthy", "degraded", "unhealthy"]
    details: dict[str, Any] = Field(default_factory=dict)
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class SystemAlert(BusMessage):
    """An alert for operators."""

    route_name = "system_alert"
    type: Literal["system_alert"] = "system_alert"
    severity: Literal["info", "warning", "critical"]
    message: str
    source: str = "tradebus"
    details: dict[str, Any] = Field(default_factory=dict)
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class ConfigChange(BusMessage):
    """A configuration change every service should know about (``system.config.api_key_update``: new
    exchange credentials, sealed on the wire; a handler reads them with ``get_secret_value()``)."""

    route_name = "config_change"
    sensitive = ("api_key", "api_secret", "passphrase")
    type: Literal["config_change"] = "config_change"
    change_type: Word
    service: Word | None = None
    description: str = ""
    #: The trading venue the credentials are for (``binance``; ``exchange`` is the AMQP exchange).
    venue: Word | None = None
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None
    passphrase: SecretStr | None = None
    timestamp: AwareDatetime = Field(default_factory=utcnow)


class RiskCheckResult(BaseModel):
    """The risk manager's answer to a risk check (returned through the result backend, not the bus)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check_id: Word
    approved: bool
    reasons: list[str] = Field(default_factory=list)
    max_position_size: Fraction
    circuit_breaker_tripped: bool = False
    timestamp: AwareDatetime = Field(default_factory=utcnow)


#: Every MasterTrade message type (tradebus/mastertrade/wire.py validates a body as any of them).
MESSAGE_CLASSES: tuple[type[BusMessage], ...] = (
    MarketData,
    Ticker,
    TickerBatch,
    OrderBook,
    Trade,
    Sentiment,
    StockIndex,
    OnchainMetric,
    WhaleAlert,
    TradingSignal,
    OrderRequest,
    OrderUpdate,
    RiskCheck,
    RiskBreach,
    CircuitBreaker,
    SystemHealth,
    SystemAlert,
    ConfigChange,
)
