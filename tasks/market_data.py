"""Market data recorders: the candle, order book and trade streams of ``mastertrade.market``.

Each stage is wired and observable: it validates, logs and records what it received.
"""

from __future__ import annotations

from tradebus.messages import MarketData, OrderBook, Trade
from tradebus.stage import stage


@stage("tradebus.market_data.record_candle", queue="market_data", accepts=MarketData)
def record_candle(message: MarketData) -> None:
    """A candle for the market-data store."""


@stage("tradebus.market_data.record_orderbook", queue="orderbook_updates", accepts=OrderBook)
def record_orderbook(message: OrderBook) -> None:
    """An order book snapshot."""


@stage("tradebus.market_data.record_trade", queue="trade_updates", accepts=Trade)
def record_trade(message: Trade) -> None:
    """A trade print."""
