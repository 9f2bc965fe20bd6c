"""Market data store: candles, order books and trades of ``mastertrade.market``, kept in Redis.

The candle series serve whoever asks for history; the latest book and trade per symbol serve dashboards.
Every write is idempotent under redelivery (a killed pool process's whole batch comes again, possibly after
newer messages were handled): candles by open time, the latest book and trade by market time
(``state.put_newest``), and a trade is counted once per trade id (``state.count_once``).
"""

from __future__ import annotations

from tradebus import state, store
from tradebus.mastertrade import candles
from tradebus.mastertrade.messages import MarketData, OrderBook, Trade
from tradebus.mastertrade.stage import stage

#: How long a counted trade's id is remembered: longer than a batch stays unacknowledged (RabbitMQ's
#: consumer timeout is 30 min) and its retries take; a trade handled again later counts again.
TRADE_SEEN_SECONDS = 3_600


@stage("tradebus.market_data.record_candle", queue="market_data", accepts=MarketData)
def record_candle(message: MarketData) -> None:
    """Add a candle to the market-data store's series of its symbol and interval."""
    candles.add("market", message)


@stage("tradebus.market_data.record_orderbook", queue="orderbook_updates", accepts=OrderBook)
def record_orderbook(message: OrderBook) -> None:
    """Keep the latest order book snapshot of its symbol."""
    pipe = store.client().pipeline(transaction=False)
    entry = (message.symbol, message.timestamp.timestamp(), message.model_dump_json())
    state.put_newest(pipe, store.key("market", "orderbooks"), store.key("market", "orderbooks_at"), [entry])
    pipe.execute()


@stage("tradebus.market_data.record_trade", queue="trade_updates", accepts=Trade)
def record_trade(message: Trade) -> None:
    """Keep the latest trade of its symbol and count trades per symbol, each trade id once."""
    pipe = store.client().pipeline(transaction=False)
    entry = (message.symbol, message.timestamp.timestamp(), message.model_dump_json())
    state.put_newest(pipe, store.key("market", "trades"), store.key("market", "trades_at"), [entry])
    seen = store.key("market", "trade_seen", message.symbol, message.trade_id)
    state.count_once(pipe, seen, TRADE_SEEN_SECONDS, store.key("market", "trade_counts"), message.symbol)
    pipe.execute()
