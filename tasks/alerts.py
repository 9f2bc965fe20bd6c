"""Alert system: what operators must hear about, from order updates, whale alerts, risk events and
system notifications, kept in Redis (``recorder.alerts()``) and logged.
"""

from __future__ import annotations

import logging

from celery.utils.log import get_task_logger

from tradebus import recorder
from tradebus.mastertrade.messages import (
    CircuitBreaker,
    ConfigChange,
    OrderUpdate,
    RiskBreach,
    SystemAlert,
    SystemHealth,
    WhaleAlert,
)
from tradebus.mastertrade.stage import stage

logger = get_task_logger(__name__)
#: Whale alert levels worth an operator's attention.
LOUD_WHALES = frozenset({"high", "critical"})


#: The log level each alert severity is logged at.
LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


def _alert(severity: str, source: str, text: str, **details: object) -> None:
    logger.log(LEVELS.get(severity, logging.WARNING), "[%s] %s: %s", severity, source, text)
    recorder.alert(severity, source, text, **details)


@stage("tradebus.alerts.on_order_update", queue="order_updates", accepts=OrderUpdate)
def on_order_update(message: OrderUpdate) -> None:
    """An order that did not fill is worth an alert."""
    if message.status in ("rejected", "cancelled"):
        _alert(
            "warning",
            "execution",
            f"order {message.order_id} {message.status}: {message.reason}",
            request_id=message.request_id,
            symbol=message.symbol,
        )


@stage("tradebus.alerts.on_whale_alert", queue="alert_whale_alerts", accepts=WhaleAlert)
def on_whale_alert(message: WhaleAlert) -> None:
    """A large transfer, when its level says so."""
    if message.alert_level in LOUD_WHALES:
        _alert(
            "info",
            "whales",
            f"{message.amount_token:g} {message.token} ({message.amount_usd:,.0f} USD) "
            f"{message.from_label or message.from_address} -> {message.to_label or message.to_address}",
            level=message.alert_level,
        )


@stage("tradebus.alerts.on_risk_event", queue="alert_risk_events", accepts=(RiskBreach, CircuitBreaker))
def on_risk_event(message: RiskBreach | CircuitBreaker) -> None:
    """Every risk breach and circuit breaker change."""
    if isinstance(message, CircuitBreaker):
        severity = "critical" if message.state == "tripped" else "info"
        _alert(severity, "risk", f"circuit breaker {message.state} ({message.trigger}): {message.reason}")
    else:
        _alert(
            "critical",
            "risk",
            f"{message.metric} breach: {message.value:g} over {message.threshold:g}. {message.message}",
        )


@stage(
    "tradebus.alerts.on_system_notification",
    queue="system_notifications",
    accepts=(SystemHealth, SystemAlert, ConfigChange),
)
def on_system_notification(message: SystemHealth | SystemAlert | ConfigChange) -> None:
    """System alerts, unhealthy services and configuration changes."""
    if isinstance(message, SystemAlert) and message.severity != "info":
        _alert(message.severity, message.source, message.message, **message.details)
    elif isinstance(message, SystemHealth) and message.status != "healthy":
        _alert("warning", message.service, f"service {message.service} is {message.status}")
    elif isinstance(message, ConfigChange):
        _alert(
            "info",
            message.service or "config",
            f"configuration change {message.change_type}: {message.description}",
        )
