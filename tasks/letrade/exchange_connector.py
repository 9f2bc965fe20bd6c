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
from tradebus import recorder
from tradebus.letrade import paper
from tradebus.letrade.messages import (
    CancelOrderMessage,
    Envelope,
    ErrorMessage,
    ExecuteTradeMessage,
    MarketDataMessage,
    TradeExecutedMessage,
    build,
)
from tradebus.letrade.stage import letrade_stage, publish

logger = get_task_logger(__name__)
SOURCE = "exchange_connector"


def _announce(result: dict[str, Any], answering: str) -> None:
    """Publish what an order came to; its id derives from the command's, so a redelivery repeats it."""
    cls: type[Envelope] = TradeExecutedMessage if result["event"] == paper.TRADE_EVENT else ErrorMessage
    strategy = result["payload"].get("strategy_id", result["payload"].get("context", {}).get("strategy_id"))
    publish(
        build(cls, result["payload"], SOURCE, message_id=f"{result['event']}-{answering}"),
        strategy_id=strategy if isinstance(strategy, int) else None,
    )


@letrade_stage(
    "tradebus.exchange_connector.execute_trade", queue=EXCHANGE_CONNECTOR.name, accepts=ExecuteTradeMessage
)
def execute_trade(message: ExecuteTradeMessage) -> None:
    """Fill (or rest, or refuse) a trade command exactly once per client order id."""
    command = message.payload
    if command.client_order_id is None:
        command = command.model_copy(update={"client_order_id": message.message_id})
    result = paper.execute(command)
    if result.pop("again"):
        recorder.bump("duplicate_deliveries")
    logger.info("%s %s %s: %s", command.side, command.amount, command.symbol, result["payload"].get("status"))
    _announce(result, str(command.client_order_id))


@letrade_stage(
    "tradebus.exchange_connector.cancel_order", queue=EXCHANGE_CONNECTOR.name, accepts=CancelOrderMessage
)
def cancel_order(message: CancelOrderMessage) -> None:
    """Cancel a resting order."""
    _announce(paper.cancel(message.payload), message.message_id)


@letrade_stage(
    "tradebus.exchange_connector.track_price", queue=EXCHANGE_CONNECTOR.name, accepts=MarketDataMessage
)
def track_price(message: MarketDataMessage) -> None:
    """Remember the pair's last price and fill the resting limit orders it crosses."""
    candle = message.payload
    paper.record_price(candle.exchange, candle.symbol, candle.close)
    for result in paper.fill_resting(candle.exchange, candle.symbol, candle.close):
        _announce(result, f"{result['payload'].get('order_id', '')}-{message.message_id}")
