"""Risk manager: sizes or refuses trading signals, answers risk checks, trips the circuit breaker.

Approved signals become order requests on ``order.request.{symbol}``; a drawdown over the limit is
published on ``risk.breach.drawdown`` and a loss streak trips ``risk.circuit_breaker.loss_streak``
(tradebus/mastertrade/trading/risk.py holds the rules, tradebus/mastertrade/account.py the portfolio).
"""

from __future__ import annotations

import time
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from celery.utils.log import get_task_logger

from tradebus import handling
from tradebus.errors import RequestRefused, RequestTimeout
from tradebus.mastertrade import account
from tradebus.mastertrade.messages import (
    BusMessage,
    CircuitBreaker,
    OrderRequest,
    RiskBreach,
    RiskCheck,
    RiskCheckResult,
    TradingSignal,
)
from tradebus.mastertrade.stage import stage
from tradebus.mastertrade.trading.risk import answer_check
from tradebus.stage import delivery_id

logger = get_task_logger(__name__)
#: How long ``request_check`` waits for the risk manager by default, in seconds.
CHECK_TIMEOUT = 5.0


@stage(
    "tradebus.risk.evaluate_signal",
    queue="trading_signals",
    accepts=TradingSignal,
    handler_checks_repeats=True,
)
def evaluate_signal(signal: TradingSignal) -> None:
    """Approve (and size) or refuse a live trading signal; the same signal is decided once, and what the
    decision produces (the order, a breach, a breaker change) is published once. The stage's check for a
    repeat rides in the round trip that reads the portfolio (``handler_checks_repeats``)."""
    # Refused as stale (over SIGNAL_MAX_AGE_SECONDS old) only when not decided yet: a replay of a decided
    # signal (a short WAIT dead-lettered it) still publishes what its decision produced.
    record = account.decide(signal, also=handling.repeat_read(), first=handling.drop_if_repeat)
    decision = record["decision"]
    if not record["again"]:
        logger.info(
            "%s %s %s: %s (%s)",
            "approved" if decision["approved"] else "refused",
            signal.action,
            signal.symbol,
            decision["quantity"],
            "; ".join(decision["reasons"]),
        )
    outcomes = _outcomes(signal, record)  # their ids derive from the signal (every field of it)
    account.publish_once(
        account.decision_outcome(signal), outcomes, delivery_id(), account.signal_key(signal)
    )


def _outcomes(signal: TradingSignal, record: dict[str, Any]) -> list[BusMessage]:
    """What a decision publishes: its order, a breaker change, the breaches that start with it."""
    decision = record["decision"]
    messages: list[BusMessage] = []
    if record["order"] is not None:
        messages.append(OrderRequest.model_validate(record["order"]))
    if decision["trips_breaker"]:
        reason = "; ".join(decision["reasons"])
        messages.append(CircuitBreaker(trigger="loss_streak", state="tripped", reason=reason))
    if record.get("breaker_reset"):
        messages.append(CircuitBreaker(trigger="loss_streak", state="reset", reason="cooldown over"))
    if record["breach_new"]:
        messages += [
            RiskBreach(
                metric=breach["metric"],
                value=breach["value"],
                threshold=breach["threshold"],
                strategy_id=signal.strategy_id,
                message=breach["message"],
            )
            for breach in decision["breaches"]
        ]
    return messages


@stage("tradebus.risk.check", queue="risk_checks", accepts=RiskCheck, ignore_result=False)
def check(message: RiskCheck) -> dict[str, Any]:
    """Answer a risk check: the caller waits for this result (``request_check``)."""
    tripped = account.portfolio().breaker_until > time.time()
    answer = answer_check(message, account.LIMITS, tripped)
    result = RiskCheckResult(
        check_id=message.check_id,
        approved=answer.approved,
        reasons=list(answer.reasons),
        max_position_size=answer.max_position_size,
        circuit_breaker_tripped=tripped,
    )
    return result.model_dump(mode="json")


def request_check(message: RiskCheck, timeout: float = CHECK_TIMEOUT) -> RiskCheckResult:
    """Send a risk check and wait for the risk manager's answer (Celery's result backend, on Redis).

    Raises RequestTimeout when no answer arrives within ``timeout`` seconds, RequestRefused when the risk
    manager dead-lettered the check.
    """
    pending = check.delay(message)
    try:
        raw = pending.get(timeout=timeout, propagate=True)
    except CeleryTimeout as exc:
        raise RequestTimeout(f"no answer to risk check {message.check_id} within {timeout:g}s") from exc
    finally:
        pending.forget()
    if raw is None:
        raise RequestRefused(f"risk check {message.check_id} was dead-lettered; see dlq.risk_checks")
    return RiskCheckResult.model_validate(raw)
