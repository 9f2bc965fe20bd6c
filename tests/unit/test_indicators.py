"""Indicators against published reference values and their defining properties. No broker."""

from __future__ import annotations

import pytest

from tradebus.mastertrade.trading.indicators import atr, ema, macd, rsi, sma

# Wilder's RSI worked example (as published by StockCharts): 14-period RSI of these closes.
CLOSES = [
    44.3389, 44.0902, 44.1497, 43.6124, 44.3278, 44.8264, 45.0955, 45.4245, 45.8433, 46.0826, 45.8931,
    46.0328, 45.6140, 46.2820, 46.2820, 46.0028, 46.0328, 46.4116, 46.2222, 45.6439, 46.2122, 46.2521,
    45.7137, 46.4515, 45.7835, 45.3548, 44.0288, 44.1783, 44.2181, 44.5672, 43.4205, 42.6628, 43.1314,
]  # fmt: skip
RSI_EXPECTED = [
    70.53, 66.32, 66.55, 69.41, 66.36, 57.97, 62.93, 63.26, 56.06, 62.38, 54.71, 50.42, 39.99, 41.46,
    41.87, 45.46, 37.30, 33.08, 37.77,
]  # fmt: skip


def test_rsi_matches_wilders_worked_example() -> None:
    values = rsi(CLOSES, 14)
    assert values[:14] == [None] * 14
    assert [round(v, 2) for v in values[14:] if v is not None] == pytest.approx(RSI_EXPECTED, abs=0.01)


def test_rsi_of_a_rising_series_is_100_and_of_a_falling_one_is_0() -> None:
    assert rsi([float(i) for i in range(30)])[-1] == 100.0
    assert rsi([float(30 - i) for i in range(30)])[-1] == pytest.approx(0.0)


def test_sma_and_ema_of_a_constant_series_are_the_constant() -> None:
    assert sma([5.0] * 20, 10)[-1] == 5.0
    assert ema([5.0] * 20, 10)[-1] == pytest.approx(5.0)
    assert sma([1.0, 2.0, 3.0], 2) == [None, 1.5, 2.5]


def test_ema_follows_recent_values_faster_than_sma() -> None:
    series = [10.0] * 20 + [20.0] * 5
    assert ema(series, 10)[-1] > sma(series, 10)[-1]  # type: ignore[operator]


def test_macd_histogram_is_line_minus_signal_and_turns_positive_after_a_bottom() -> None:
    series = [100.0 - 0.02 * i * i for i in range(40)] + [68.8 + 0.8 * i for i in range(12)]
    result = macd(series)
    for line, signal, hist in zip(result.line, result.signal, result.histogram, strict=True):
        if hist is not None:
            assert hist == pytest.approx(line - signal)  # type: ignore[operator]
    assert result.histogram[39] is not None and result.histogram[39] <= 0
    assert result.histogram[-1] is not None and result.histogram[-1] > 0
    assert result.signal[:33] == [None] * 33


def test_atr_of_constant_ranges_is_that_range() -> None:
    highs, lows, closes = [11.0] * 30, [9.0] * 30, [10.0] * 30
    assert atr(highs, lows, closes, 14)[-1] == pytest.approx(2.0)
