"""Market-data stages under redelivery: a batch delivered again, after newer messages were handled, neither
counts twice nor overwrites the newer "latest" values (tasks/market_data.py, tasks/monitoring.py,
tasks/execution.py; ``state.put_newest`` and ``state.count_once``).

The stages' functions run here as a pool process runs them, against the real Redis.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks import execution, market_data, monitoring
from tests.support.wait import new_symbol
from tradebus import store
from tradebus.mastertrade import account
from tradebus.mastertrade.messages import OrderBook, Tick, Ticker, TickerBatch, Trade

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("fresh_state")]
EARLY = datetime(2026, 1, 1, tzinfo=UTC)
LATE = EARLY + timedelta(seconds=1)


def _trade(symbol: str, trade_id: str, price: float, at: datetime) -> Trade:
    return Trade(symbol=symbol, trade_id=trade_id, price=price, quantity=1.0, side="BUY", timestamp=at)


def test_a_redelivered_older_trade_counts_once_and_keeps_the_newer_trade() -> None:
    symbol = new_symbol()
    old, new = _trade(symbol, "t1", 10.0, EARLY), _trade(symbol, "t2", 11.0, LATE)
    for message in (old, new, old):  # t1, t2, then t1 again (its batch redelivered)
        market_data.record_trade.handler(message)
    assert store.client().hget(store.key("market", "trade_counts"), symbol) == b"2"
    latest = store.client().hget(store.key("market", "trades"), symbol)
    assert latest is not None and Trade.model_validate_json(latest).trade_id == "t2"
    market_data.record_trade.handler(_trade(symbol, "t3", 12.0, LATE + timedelta(seconds=1)))  # control
    assert store.client().hget(store.key("market", "trade_counts"), symbol) == b"3"


def test_a_redelivered_older_order_book_does_not_replace_the_newer() -> None:
    symbol = new_symbol()
    book = {"bids": [(9.0, 1.0)], "asks": [(10.0, 1.0)]}
    old = OrderBook(symbol=symbol, timestamp=EARLY, **book)
    new = OrderBook(symbol=symbol, timestamp=LATE, **book)
    for message in (old, new, old):
        market_data.record_orderbook.handler(message)
    latest = store.client().hget(store.key("market", "orderbooks"), symbol)
    assert latest is not None and OrderBook.model_validate_json(latest).timestamp == LATE


def test_an_older_ticker_batch_redelivered_keeps_the_newer_prices() -> None:
    symbol, other = new_symbol(), new_symbol()
    prices = store.key("monitor", "prices")
    older = [Ticker(symbol=symbol, price=1.0, timestamp=EARLY)]
    newer = [
        Ticker(symbol=symbol, price=2.0, timestamp=LATE),
        TickerBatch(symbol=other, ticks=[Tick(price=5.0, timestamp=LATE)]),
    ]
    monitoring.on_tickers(newer)
    monitoring.on_tickers([*older, Ticker(symbol=other, price=4.0, timestamp=EARLY)])  # redelivered
    assert store.client().hmget(prices, [symbol, other]) == [b"2.0", b"5.0"]
    monitoring.on_ticker.handler(Ticker(symbol=symbol, price=3.0, timestamp=LATE + timedelta(seconds=1)))
    assert store.client().hget(prices, symbol) == b"3.0"  # a newer one still replaces it


def test_the_executor_keeps_the_newest_price_whichever_process_wrote_it() -> None:
    symbol = new_symbol()
    execution.on_market_batch([Ticker(symbol=symbol, price=2.0, timestamp=LATE)])
    # Another pool process (no memory of the newer price) handles an older redelivered batch.
    execution.on_market_batch([Ticker(symbol=symbol, price=1.0, timestamp=EARLY)])
    execution.on_market_data.handler(Ticker(symbol=symbol, price=1.5, timestamp=EARLY))
    assert account.last_price(symbol) == 2.0
    execution.on_market_data.handler(Ticker(symbol=symbol, price=3.0, timestamp=LATE + timedelta(seconds=1)))
    assert account.last_price(symbol) == 3.0
    account.record_price(symbol, 7.0)  # a price set by hand is taken, and the next market price replaces it
    assert account.last_price(symbol) == 7.0
    execution.on_market_data.handler(Ticker(symbol=symbol, price=4.0, timestamp=EARLY))
    assert account.last_price(symbol) == 4.0
