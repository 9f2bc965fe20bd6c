"""Monitoring: tickers, order updates and system notifications for the dashboards.

Each stage is wired and observable: it validates, logs and records what it received.
"""

from __future__ import annotations

from tradebus.messages import ConfigChange, OrderUpdate, SystemAlert, SystemHealth, Ticker
from tradebus.stage import stage


@stage("tradebus.monitoring.on_ticker", queue="ticker_updates", accepts=Ticker)
def on_ticker(message: Ticker) -> None:
    """A price ticker."""


@stage("tradebus.monitoring.on_order_update", queue="monitoring_order_updates", accepts=OrderUpdate)
def on_order_update(message: OrderUpdate) -> None:
    """An order update for the order blotter."""


@stage(
    "tradebus.monitoring.on_system_notification",
    queue="monitoring_system_notifications",
    accepts=(SystemHealth, SystemAlert, ConfigChange),
)
def on_system_notification(message: SystemHealth | SystemAlert | ConfigChange) -> None:
    """A system notification."""
