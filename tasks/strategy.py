"""Strategy service: indicators on the candle stream become trading signals; it follows its own orders.

Candles of ``SIGNAL_INTERVAL`` feed RSI, MACD and moving averages per symbol
(tradebus/mastertrade/trading/strategy.py); sentiment and whale alerts adjust the confidence; order updates
keep its positions, from which it decides between buying and closing.
"""

from __future__ import annotations

import itertools

from celery.utils.log import get_task_logger

from routing.mastertrade.keys import INTERVAL_SECONDS
from tradebus import recorder, store
from tradebus.mastertrade import strategy_state
from tradebus.mastertrade.messages import (
    MarketData,
    OnchainMetric,
    OrderBook,
    OrderUpdate,
    Sentiment,
    StockIndex,
    Trade,
    TradingSignal,
    WhaleAlert,
)
from tradebus.mastertrade.stage import stage
from tradebus.mastertrade.trading.strategy import MIN_CANDLES, Context, evaluate
from tradebus.mastertrade.wire import publish
from tradebus.outcomes import outcome_id
from tradebus.stage import delivery_id

logger = get_task_logger(__name__)
#: The strategy this service runs (the seed's example strategy id) and the candles it trades on.
STRATEGY_ID = "550e8400-e29b-41d4-a716-446655440000"
SIGNAL_INTERVAL = "1m"


@stage(
    "tradebus.strategy.on_market_data", queue="strategy_market_data", accepts=(MarketData, OrderBook, Trade)
)
def on_market_data(message: MarketData | OrderBook | Trade) -> None:
    """A closed candle of the signal interval may turn into a trading signal."""
    if not isinstance(message, MarketData) or message.interval != SIGNAL_INTERVAL:
        return
    series = strategy_state.add_candle(message)
    step = INTERVAL_SECONDS[SIGNAL_INTERVAL]
    recent = series[-(MIN_CANDLES + 1) :]
    if any(later.time - earlier.time != step for earlier, later in itertools.pairwise(recent)):
        # A candle of the indicators' window has not arrived (another pool process has it) or never will:
        # indicators computed over a hole would be wrong, so this candle is not evaluated.
        logger.info("%s: candles missing before %s; not evaluated", message.symbol, message.timestamp)
        return
    position, sentiment, whale_flow = strategy_state.evaluation_context(STRATEGY_ID, message.symbol)
    context = Context(sentiment, whale_flow)
    idea = evaluate(series, position, context)
    if idea is None or not strategy_state.claim_symbol(STRATEGY_ID, message.symbol, delivery_id()):
        return
    signal = TradingSignal(
        strategy_id=STRATEGY_ID,
        symbol=message.symbol,
        action=idea.action,
        confidence=idea.confidence,
        entry_price=idea.entry_price,
        stop_loss=idea.stop_loss,
        take_profit=idea.take_profit,
        position_size_pct=idea.position_size_pct,
        reasoning=idea.reasoning,
        indicators=idea.indicators,
        timestamp=message.timestamp,
    )
    if signal.action == "BUY":
        strategy_state.remember_plan(STRATEGY_ID, signal.symbol, signal.stop_loss, signal.take_profit)
    # Its id derives from the candle's: a redelivered candle that signals again repeats the same message.
    publish(signal, message_id=outcome_id(delivery_id(), signal.type))
    recorder.bump("signals")
    logger.info(
        "signal %s %s at %g (%.2f): %s",
        signal.action,
        signal.symbol,
        signal.entry_price,
        signal.confidence,
        signal.reasoning,
    )


@stage("tradebus.strategy.on_sentiment", queue="sentiment_data", accepts=Sentiment)
def on_sentiment(message: Sentiment) -> None:
    """A sentiment score, blended into the symbol's sentiment."""
    strategy_state.record_sentiment(message.symbol, message.score)


@stage("tradebus.strategy.on_stock_index", queue="stock_index_data", accepts=StockIndex)
def on_stock_index(message: StockIndex) -> None:
    """A stock index level, kept for correlation."""
    store.client().hset(store.key("strategy", "indices"), message.index_name, repr(message.value))


@stage("tradebus.strategy.on_onchain_metric", queue="strategy_service_onchain_metrics", accepts=OnchainMetric)
def on_onchain_metric(message: OnchainMetric) -> None:
    """An on-chain metric, kept per token."""
    store.client().hset(
        store.key("strategy", "onchain", message.symbol), message.metric_name, repr(message.value)
    )


@stage("tradebus.strategy.on_whale_alert", queue="strategy_service_whale_alerts", accepts=WhaleAlert)
def on_whale_alert(message: WhaleAlert) -> None:
    """A whale transfer: coins moving to or from exchanges sway the confidence of the next signal."""
    strategy_state.record_whale(message)


@stage("tradebus.strategy.on_order_update", queue="strategy_order_updates", accepts=OrderUpdate)
def on_order_update(message: OrderUpdate) -> None:
    """The fate of one of the strategy's orders: its position follows the fills."""
    if message.strategy_id == STRATEGY_ID:
        strategy_state.apply_update(message)
