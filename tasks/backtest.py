"""Backtest recorder: backtest signals are kept and never become orders.

Each stage is wired and observable: it validates, logs and records what it received.
"""

from __future__ import annotations

from tradebus.messages import TradingSignal
from tradebus.stage import stage


@stage("tradebus.backtest.record_signal", queue="backtest_signals", accepts=TradingSignal)
def record_signal(message: TradingSignal) -> None:
    """A backtest signal, recorded only."""
