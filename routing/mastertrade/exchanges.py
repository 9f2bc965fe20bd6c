"""The exchanges of the MasterTrade bus: five topic exchanges, their alternate exchanges, the DLX.

Every exchange is declared exactly as the seed declares it (no arguments), and every topic or direct
exchange has an alternate exchange, set by a policy (``ALTERNATES``, routing/mastertrade/policies.py), so a
message that no binding matches is kept in an ``unrouted.<area>`` queue instead of being dropped by the
broker. ``mastertrade.trading`` is the one exception to "alternate exchange = catch-all": its alternate
exchange is the topic exchange that carries live signals, so that ``signal.backtest.*`` (bound on the
primary) can never reach ``trading_signals`` (see docs/topology.md, "Backtest signals").
"""

from __future__ import annotations

from kombu import Exchange

from routing.build import exchange, fanout_exchange


def _unrouted(area: str) -> Exchange:
    """The fanout exchange that keeps whatever ``area``'s topic exchange could not route."""
    return fanout_exchange(f"mastertrade.{area}.unrouted")


MARKET_UNROUTED = _unrouted("market")
TRADING_UNROUTED = _unrouted("trading")
ORDERS_UNROUTED = _unrouted("orders")
RISK_UNROUTED = _unrouted("risk")
SYSTEM_UNROUTED = _unrouted("system")
DLX_UNROUTED = _unrouted("dlx")
TASKS_UNROUTED = _unrouted("tasks")
RETRY_UNROUTED = _unrouted("retry")

MARKET = exchange("mastertrade.market")
#: Live signals reach this exchange only when no binding of ``mastertrade.trading`` matched them.
TRADING_LIVE = exchange("mastertrade.trading.live")
TRADING = exchange("mastertrade.trading")
ORDERS = exchange("mastertrade.orders")
RISK = exchange("mastertrade.risk")
SYSTEM = exchange("mastertrade.system")

DLX = exchange("mastertrade.dlx", type="direct")

#: Retries go straight back to the queue that failed them: every worker queue is bound here by its own name.
#: A topic exchange, so each service's topic permissions can limit its retries to its own queues (a retry
#: through the default exchange could reach any queue by name).
RETRY = exchange("mastertrade.retry")

#: Celery's own tasks that are not bus messages (the periodic health report), by queue name.
TASKS = exchange("mastertrade.tasks", type="direct")

#: The exchanges publishers address, by name (the seed's five plus the dead-letter exchange).
PUBLIC_EXCHANGES: dict[str, Exchange] = {e.name: e for e in (MARKET, TRADING, ORDERS, RISK, SYSTEM, DLX)}

#: Every exchange tradebus declares, alternate exchanges first.
EXCHANGES: tuple[Exchange, ...] = (
    MARKET_UNROUTED,
    TRADING_UNROUTED,
    ORDERS_UNROUTED,
    RISK_UNROUTED,
    SYSTEM_UNROUTED,
    DLX_UNROUTED,
    TASKS_UNROUTED,
    RETRY_UNROUTED,
    TRADING_LIVE,
    MARKET,
    TRADING,
    ORDERS,
    RISK,
    SYSTEM,
    DLX,
    TASKS,
    RETRY,
)

#: Exchange -> its alternate exchange (set by policy): what no binding of the exchange matched goes there.
ALTERNATES: tuple[tuple[Exchange, Exchange], ...] = (
    (MARKET, MARKET_UNROUTED),
    #: Live signals reach ``mastertrade.trading.live`` only when no binding of the primary matched them.
    (TRADING, TRADING_LIVE),
    (TRADING_LIVE, TRADING_UNROUTED),
    (ORDERS, ORDERS_UNROUTED),
    (RISK, RISK_UNROUTED),
    (SYSTEM, SYSTEM_UNROUTED),
    (DLX, DLX_UNROUTED),
    (TASKS, TASKS_UNROUTED),
    (RETRY, RETRY_UNROUTED),
)

#: Exchanges whose messages must survive a broker restart (delivery mode 2). Market data is transient:
#: it expires within seconds to minutes anyway and is the bulk of the traffic.
PERSISTENT_EXCHANGES = frozenset({TRADING.name, ORDERS.name, RISK.name, SYSTEM.name, DLX.name})
