"""Backtest recorder: backtest signals are kept for analysis and never become orders."""

from __future__ import annotations

from tradebus import store
from tradebus.mastertrade.messages import TradingSignal
from tradebus.mastertrade.stage import stage

#: Backtest signals kept per strategy.
KEPT = 10_000


@stage("tradebus.backtest.record_signal", queue="backtest_signals", accepts=TradingSignal)
def record_signal(message: TradingSignal) -> None:
    """Keep a backtest signal with its strategy's record."""
    key = store.key("backtest", message.strategy_id)
    pipe = store.client().pipeline(transaction=False)
    pipe.lpush(key, message.model_dump_json())
    pipe.ltrim(key, 0, KEPT - 1)
    pipe.execute()
