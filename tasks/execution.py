"""Order executor: paper execution of order requests against the prices on its market data queue.

Every order request is executed once per ``request_id`` (tradebus/account.py), however often it is
delivered; its order updates (``order.update.{status}.{order_id}``, carrying the ``request_id``) are
published after the execution is booked, by one delivery, and again only if that delivery died before it
had published them. An order older than ten minutes (a late redelivery, a replay) is refused as stale,
unless it was filled already: then its stored updates are published (tradebus/mastertrade/account.py).
"""

from __future__ import annotations

from datetime import datetime

from celery.utils.log import get_task_logger

from tradebus import handling, recorder
from tradebus.mastertrade import account
from tradebus.mastertrade.errors import OrderRefused
from tradebus.mastertrade.messages import MarketData, OrderBook, OrderRequest, Ticker, TickerBatch, Trade
from tradebus.mastertrade.stage import stage
from tradebus.stage import delivery_id

logger = get_task_logger(__name__)


@stage(
    "tradebus.execution.execute_order",
    queue="order_requests",
    accepts=OrderRequest,
    handler_checks_repeats=True,
)
def execute_order(message: OrderRequest) -> None:
    """Fill (or reject) a risk-approved paper order exactly once.

    The stage's check for a repeat of the order rides in the round trip that reads the fill's record, the
    holding and the price (``handler_checks_repeats``): one Redis round trip fewer on the order path."""
    if not message.risk_approved:
        raise OrderRefused(f"order {message.request_id} is not risk-approved")
    if message.environment != "paper":
        raise OrderRefused(
            f"order {message.request_id} is for {message.environment} trading; this executor is paper only"
        )
    # Refused as stale (over ORDER_MAX_AGE_SECONDS old) only when not filled yet: a replay of an order whose
    # fill is booked (a short WAIT dead-lettered it) still publishes its updates.
    record = account.fill(message, also=handling.repeat_read(), first=handling.drop_if_repeat)
    if record["again"]:
        recorder.bump("duplicate_deliveries")
    else:
        logger.info("%s %s %s: %s", message.side, message.quantity, message.symbol, record["status"])
    # The updates' ids derive from the request: whichever delivery publishes them, they are the same.
    updates = account.updates_of(record)
    account.publish_once(account.fill_outcome(message), updates, delivery_id(), message.request_id)


def _price(message: MarketData | OrderBook | Trade | Ticker | TickerBatch) -> tuple[float, datetime] | None:
    """The price a market message carries, and the market time it is the price at."""
    if isinstance(message, MarketData):
        return message.close, message.closed_at
    if isinstance(message, Ticker | Trade):
        return message.price, message.timestamp
    if isinstance(message, TickerBatch):
        return message.last_price, message.ticks[-1].timestamp
    if message.bids and message.asks:
        return (message.bids[0][0] + message.asks[0][0]) / 2, message.timestamp
    return None


def on_market_batch(messages: list[MarketData | OrderBook | Trade | Ticker | TickerBatch]) -> None:
    """A batch of market messages (tradebus/batching.py): the newest price of each symbol, in one write."""
    account.record_prices([(m.symbol, *priced) for m in messages if (priced := _price(m)) is not None])


@stage(
    "tradebus.execution.on_market_data",
    queue="executor_market_data",
    accepts=(MarketData, OrderBook, Trade, Ticker, TickerBatch),
    batch_handler=on_market_batch,
)
def on_market_data(message: MarketData | OrderBook | Trade | Ticker | TickerBatch) -> None:
    """Remember the last price of the symbol: orders fill against it."""
    priced = _price(message)
    if priced is not None:
        account.record_price(message.symbol, priced[0], priced[1].timestamp())
