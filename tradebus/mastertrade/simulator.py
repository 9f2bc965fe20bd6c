"""The market-data simulator: realistic MasterTrade market traffic, published at the seed's rates.

Prices follow a geometric random walk per symbol with volatility clustering. Each step moves every price
once and produces what the Market Data Service would publish for it: a ticker, usually a trade, often an
order book snapshot, the candles that closed (1m and 5m), and now and then sentiment, stock indices, on-chain
metrics and a whale alert.

Market time runs faster than wall time while it replays the past (each step is ``STEP_SECONDS`` of market
time, so candles arrive several per second and the strategy has its indicators within seconds) and never
runs ahead of the wall clock: once it has caught up, it follows it.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tradebus.mastertrade.messages import (
    BusMessage,
    MarketData,
    OnchainMetric,
    OrderBook,
    Sentiment,
    StockIndex,
    Ticker,
    Trade,
    WhaleAlert,
)

#: Symbols and their starting prices.
DEFAULT_SYMBOLS: dict[str, float] = {"BTCUSDT": 45_000.0, "ETHUSDT": 2_500.0, "SOLUSDT": 150.0}
#: Candle intervals published, in seconds.
CANDLE_SECONDS: dict[str, int] = {"1m": 60, "5m": 300}
#: Market time per step while replaying the past: a 1m candle every other step.
STEP_SECONDS = 30.0
#: How far back market time starts: a run replays the last day at speed before it follows the clock.
REPLAY_SECONDS = 24 * 3600
#: Seed's rates: about 100 messages per second, bursts to 500.
DEFAULT_RATE = 100.0
DEFAULT_BURST_RATE = 500.0
#: A burst every BURST_EVERY seconds lasts BURST_SECONDS.
BURST_EVERY = 15.0
BURST_SECONDS = 1.0
#: Per-step probabilities of the sparse messages.
P_TRADE, P_BOOK, P_SENTIMENT, P_STOCK, P_ONCHAIN, P_WHALE = 0.6, 0.3, 0.05, 0.02, 0.03, 0.004
EXCHANGES = ("binance_exchange", "coinbase_exchange", "kraken_exchange")


@dataclass
class _Candle:
    start: float
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    trades: int = 0


@dataclass
class _Symbol:
    name: str
    price: float
    volatility: float = 0.0015
    candles: dict[str, _Candle] = field(default_factory=dict)


class MarketSimulator:
    """Generates market messages step by step; deterministic for a given ``seed`` and clock."""

    def __init__(
        self,
        symbols: dict[str, float] | None = None,
        seed: int | None = None,
        start: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rng = random.Random(seed)
        self.clock = clock
        self.now = (clock() if start is None else start) - (REPLAY_SECONDS if start is None else 0)
        self.symbols = [_Symbol(name, price) for name, price in (symbols or DEFAULT_SYMBOLS).items()]
        self.indices = {"SPX": 5_000.0, "VIX": 15.0}
        self.trade_ids = 0

    def _at(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    def step(self) -> list[BusMessage]:
        """Advance market time one step; return the messages it produced, in publishing order."""
        self.now = min(self.now + STEP_SECONDS, max(self.now, self.clock()))
        out: list[BusMessage] = []
        for symbol in self.symbols:
            out += self._move(symbol)
        if self.rng.random() < P_STOCK:
            out += self._indices()
        if self.rng.random() < P_WHALE:
            out.append(self._whale())
        return out

    def _move(self, s: _Symbol) -> list[BusMessage]:
        rng = self.rng
        # Volatility clustering: calm and busy periods alternate.
        s.volatility = min(0.006, max(0.0005, s.volatility * math.exp(rng.gauss(0, 0.1))))
        s.price *= math.exp(rng.gauss(0, s.volatility))
        at = self._at()
        spread = s.price * 0.0001
        out: list[BusMessage] = [
            Ticker(
                symbol=s.name,
                price=round(s.price, 8),
                bid=round(s.price - spread, 8),
                ask=round(s.price + spread, 8),
                timestamp=at,
            )
        ]
        volume = rng.lognormvariate(0, 1) * 1e5 / s.price
        out += self._candles(s, volume)
        if rng.random() < P_TRADE:
            self.trade_ids += 1
            out.append(
                Trade(
                    symbol=s.name,
                    trade_id=f"t{self.trade_ids}",
                    price=round(s.price, 8),
                    quantity=round(max(volume / 10, 1e-6), 8),
                    side=rng.choice(("BUY", "SELL")),
                    timestamp=at,
                )
            )
        if rng.random() < P_BOOK:
            out.append(self._book(s, at))
        if rng.random() < P_SENTIMENT:
            drift = math.tanh(rng.gauss(0, 0.5))
            out.append(
                Sentiment(
                    symbol=s.name,
                    platform=rng.choice(("twitter", "reddit")),
                    score=round(drift, 4),
                    mentions=rng.randint(10, 5000),
                    timestamp=at,
                )
            )
        if rng.random() < P_ONCHAIN:
            base = s.name.removesuffix("USDT")
            out.append(
                OnchainMetric(
                    metric_name="active_addresses",
                    symbol=base,
                    value=float(rng.randint(500_000, 1_200_000)),
                    timestamp=at,
                )
            )
        return out

    def _candles(self, s: _Symbol, volume: float) -> list[BusMessage]:
        closed: list[BusMessage] = []
        for interval, seconds in CANDLE_SECONDS.items():
            start = self.now - self.now % seconds
            candle = s.candles.get(interval)
            if candle is not None and candle.start != start:
                closed.append(
                    MarketData(
                        symbol=s.name,
                        interval=interval,
                        timestamp=datetime.fromtimestamp(candle.start, UTC),
                        open=round(candle.open, 8),
                        high=round(candle.high, 8),
                        low=round(candle.low, 8),
                        close=round(candle.close, 8),
                        volume=round(candle.volume, 8),
                        quote_volume=round(candle.volume * candle.close, 2),
                        trades_count=candle.trades,
                    )
                )
                candle = None
            if candle is None:
                s.candles[interval] = candle = _Candle(start, s.price, s.price, s.price, s.price)
            candle.high, candle.low = max(candle.high, s.price), min(candle.low, s.price)
            candle.close = s.price
            candle.volume += volume
            candle.trades += self.rng.randint(5, 50)
        return closed

    def _book(self, s: _Symbol, at: datetime) -> OrderBook:
        step = s.price * 0.0001
        bids = [(round(s.price - step * (i + 1), 8), round(self.rng.uniform(0.1, 5.0), 6)) for i in range(10)]
        asks = [(round(s.price + step * (i + 1), 8), round(self.rng.uniform(0.1, 5.0), 6)) for i in range(10)]
        return OrderBook(symbol=s.name, bids=bids, asks=asks, timestamp=at)

    def _indices(self) -> list[BusMessage]:
        out: list[BusMessage] = []
        for name, value in self.indices.items():
            change = self.rng.gauss(0, 0.002 if name == "SPX" else 0.02)
            self.indices[name] = value * math.exp(change)
            out.append(
                StockIndex(
                    index_name=name,
                    value=round(self.indices[name], 4),
                    change_pct=round(change * 100, 4),
                    timestamp=self._at(),
                )
            )
        return out

    def _whale(self) -> WhaleAlert:
        rng = self.rng
        token = rng.choice(("BTC", "ETH"))
        price = next((s.price for s in self.symbols if s.name.startswith(token)), 1.0)
        amount = round(rng.uniform(100, 2000) if token == "BTC" else rng.uniform(1000, 30000), 4)
        inflow = rng.random() < 0.5
        return WhaleAlert(
            transaction_hash="0x" + "".join(rng.choice("0123456789abcdef") for _ in range(64)),
            blockchain="bitcoin" if token == "BTC" else "ethereum",
            token=token,
            from_address="0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40)),
            to_address="0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40)),
            from_label="unknown_wallet" if inflow else rng.choice(EXCHANGES),
            to_label=rng.choice(EXCHANGES) if inflow else "unknown_wallet",
            amount_token=amount,
            amount_usd=round(amount * price, 2),
            alert_level=rng.choice(("high", "high", "critical")),
            timestamp=self._at(),
        )

    def messages(self) -> Iterator[BusMessage]:
        """Every message, step after step, forever."""
        while True:
            yield from self.step()


@dataclass
class Pace:
    """The publishing rate over time: ``rate`` messages per second, ``burst_rate`` during bursts."""

    rate: float = DEFAULT_RATE
    burst_rate: float = DEFAULT_BURST_RATE
    burst_every: float = BURST_EVERY
    burst_seconds: float = BURST_SECONDS

    def at(self, elapsed: float) -> float:
        """Messages per second ``elapsed`` seconds into the run."""
        bursting = self.burst_every > 0 and self.burst_rate > self.rate
        if bursting and elapsed % self.burst_every >= self.burst_every - self.burst_seconds:
            return self.burst_rate
        return self.rate


@dataclass
class Stats:
    """What a simulation published."""

    published: int = 0
    seconds: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Messages per second on average."""
        return self.published / self.seconds if self.seconds else 0.0


