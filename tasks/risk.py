"""Risk manager: turns trading signals into order requests and answers risk checks.

Each stage is wired and observable: it validates, logs and records what it received.
"""

from __future__ import annotations

from tradebus.messages import RiskCheck, TradingSignal
from tradebus.stage import stage


@stage("tradebus.risk.evaluate_signal", queue="trading_signals", accepts=TradingSignal)
def evaluate_signal(message: TradingSignal) -> None:
    """A live trading signal to approve or reject."""


@stage("tradebus.risk.check", queue="risk_checks", accepts=RiskCheck)
def check(message: RiskCheck) -> None:
    """A risk validation request."""
