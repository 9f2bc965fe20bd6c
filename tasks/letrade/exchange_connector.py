"""Exchange connector: paper execution of ``commands.execute_trade`` and ``commands.cancel_order``.

Each command ends in ``events.trade_executed`` (filled, open or canceled) or ``events.error`` (the seed's
"Insufficient balance", an order that is not open). Market data keeps the last prices orders fill at, and
fills resting limit orders the price crosses. Trade commands overtake queued market data: the inbox is a
priority queue and commands carry the seed's HIGH priority.
"""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_task_logger

from routing.letrade import EXCHANGE_CONNECTOR
from tradebus import handling, recorder
from tradebus.letrade import paper
from tradebus.letrade.messages import (
    CancelOrderMessage,
    CandleBatchMessage,
    Envelope,
    ErrorMessage,
    ExecuteTradeMessage,
    MarketDataMessage,
    TradeExecutedMessage,
    build,
    derived_id,
)
from tradebus.letrade.stage import letrade_stage, publish

logger = get_task_logger(__name__)
SOURCE = "exchange_connector"


def _announce(result: dict[str, Any], answering: str) -> None:
    """Publish what an order came to. Its id derives from the order and its state (an error's: from the
    message it answers), so a redelivery repeats the same message, which subscribers can tell apart."""
    payload = result["payload"]
    if result["event"] == paper.TRADE_EVENT:
        cls: type[Envelope] = TradeExecutedMessage
        message_id = derived_id(paper.TRADE_EVENT, payload["order_id"], payload["status"])
        strategy = payload.get("strategy_id")
    else:
        cls, message_id = ErrorMessage, derived_id(paper.ERROR_EVENT, answering)
        strategy = payload.get("context", {}).get("strategy_id")
    publish(
        build(cls, payload, SOURCE, message_id=message_id),
        strategy_id=strategy if isinstance(strategy, int) else None,
    )


@letrade_stage(
    "tradebus.letrade_exchange_connector.execute_trade",
    queue=EXCHANGE_CONNECTOR.name,
    accepts=ExecuteTradeMessage,
    handler_checks_repeats=True,
)
def execute_trade(message: ExecuteTradeMessage) -> None:
    """Fill (or rest, or refuse) a trade command exactly once per client order id (else message id).

    The stage's check for a repeat of the command rides in the round trip that reads the account
    (``handler_checks_repeats``): one Redis round trip fewer on the way to ``trade_executed``."""
    command = message.payload
    result = paper.execute(
        command,
        command.client_order_id or message.message_id,
        also=handling.repeat_read(),
        first=handling.drop_if_repeat,
    )
    if result.pop("again"):
        recorder.bump("duplicate_deliveries")
    logger.info("%s %s %s: %s", command.side, command.amount, command.symbol, result["payload"].get("status"))
    _announce(result, message.message_id)


@letrade_stage(
    "tradebus.letrade_exchange_connector.cancel_order",
    queue=EXCHANGE_CONNECTOR.name,
    accepts=CancelOrderMessage,
)
def cancel_order(message: CancelOrderMessage) -> None:
    """Cancel a resting order."""
    _announce(paper.cancel(message.payload), message.message_id)


def track_prices(batch: CandleBatchMessage) -> None:
    """A batch of one pair's candles: its last close is the price, each close in turn fills the resting
    orders it crosses; then the outbox, as for a single candle."""
    pair = batch.payload
    closes = [candle.close for candle in pair.candles]
    paper.record_price(pair.exchange, pair.symbol, closes[-1], pair.candles[-1].timestamp.timestamp())
    paper.fill_resting_many(pair.exchange, pair.symbol, closes)
    _publish_unannounced()


@letrade_stage(
    "tradebus.letrade_exchange_connector.track_price",
    queue=EXCHANGE_CONNECTOR.name,
    accepts=MarketDataMessage,
    batch=track_prices,
)
def track_price(message: MarketDataMessage) -> None:
    """Remember the pair's last price, fill the resting limit orders it crosses, and publish every fill
    still in the outbox (this delivery's, or one whose delivery died before it had published)."""
    candle = message.payload
    paper.record_price(candle.exchange, candle.symbol, candle.close, candle.timestamp.timestamp())
    paper.fill_resting(candle.exchange, candle.symbol, candle.close)
    _publish_unannounced()


def _publish_unannounced() -> None:
    for order_id, result in paper.unannounced().items():
        _announce(result, order_id)
        paper.announced(order_id)
