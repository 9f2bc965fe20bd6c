"""Strategy service: market data, sentiment, indices, on-chain metrics, whale alerts, its orders.

Each stage is wired and observable: it validates, logs and records what it received.
"""

from __future__ import annotations

from tradebus.messages import (
    MarketData,
    OnchainMetric,
    OrderBook,
    OrderUpdate,
    Sentiment,
    StockIndex,
    Trade,
    WhaleAlert,
)
from tradebus.stage import stage


@stage(
    "tradebus.strategy.on_market_data", queue="strategy_market_data", accepts=(MarketData, OrderBook, Trade)
)
def on_market_data(message: MarketData | OrderBook | Trade) -> None:
    """Market data for the indicators."""


@stage("tradebus.strategy.on_sentiment", queue="sentiment_data", accepts=Sentiment)
def on_sentiment(message: Sentiment) -> None:
    """A sentiment score, an input of the strategy."""


@stage("tradebus.strategy.on_stock_index", queue="stock_index_data", accepts=StockIndex)
def on_stock_index(message: StockIndex) -> None:
    """A stock index level, for correlation."""


@stage("tradebus.strategy.on_onchain_metric", queue="strategy_service_onchain_metrics", accepts=OnchainMetric)
def on_onchain_metric(message: OnchainMetric) -> None:
    """An on-chain metric."""


@stage("tradebus.strategy.on_whale_alert", queue="strategy_service_whale_alerts", accepts=WhaleAlert)
def on_whale_alert(message: WhaleAlert) -> None:
    """A whale transfer, an input of the strategy."""


@stage("tradebus.strategy.on_order_update", queue="strategy_order_updates", accepts=OrderUpdate)
def on_order_update(message: OrderUpdate) -> None:
    """The fate of one of the strategy's orders."""
