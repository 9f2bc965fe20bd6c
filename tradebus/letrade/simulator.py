"""Simulated Letrade market data: one-minute candles of a few pairs on ``binance``, as the exchange
connector would publish them from the exchange's WebSocket stream (the seed's real-time data flow)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from tradebus.letrade.messages import MarketDataMessage, build
from tradebus.letrade.payloads import DEFAULT_EXCHANGE, MarketData

EXCHANGE = DEFAULT_EXCHANGE
START_PRICES = {"BTC/USDT": 50_000.0, "ETH/USDT": 3_000.0, "SOL/USDT": 150.0}
SOURCE = "exchange_connector"
#: Candles per second the demo publishes (all pairs together).
DEFAULT_RATE = 50.0
#: Per-candle volatility, and how often the trend changes sign (so that averages cross).
VOLATILITY = 0.002
TREND_FLIP = 0.15


def candles(seed: int | None = None, start: datetime | None = None) -> Iterator[MarketDataMessage]:
    """An endless stream of candles, the pairs in turn, each pair's clock a minute further per candle."""
    rng = random.Random(seed)
    prices = dict(START_PRICES)
    trend = {pair: VOLATILITY / 2 for pair in prices}
    clock = (start or datetime.now(UTC)).replace(second=0, microsecond=0)
    while True:
        clock += timedelta(minutes=1)
        for pair, price in prices.items():
            if rng.random() < TREND_FLIP:
                trend[pair] = -trend[pair]
            close = price * (1 + trend[pair] + rng.gauss(0, VOLATILITY))
            high = max(price, close) * (1 + abs(rng.gauss(0, VOLATILITY / 2)))
            low = min(price, close) * (1 - abs(rng.gauss(0, VOLATILITY / 2)))
            prices[pair] = close
            payload = MarketData(
                symbol=pair,
                timestamp=clock,
                open=round(price, 6),
                high=round(high, 6),
                low=round(low, 6),
                close=round(close, 6),
                volume=round(rng.uniform(1, 100), 4),
                exchange=EXCHANGE,
            )
            message = build(MarketDataMessage, payload, SOURCE)
            assert isinstance(message, MarketDataMessage)
            yield message


def run(
    publish: Callable[[MarketDataMessage], object], rate: float, duration: float, seed: int | None = None
) -> int:
    """Publish candles (``seed``'s) at ``rate`` per second for ``duration`` seconds; returns how many."""
    published, started = 0, time.monotonic()
    for message in candles(seed):
        elapsed = time.monotonic() - started
        if elapsed >= duration:
            break
        ahead = published / rate - elapsed
        if ahead > 0:
            time.sleep(ahead)
        publish(message)
        published += 1
    return published
