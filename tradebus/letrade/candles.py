"""The market-data service's candle history in Redis, and its answer to ``request.market_data``.

Candles arrive one minute each; a longer timeframe is built from them (open of the first, close of the
last, high and low over all, volumes summed), bucketed on the timeframe's boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from tradebus import state, store
from tradebus.letrade.payloads import MAX_CANDLES, Candle, MarketData

TIMEFRAME_SECONDS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3_600, "4h": 14_400, "1d": 86_400}
#: One-minute candles kept per pair.
KEPT = 10_000


def _k(symbol: str) -> str:
    return store.key("letrade", "candles", symbol)


def add(candle: MarketData) -> None:
    """Keep ``candle`` (by its timestamp: a repeat replaces the same minute)."""
    bar = Candle(
        timestamp=candle.timestamp,
        open=candle.open,
        high=candle.high,
        low=candle.low,
        close=candle.close,
        volume=candle.volume,
    )
    add_many(candle.symbol, [bar])


def add_many(symbol: str, bars: Sequence[Candle]) -> None:
    """Keep candles of ``symbol`` (a batch's), in one round trip."""
    pipe = store.client().pipeline(transaction=False)
    points = [(bar.timestamp.timestamp(), bar.model_dump_json()) for bar in bars]
    state.put_many_at(pipe, _k(symbol), points, KEPT)
    pipe.execute()


def history(symbol: str, timeframe: str, limit: int) -> list[Candle]:
    """The last ``limit`` candles of ``symbol`` in ``timeframe``, oldest first."""
    step = TIMEFRAME_SECONDS[timeframe]
    wanted = min(limit, MAX_CANDLES) * (step // 60)
    raw = store.client().zrange(_k(symbol), -wanted, -1)
    bars = [Candle.model_validate_json(r) for r in raw if isinstance(r, bytes | str)]
    buckets: dict[int, list[Candle]] = {}
    for bar in bars:
        buckets.setdefault(int(bar.timestamp.timestamp()) // step * step, []).append(bar)
    merged = [
        Candle(
            timestamp=datetime.fromtimestamp(start, UTC),
            open=group[0].open,
            high=max(b.high for b in group),
            low=min(b.low for b in group),
            close=group[-1].close,
            volume=sum(b.volume for b in group),
        )
        for start, group in sorted(buckets.items())
    ]
    return merged[-limit:]
