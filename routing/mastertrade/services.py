"""Which MasterTrade service publishes which messages: the seed's "Publishers" lines, as data.

What a service *consumes* follows from the stage tasks (``tradebus.<service>.<action>`` on one queue each);
what it may *publish* is written here, by route name (``routing.keys.ROUTES``). tradebus/users.py turns
both into one RabbitMQ user per service with nothing more than that (docs/security.md).
"""

from __future__ import annotations

from routing.mastertrade.keys import ROUTES

#: Routes every service publishes ("system: Publishers: All services"): its own health and its alerts.
#: Configuration changes (``system.config.*``) are an operator's, published as the admin user.
EVERY_SERVICE: tuple[str, ...] = ("system_health", "system_alert")

#: Route fields a service may only fill with its own name: a service reports its own health only...
OWN_NAME_FIELDS: dict[str, str] = {"system_health": "service"}
#: ...except monitoring, whose periodic health report (beat, on ``periodic_tasks``) speaks for every service.
REPORTS_ON_EVERY_SERVICE: tuple[str, ...] = ("monitoring",)

#: Service -> the routes it publishes besides EVERY_SERVICE. Services not listed publish only those.
PUBLISHES: dict[str, tuple[str, ...]] = {
    # "Publishers: Market Data Service" on mastertrade.market (the simulator publishes as this service).
    "market_data": (
        "market_data",
        "ticker",
        "orderbook",
        "trade",
        "sentiment",
        "stock_index",
        "onchain_metric",
        "whale_alert",
    ),
    # "Publishers: Strategy Service" (signals, backtest signals) and "(checks)" on mastertrade.risk.
    "strategy": ("trading_signal", "backtest_signal", "risk_check"),
    # "Publishers: Risk Manager (requests)" and "(breaches)".
    "risk": ("order_request", "risk_breach", "circuit_breaker"),
    # "Publishers: ... Order Executor (updates)".
    "execution": ("order_update",),
}

assert all(r in ROUTES for routes in PUBLISHES.values() for r in routes), "unknown route in PUBLISHES"
assert all(r in ROUTES for r in EVERY_SERVICE), "unknown route in EVERY_SERVICE"
