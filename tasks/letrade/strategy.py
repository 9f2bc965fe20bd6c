"""Strategy: the seed's trade flow, one message at a time.

market data -> (crossover) ``request.capital.allocation`` -> ``response.capital.allocation`` (approved)
-> ``commands.execute_trade`` -> ``events.trade_executed``. The rule and the state are
tradebus/letrade/strategy.py. Responses to other callers' requests (the same key reaches every
subscriber) are not this strategy's and are left alone.
"""

from __future__ import annotations

from celery.utils.log import get_task_logger

from routing.letrade import STRATEGY
from tradebus.letrade import feed
from tradebus.letrade import strategy as state
from tradebus.letrade.messages import (
    CandleBatchMessage,
    CapitalAllocationRequestMessage,
    CapitalAllocationResponseMessage,
    ErrorMessage,
    ExecuteTradeMessage,
    MarketDataMessage,
    TradeExecutedMessage,
    build,
    derived_id,
)
from tradebus.letrade.payloads import CapitalAllocationRequest, ExecuteTrade
from tradebus.letrade.stage import letrade_stage, publish

logger = get_task_logger(__name__)
SOURCE = f"strategy_{state.STRATEGY_ID}"


def on_candles(batch: CandleBatchMessage) -> None:
    """A batch of one pair's candles: its closes kept in one round trip, then each candle's crossover, in
    order, as ``on_market_data`` would have seen them one by one."""
    pair = batch.payload
    points = [(candle.timestamp.timestamp(), candle.close) for candle in pair.candles]
    windows = state.add_closes(pair.symbol, points)
    for index, window in enumerate(windows):
        # One trade per pair in flight: once a crossover of this batch took the pair's lock or found it
        # taken, the later ones would find it taken too (no Redis round trip each to learn it).
        if (side := state.crossover(window)) is not None and _crossed(feed.candle(batch, index), side):
            return


@letrade_stage(
    "tradebus.letrade_strategy.on_market_data",
    queue=STRATEGY.name,
    accepts=MarketDataMessage,
    batch=on_candles,
)
def on_market_data(message: MarketDataMessage) -> None:
    """Ask the capital manager for capital when the averages cross."""
    candle = message.payload
    side = state.crossover(state.add_close(candle.symbol, candle.timestamp.timestamp(), candle.close))
    if side is not None:
        _crossed(message, side)


def _crossed(message: MarketDataMessage, side: str) -> bool:
    """The averages crossed on ``message``'s candle: ask for capital, one trade per pair at a time.
    Whether the pair's lock was tried (taken by this request, or found taken)."""
    candle = message.payload
    if side == "sell" and state.holding(candle.symbol) <= 0:
        return False
    if not state.lock(candle.symbol):
        return True
    held = state.holding(candle.symbol)
    if side == "sell" and held <= 0:  # sold meanwhile, by the trade whose event freed the lock
        state.unlock(candle.symbol)
        return True
    quantity = state.ORDER_NOTIONAL / candle.close if side == "buy" else held
    request = build(
        CapitalAllocationRequestMessage,
        CapitalAllocationRequest(
            strategy_id=state.STRATEGY_ID,
            symbol=candle.symbol,
            side=side,
            quantity=quantity,
            price=candle.close,
        ),
        SOURCE,
        # Derived from the candle's id: a redelivered candle that asks again repeats the same request.
        message_id=derived_id("request", message.message_id),
    )
    # The order id is chosen now, so a redelivered response repeats the same command (filled once).
    context = {
        "symbol": candle.symbol,
        "exchange": candle.exchange,
        "side": side,
        "client_order_id": state.next_order_id(),
    }
    state.remember(request.message_id, context)
    try:
        publish(request)
    except Exception:
        state.unlock(candle.symbol)
        raise
    state.counted("requests")
    return True


@letrade_stage(
    "tradebus.letrade_strategy.on_allocation", queue=STRATEGY.name, accepts=CapitalAllocationResponseMessage
)
def on_allocation(message: CapitalAllocationResponseMessage) -> None:
    """An approved (or reduced) allocation becomes a trade command; a rejection frees the pair."""
    answer = message.payload
    context = state.pending(answer.request_id)
    if context is None:
        # Every subscriber of the response key gets every response: this one answers another caller
        # (who has its own copy), or a request of ours older than PENDING_SECONDS.
        logger.info("allocation %s is not a pending request of this strategy; left alone", answer.request_id)
        return
    if answer.result == "rejected" or answer.approved_quantity <= 0:
        state.counted("rejected")
        state.unlock(context["symbol"])
        state.forget(answer.request_id)
        return
    state.counted("approved")
    command = ExecuteTrade(
        strategy_id=state.STRATEGY_ID,
        exchange=context["exchange"],
        symbol=context["symbol"],
        side=context["side"],
        type="market",
        amount=answer.approved_quantity,
        stop_loss=answer.suggested_stop_loss,
        take_profit=answer.suggested_take_profit,
        client_order_id=context["client_order_id"],
    )
    publish(build(ExecuteTradeMessage, command, SOURCE, message_id=derived_id("command", answer.request_id)))
    state.forget(answer.request_id)


@letrade_stage(
    "tradebus.letrade_strategy.on_trade_executed", queue=STRATEGY.name, accepts=TradeExecutedMessage
)
def on_trade_executed(message: TradeExecutedMessage) -> None:
    """Book the strategy's own fills and free the pair for its next trade."""
    event = message.payload
    if event.strategy_id != state.STRATEGY_ID or event.status == "open":
        return
    # Trade events come at least once (a redelivered command repeats its event): book each order once.
    if event.status == "filled" and state.book(event.order_id, event.symbol, event.side, event.filled):
        state.counted("executed")
    state.unlock(event.symbol)


@letrade_stage("tradebus.letrade_strategy.on_error", queue=STRATEGY.name, accepts=ErrorMessage)
def on_error(message: ErrorMessage) -> None:
    """A failed trade of this strategy frees its pair."""
    context = message.payload.context
    if context.get("strategy_id") == state.STRATEGY_ID and isinstance(context.get("symbol"), str):
        state.counted("errors")
        state.unlock(context["symbol"])
