"""One message for every route of the seed's routing-key hierarchy, with the seed's example values.

The demo publishes them; the tests publish them and check where each one lands.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tradebus.mastertrade.messages import (
    BusMessage,
    CircuitBreaker,
    ConfigChange,
    MarketData,
    OnchainMetric,
    OrderBook,
    OrderRequest,
    OrderUpdate,
    RiskBreach,
    RiskCheck,
    Sentiment,
    StockIndex,
    SystemAlert,
    SystemHealth,
    Tick,
    Ticker,
    TickerBatch,
    Trade,
    TradingSignal,
    WhaleAlert,
)

AT = datetime(2025, 11, 13, 10, 30, tzinfo=UTC)
STRATEGY = "550e8400-e29b-41d4-a716-446655440000"


def candle(symbol: str = "BTCUSDT", interval: str = "1m", close: float = 45200.0) -> MarketData:
    """The seed's market data example."""
    return MarketData(
        symbol=symbol,
        interval=interval,
        timestamp=AT,
        open=45000.0,
        high=max(45500.0, close),
        low=min(44800.0, close),
        close=close,
        volume=1234.56,
        quote_volume=55776000.0,
        trades_count=8765,
    )


def signal(strategy_id: str = STRATEGY, backtest: bool = False, at: datetime | None = None) -> TradingSignal:
    """The seed's trading signal example, timestamped now (the risk manager refuses stale signals)."""
    return TradingSignal(
        strategy_id=strategy_id,
        symbol="BTCUSDT",
        action="BUY",
        confidence=0.85,
        entry_price=45200.0,
        stop_loss=44300.0,
        take_profit=46500.0,
        position_size_pct=0.05,
        reasoning="Strong momentum + positive sentiment",
        indicators={"RSI": 65, "MACD": 150.5, "sentiment_score": 0.72},
        timestamp=at or datetime.now(UTC),
        backtest=backtest,
    )


def order_request(
    request_id: str = "req-1234567890", quantity: float = 0.5, at: datetime | None = None
) -> OrderRequest:
    """The seed's order request example, timestamped now (the executor refuses stale orders)."""
    return OrderRequest(
        request_id=request_id,
        strategy_id=STRATEGY,
        symbol="BTCUSDT",
        side="BUY",
        order_type="MARKET",
        quantity=quantity,
        price=None,
        stop_loss=44300.0,
        take_profit=46500.0,
        environment="paper",
        risk_approved=True,
        timestamp=at or datetime.now(UTC),
    )


def order_update(status: str = "filled", order_id: str = "order-1234567890") -> OrderUpdate:
    """The seed's order update example, answering the example order request."""
    return OrderUpdate.model_validate(
        {
            "order_id": order_id,
            "request_id": "req-1234567890",
            "exchange_order_id": "1234567890",
            "status": status,
            "symbol": "BTCUSDT",
            "side": "BUY",
            "filled_quantity": 0.5,
            "average_fill_price": 45205.5,
            "commission": 0.00075,
            "commission_asset": "BNB",
            "filled_at": AT,
        }
    )


def whale_alert(token: str = "BTC", level: str = "high") -> WhaleAlert:
    """The seed's whale alert example."""
    return WhaleAlert.model_validate(
        {
            "transaction_hash": "0x1234567890abcdef",
            "blockchain": "ethereum",
            "token": token,
            "from_address": "0xabcd...",
            "to_address": "0xefgh...",
            "from_label": "unknown_wallet",
            "to_label": "binance_exchange",
            "amount_token": 100.0,
            "amount_usd": 4520000.0,
            "alert_level": level,
            "timestamp": AT,
        }
    )


def ticker_batch(symbol: str = "BTCUSDT", ticks: int = 100, price: float = 45200.0) -> TickerBatch:
    """``ticks`` tickers of ``symbol`` in one message, a millisecond apart, the last one now."""
    start = datetime.now(UTC) - timedelta(milliseconds=ticks)
    return TickerBatch(
        symbol=symbol,
        ticks=[
            Tick(
                price=price + i,
                bid=price + i - 0.5,
                ask=price + i + 0.5,
                timestamp=start + timedelta(milliseconds=i + 1),
            )
            for i in range(ticks)
        ],
    )


def risk_check(check_id: str = "risk-1234567890", current_positions: int = 5) -> RiskCheck:
    """The seed's risk check example."""
    return RiskCheck(
        check_id=check_id,
        strategy_id="strategy-uuid",
        symbol="BTCUSDT",
        proposed_position_size=0.05,
        current_portfolio_value=50000.0,
        current_positions=current_positions,
        max_drawdown_current=0.08,
        timestamp=AT,
    )


def documented_messages() -> list[BusMessage]:
    """A message for each example key of the seed's routing-key hierarchy, in the seed's order."""
    return [
        candle("BTCUSDT", "1m"),
        candle("ETHUSDT", "5m"),
        Ticker(symbol="BTCUSDT", price=45200.0, bid=45199.5, ask=45200.5, timestamp=AT),
        Ticker(symbol="ETHUSDT", price=2400.0, timestamp=AT),
        OrderBook(symbol="BTCUSDT", bids=[(45199.5, 1.2)], asks=[(45200.5, 0.8)], timestamp=AT),
        Trade(symbol="BTCUSDT", trade_id="t-1", price=45200.0, quantity=0.01, side="BUY", timestamp=AT),
        Sentiment(symbol="BTCUSDT", platform="twitter", score=0.72, mentions=1500, timestamp=AT),
        Sentiment(symbol="ETHUSDT", platform="reddit", score=-0.1, timestamp=AT),
        StockIndex(index_name="SPX", value=5000.0, change_pct=0.4, timestamp=AT),
        StockIndex(index_name="VIX", value=14.2, timestamp=AT),
        OnchainMetric(metric_name="active_addresses", symbol="BTC", value=950000, timestamp=AT),
        whale_alert("BTC", "high"),
        whale_alert("ETH", "critical"),
        signal("uuid-1234"),
        signal("uuid-5678", backtest=True),
        order_request(),
        order_update("filled", "order-123"),
        order_update("cancelled", "order-456"),
        order_update("partial", "order-789"),
        risk_check(),
        RiskBreach(
            metric="drawdown", value=0.16, threshold=0.15, message="max drawdown exceeded", timestamp=AT
        ),
        CircuitBreaker(trigger="loss_streak", state="tripped", reason="5 losses in a row", timestamp=AT),
        SystemHealth(service="market_data", status="healthy", timestamp=AT),
        SystemAlert(severity="critical", message="exchange API unreachable", timestamp=AT),
        ConfigChange(change_type="api_key_update", service="order_executor", timestamp=AT),
    ]