def run(
    send: Callable[[BusMessage], object],
    pace: Pace,
    duration: float,
    simulator: MarketSimulator | None = None,
    stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[Stats], None] | None = None,
) -> Stats:
    """Publish with ``send`` at ``pace`` for ``duration`` seconds (0: until ``stop()`` or Ctrl-C)."""
    simulator = simulator or MarketSimulator()
    stats = Stats()
    started = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        _loop(send, pace, duration, simulator.messages(), stats, stop, on_progress)
    stats.seconds = time.monotonic() - started
    return stats


def _loop(
    send: Callable[[BusMessage], object],
    pace: Pace,
    duration: float,
    messages: Iterator[BusMessage],
    stats: Stats,
    stop: Callable[[], bool],
    on_progress: Callable[[Stats], None] | None,
) -> None:
    started = time.monotonic()
    due = 0.0
    next_progress = 1.0
    while not stop():
        elapsed = time.monotonic() - started
        if duration and elapsed >= duration:
            break
        if elapsed < due:
            time.sleep(min(due - elapsed, 0.05))
            continue
        message = next(messages)
        send(message)
        stats.published += 1
        stats.by_type[message.type] = stats.by_type.get(message.type, 0) + 1
        due += 1.0 / pace.at(elapsed)
        if due < elapsed - 1.0:
            due = elapsed  # fell behind (a slow broker): do not try to catch up in a burst
        if on_progress and elapsed >= next_progress:
            stats.seconds = elapsed
            on_progress(stats)
            next_progress += 1.0


def run_publishing(
    app: Any,
    pace: Pace,
    duration: float,
    simulator: MarketSimulator | None = None,
    echo: Callable[[str], None] = print,
) -> Stats:
    """``tradebus simulate``: publish on ``app``'s broker, a progress line every 10 seconds."""
    from tradebus.mastertrade.wire import publish

    last = [0.0]

    def progress(stats: Stats) -> None:
        if stats.seconds - last[0] >= 10:
            last[0] = stats.seconds
            echo(f"[{stats.seconds:5.0f}s] published {stats.published} ({stats.rate:.0f}/s)")

    return run(lambda message: publish(message, app=app), pace, duration, simulator, on_progress=progress)
