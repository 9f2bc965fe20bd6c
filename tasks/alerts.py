"""Alert system: order updates, whale alerts, risk events and system notifications.

Each stage is wired and observable: it validates, logs and records what it received.
"""

from __future__ import annotations

from tradebus.messages import (
    CircuitBreaker,
    ConfigChange,
    OrderUpdate,
    RiskBreach,
    SystemAlert,
    SystemHealth,
    WhaleAlert,
)
from tradebus.stage import stage


@stage("tradebus.alerts.on_order_update", queue="order_updates", accepts=OrderUpdate)
def on_order_update(message: OrderUpdate) -> None:
    """An order update worth alerting on."""


@stage("tradebus.alerts.on_whale_alert", queue="alert_whale_alerts", accepts=WhaleAlert)
def on_whale_alert(message: WhaleAlert) -> None:
    """A whale transfer to alert on."""


@stage("tradebus.alerts.on_risk_event", queue="alert_risk_events", accepts=(RiskBreach, CircuitBreaker))
def on_risk_event(message: RiskBreach | CircuitBreaker) -> None:
    """A risk breach or circuit breaker event."""


@stage(
    "tradebus.alerts.on_system_notification",
    queue="system_notifications",
    accepts=(SystemHealth, SystemAlert, ConfigChange),
)
def on_system_notification(message: SystemHealth | SystemAlert | ConfigChange) -> None:
    """A system notification."""
