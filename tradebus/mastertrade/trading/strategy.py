"""The strategy: candles in, a trading idea out when momentum turns.

Rules, evaluated at each closed candle of the strategy's interval (``evaluate``):

* BUY when flat and the MACD histogram crosses above zero (momentum turns up) while RSI is below the
  overbought level.
* SELL when long and the histogram crosses below zero, RSI is overbought, or the close reaches the
  position's stop loss or take profit.

Confidence starts at 0.5 and moves with the trend (fast SMA over slow SMA), the distance of RSI from its
extreme, social sentiment in the same direction and whale flows (coins leaving exchanges are bullish,
coins arriving are bearish). Stops and targets are set from the ATR; the suggested position size grows
with confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from tradebus.mastertrade.trading.indicators import atr, macd, rsi, sma

RSI_PERIOD = 14
OVERBOUGHT = 70.0
EXIT_OVERBOUGHT = 75.0
FAST_SMA, SLOW_SMA = 10, 30
ATR_PERIOD = 14
STOP_ATR, TARGET_ATR = 2.0, 3.0
#: Candles needed before the first signal: the slow MACD EMA (26) plus its signal line (9).
MIN_CANDLES = 35
MIN_SIZE_PCT, MAX_SIZE_PCT = 0.01, 0.05


class Candle(NamedTuple):
    """One closed candle: its open time (Unix seconds) and prices (a named tuple: the strategy reads 200 of
    them per candle it evaluates, and a tuple is made in a fifth of a frozen dataclass's time)."""

    time: float
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


@dataclass(frozen=True)
class Position:
    """What the strategy holds in one symbol, with the exits it planned."""

    quantity: float
    stop_loss: float | None = None
    take_profit: float | None = None


@dataclass(frozen=True)
class Context:
    """What the strategy knows besides candles: sentiment in [-1, 1], whale flow in [-1, 1]."""

    sentiment: float | None = None
    whale_flow: float = 0.0


@dataclass(frozen=True)
class Idea:
    """A trading signal the strategy wants to publish."""

    action: str
    confidence: float
    entry_price: float
    stop_loss: float | None
    take_profit: float | None
    position_size_pct: float | None
    reasoning: str
    indicators: dict[str, float] = field(default_factory=dict)


#: A histogram within this fraction of the price is zero (rounding noise of a flat or straight series).
FLAT = 1e-9


def _crossed_up(previous: float | None, current: float | None, price: float) -> bool:
    return previous is not None and current is not None and previous <= FLAT * price < current


def _crossed_down(previous: float | None, current: float | None, price: float) -> bool:
    return previous is not None and current is not None and previous >= -FLAT * price > current


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def evaluate(
    candles: Sequence[Candle], position: Position | None, context: Context = Context()
) -> Idea | None:
    """The idea at the last of ``candles`` (oldest first), or None when there is nothing to do."""
    if len(candles) < MIN_CANDLES:
        return None
    closes = [c.close for c in candles]
    rsi_now = rsi(closes, RSI_PERIOD)[-1]
    m = macd(closes)
    hist_prev, hist_now = m.histogram[-2], m.histogram[-1]
    fast, slow = sma(closes, FAST_SMA)[-1], sma(closes, SLOW_SMA)[-1]
    range_now = atr([c.high for c in candles], [c.low for c in candles], closes, ATR_PERIOD)[-1]
    if rsi_now is None or hist_now is None or fast is None or slow is None or range_now is None:
        return None
    close = closes[-1]
    indicators = {
        "RSI": round(rsi_now, 2),
        "MACD": round(m.line[-1] or 0.0, 6),
        "MACD_signal": round(m.signal[-1] or 0.0, 6),
        "MACD_histogram": round(hist_now, 6),
        "SMA_fast": round(fast, 6),
        "SMA_slow": round(slow, 6),
        "ATR": round(range_now, 6),
    }
    if context.sentiment is not None:
        indicators["sentiment_score"] = round(context.sentiment, 4)
    if context.whale_flow:
        indicators["whale_flow"] = round(context.whale_flow, 4)
    holding = position is not None and position.quantity > 0
    if not holding and _crossed_up(hist_prev, hist_now, close) and rsi_now < OVERBOUGHT:
        return _buy(close, rsi_now, fast > slow, range_now, context, indicators)
    if holding and position is not None:
        return _exit(close, rsi_now, _crossed_down(hist_prev, hist_now, close), position, indicators)
    return None


def _buy(
    close: float,
    rsi_now: float,
    uptrend: bool,
    range_now: float,
    context: Context,
    indicators: dict[str, float],
) -> Idea:
    reasons = ["MACD histogram crossed above zero"]
    confidence = 0.5
    if uptrend:
        confidence += 0.15
        reasons.append("fast SMA above slow SMA")
    confidence += 0.1 * (OVERBOUGHT - rsi_now) / OVERBOUGHT
    reasons.append(f"RSI {rsi_now:.0f}")
    if context.sentiment is not None:
        confidence += 0.15 * context.sentiment
        reasons.append(f"sentiment {context.sentiment:+.2f}")
    if context.whale_flow:
        confidence += 0.1 * context.whale_flow
        reasons.append("whales moving coins off exchanges" if context.whale_flow > 0 else "whale inflows")
    confidence = round(_clamp(confidence, 0.05, 0.99), 4)
    size = round(MIN_SIZE_PCT + (MAX_SIZE_PCT - MIN_SIZE_PCT) * confidence, 4)
    stop = max(close - STOP_ATR * range_now, close * 0.5)
    return Idea(
        action="BUY",
        confidence=confidence,
        entry_price=close,
        stop_loss=round(stop, 8),
        take_profit=round(close + TARGET_ATR * range_now, 8),
        position_size_pct=size,
        reasoning="; ".join(reasons),
        indicators=indicators,
    )


def _exit(
    close: float, rsi_now: float, momentum_down: bool, position: Position, indicators: dict[str, float]
) -> Idea | None:
    if position.stop_loss is not None and close <= position.stop_loss:
        reason, confidence = f"stop loss {position.stop_loss:g} reached", 0.95
    elif position.take_profit is not None and close >= position.take_profit:
        reason, confidence = f"take profit {position.take_profit:g} reached", 0.9
    elif rsi_now > EXIT_OVERBOUGHT:
        reason, confidence = f"RSI {rsi_now:.0f} overbought", 0.75
    elif momentum_down:
        reason, confidence = "MACD histogram crossed below zero", 0.7
    else:
        return None
    return Idea(
        action="SELL",
        confidence=confidence,
        entry_price=close,
        stop_loss=None,
        take_profit=None,
        position_size_pct=None,
        reasoning=reason,
        indicators=indicators,
    )
