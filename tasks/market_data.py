"""Market data store: candles, order books and trades of ``mastertrade.market``, kept in Redis.

The candle series serve whoever asks for history; the latest book and trade per symbol serve dashboards.
"""

from __future__ import annotations

from tradebus import store
from tradebus.mastertrade import candles
from tradebus.mastertrade.messages import MarketData, OrderBook, Trade
from tradebus.mastertrade.stage import stage


@stage("tradebus.market_data.record_candle", queue="market_data", accepts=MarketData)
def record_candle(message: MarketData) -> None:
    """Add a candle to the market-data store's series of its symbol and interval."""
    candles.add("market", message)


@stage("tradebus.market_data.record_orderbook", queue="orderbook_updates", accepts=OrderBook)
def record_orderbook(message: OrderBook) -> None:
    """Keep the latest order book snapshot of its symbol."""
    store.client().hset(store.key("market", "orderbooks"), message.symbol, message.model_dump_json())


@stage("tradebus.market_data.record_trade", queue="trade_updates", accepts=Trade)
def record_trade(message: Trade) -> None:
    """Keep the latest trade of its symbol and count trades per symbol."""
    pipe = store.client().pipeline(transaction=False)
    pipe.hset(store.key("market", "trades"), message.symbol, message.model_dump_json())
    pipe.hincrby(store.key("market", "trade_counts"), message.symbol, 1)
    pipe.execute()
