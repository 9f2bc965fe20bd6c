"""Technical indicators over a series of closes (oldest first), computed the way charting tools do.

Each function returns one value per input value (``None`` until the indicator has enough data), so the
value at the latest candle and at the one before are both at hand to detect crossings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Series = list[float | None]


def sma(values: Sequence[float], period: int) -> Series:
    """Simple moving average."""
    out: Series = [None] * len(values)
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= period:
            total -= values[i - period]
        if i >= period - 1:
            out[i] = total / period
    return out


def ema(values: Sequence[float], period: int) -> Series:
    """Exponential moving average, seeded with the SMA of its first ``period`` values."""
    out: Series = [None] * len(values)
    if len(values) < period:
        return out
    alpha = 2.0 / (period + 1)
    current = sum(values[:period]) / period
    out[period - 1] = current
    for i in range(period, len(values)):
        current = alpha * values[i] + (1 - alpha) * current
        out[i] = current
    return out


def rsi(closes: Sequence[float], period: int = 14) -> Series:
    """Wilder's relative strength index, 0..100."""
    out: Series = [None] * len(closes)
    if len(closes) <= period:
        return out
    gains = [max(closes[i] - closes[i - 1], 0.0) for i in range(1, len(closes))]
    losses = [max(closes[i - 1] - closes[i], 0.0) for i in range(1, len(closes))]
    avg_gain = sum(gains[:period]) / period
    avg_loss = sum(losses[:period]) / period
    for i in range(period, len(closes)):
        if i > period:
            avg_gain = (avg_gain * (period - 1) + gains[i - 1]) / period
            avg_loss = (avg_loss * (period - 1) + losses[i - 1]) / period
        out[i] = 100.0 if avg_loss == 0 else 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)
    return out


@dataclass(frozen=True)
class Macd:
    """MACD line (fast EMA - slow EMA), its signal line, and the histogram (line - signal)."""

    line: Series
    signal: Series
    histogram: Series


def macd(closes: Sequence[float], fast: int = 12, slow: int = 26, signal: int = 9) -> Macd:
    """Moving average convergence/divergence."""
    fast_ema, slow_ema = ema(closes, fast), ema(closes, slow)
    line: Series = [
        f - s if f is not None and s is not None else None for f, s in zip(fast_ema, slow_ema, strict=True)
    ]
    start = next((i for i, v in enumerate(line) if v is not None), len(line))
    tail = ema([v for v in line[start:] if v is not None], signal)
    signal_line: Series = [None] * start
    signal_line += tail
    histogram: Series = [
        m - s if m is not None and s is not None else None for m, s in zip(line, signal_line, strict=True)
    ]
    return Macd(line, signal_line, histogram)


def atr(highs: Sequence[float], lows: Sequence[float], closes: Sequence[float], period: int = 14) -> Series:
    """Wilder's average true range."""
    out: Series = [None] * len(closes)
    if len(closes) <= period:
        return out
    true_ranges = [highs[0] - lows[0]] + [
        max(highs[i] - lows[i], abs(highs[i] - closes[i - 1]), abs(lows[i] - closes[i - 1]))
        for i in range(1, len(closes))
    ]
    current = sum(true_ranges[1 : period + 1]) / period
    out[period] = current
    for i in range(period + 1, len(closes)):
        current = (current * (period - 1) + true_ranges[i]) / period
        out[i] = current
    return out
