"""The routing contract, written out independently of ``routing/``.

``SEED`` is the seed's routing-key hierarchy as documented (exchange, key, the queues it names; an empty set
is the seed's "no binding, dropped"). ``ADDED`` is what tradebus delivers on top, each for a reason written
in docs/topology.md: extra subscribers of a fan-out, the Alert System's queue, the backtest record.
"""

from __future__ import annotations

MARKET, TRADING, ORDERS, RISK, SYSTEM = (
    "mastertrade.market",
    "mastertrade.trading",
    "mastertrade.orders",
    "mastertrade.risk",
    "mastertrade.system",
)
EXECUTOR_AND_STRATEGY = {"executor_market_data", "strategy_market_data"}
ORDER_UPDATE_SUBSCRIBERS = {"strategy_order_updates", "monitoring_order_updates"}

#: (exchange, routing key, queues the seed names, queues tradebus adds)
CONTRACT: list[tuple[str, str, set[str], set[str]]] = [
    (MARKET, "market.data.BTCUSDT.1m", {"market_data", "strategy_market_data"}, {"executor_market_data"}),
    (MARKET, "market.data.ETHUSDT.5m", {"market_data", "strategy_market_data"}, {"executor_market_data"}),
    (MARKET, "ticker.BTCUSDT", {"ticker_updates"}, {"executor_market_data"}),
    (MARKET, "ticker.ETHUSDT", {"ticker_updates"}, {"executor_market_data"}),
    (MARKET, "market.data.orderbook.BTCUSDT", {"orderbook_updates"}, EXECUTOR_AND_STRATEGY),
    (MARKET, "market.data.trade.BTCUSDT", {"trade_updates"}, EXECUTOR_AND_STRATEGY),
    (MARKET, "sentiment.BTCUSDT.twitter", {"sentiment_data"}, set()),
    (MARKET, "sentiment.ETHUSDT.reddit", {"sentiment_data"}, set()),
    (MARKET, "stock.SPX", {"stock_index_data"}, set()),
    (MARKET, "stock.VIX", {"stock_index_data"}, set()),
    (MARKET, "onchain.active_addresses.BTC", {"strategy_service_onchain_metrics"}, set()),
    (MARKET, "whale.alert.BTC.high", {"strategy_service_whale_alerts"}, {"alert_whale_alerts"}),
    (MARKET, "whale.alert.ETH.critical", {"strategy_service_whale_alerts"}, {"alert_whale_alerts"}),
    (TRADING, "signal.BTCUSDT.uuid-1234", {"trading_signals"}, set()),
    (TRADING, "signal.backtest.uuid-5678", set(), {"backtest_signals"}),
    (ORDERS, "order.request.BTCUSDT", {"order_requests"}, set()),
    (ORDERS, "order.update.filled.order-123", {"order_updates"}, ORDER_UPDATE_SUBSCRIBERS),
    (ORDERS, "order.update.cancelled.order-456", {"order_updates"}, ORDER_UPDATE_SUBSCRIBERS),
    (ORDERS, "order.update.partial.order-789", {"order_updates"}, ORDER_UPDATE_SUBSCRIBERS),
    (RISK, "risk.check.strategy-uuid", {"risk_checks"}, set()),
    (RISK, "risk.breach.drawdown", set(), {"alert_risk_events"}),  # seed: "(Alert System)"
    (RISK, "risk.circuit_breaker.loss_streak", set(), {"alert_risk_events"}),  # seed: "(Alert System)"
    (SYSTEM, "system.health.market_data", {"system_notifications"}, {"monitoring_system_notifications"}),
    (SYSTEM, "system.alert.critical", {"system_notifications"}, {"monitoring_system_notifications"}),
    (SYSTEM, "system.config.api_key_update", {"system_notifications"}, {"monitoring_system_notifications"}),
]

#: The seed's bindings exactly as written (queue declarations, plus the diagram for undeclared queues).
SEED_BINDINGS: list[tuple[str, str, str]] = [
    (MARKET, "market.data.*", "market_data"),
    (MARKET, "ticker.*", "ticker_updates"),
    (MARKET, "market.data.orderbook", "orderbook_updates"),
    (MARKET, "market.data.trade", "trade_updates"),
    (MARKET, "sentiment.*", "sentiment_data"),
    (MARKET, "stock.*", "stock_index_data"),
    (MARKET, "onchain.*", "strategy_service_onchain_metrics"),
    (MARKET, "whale.alert.*", "strategy_service_whale_alerts"),
    (MARKET, "market.#", "strategy_market_data"),
    (MARKET, "market.#", "executor_market_data"),
    (TRADING, "signal.*", "trading_signals"),
    (ORDERS, "order.request.*", "order_requests"),
    (ORDERS, "order.update.#", "order_updates"),
    (RISK, "risk.check.*", "risk_checks"),
    (SYSTEM, "system.#", "system_notifications"),
]

#: Keys no documented binding should take: each must end in its exchange's unrouted queue.
UNROUTABLE: list[tuple[str, str, str]] = [
    (MARKET, "candles.BTCUSDT.1m", "unrouted.market"),
    (MARKET, "ticker.BTCUSDT.extra", "unrouted.market"),
    (MARKET, "sentiment.BTCUSDT", "unrouted.market"),
    (MARKET, "funding.BTCUSDT", "unrouted.market"),
    (TRADING, "signal.BTCUSDT", "unrouted.trading"),
    (TRADING, "strategy.started", "unrouted.trading"),
    (ORDERS, "order.request", "unrouted.orders"),
    (ORDERS, "order.cancel.BTCUSDT", "unrouted.orders"),
    (RISK, "risk.limit.changed", "unrouted.risk"),
    (SYSTEM, "health.market_data", "unrouted.system"),
    ("mastertrade.dlx", "dlq.nonexistent", "unrouted.dlx"),
]
