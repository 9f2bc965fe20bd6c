"""Every queue of the MasterTrade bus, with its arguments and bindings, as Kombu ``Queue`` objects.

Seed queues carry exactly the seed's arguments; the queues the seed implies but never declares, the fan-out
copies, the dead-letter queues and the unrouted queues are documented in docs/topology.md.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from routing.build import bind, durable_queue
from routing.mastertrade import exchanges as ex
from routing.mastertrade.keys import CANDLE_INTERVALS

# Every TTL is in milliseconds, the unit RabbitMQ's x-message-ttl takes.
SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS

DROP_HEAD = "drop-head"
REJECT_PUBLISH = "reject-publish"
DLQ_PREFIX = "dlq."
UNROUTED_PREFIX = "unrouted."
#: Bound on the queues that keep unrouted messages; past it the publisher's confirm is a nack, never a drop.
UNROUTED_MAX_LENGTH = 100_000


def dead_letter_queue_name(queue: str) -> str:
    """The dead-letter queue (and its routing key on ``mastertrade.dlx``) for ``queue``."""
    return f"{DLQ_PREFIX}{queue}"


def dead_letter_route(queue: str, routing_key: str) -> tuple[str, str]:
    """Where a message that failed on ``queue`` goes: ``mastertrade.dlx``, keyed by the queue's DLQ."""
    return ex.DLX.name, dead_letter_queue_name(queue)


def _arguments(
    *,
    ttl: int | None = None,
    max_length: int | None = None,
    overflow: str | None = None,
    dead_letter_to: str | None = None,
) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if ttl is not None:
        args["x-message-ttl"] = ttl
    if max_length is not None:
        args["x-max-length"] = max_length
    if overflow is not None:
        args["x-overflow"] = overflow
    if dead_letter_to is not None:
        args["x-dead-letter-exchange"] = ex.DLX.name
        args["x-dead-letter-routing-key"] = dead_letter_queue_name(dead_letter_to)
    return args


def _queue(name: str, exchange: Exchange, keys: list[str] | tuple[str, ...], **arguments: Any) -> Queue:
    return durable_queue(name, [(exchange, key) for key in keys], _arguments(**arguments))


# --- mastertrade.market -------------------------------------------------------------------------------
MARKET_DATA = _queue(
    "market_data",
    ex.MARKET,
    [f"market.data.*.{interval}" for interval in CANDLE_INTERVALS],
    ttl=60 * SECOND_MS,
    max_length=100_000,
    overflow=DROP_HEAD,
)
TICKER_UPDATES = _queue("ticker_updates", ex.MARKET, ["ticker.*"], ttl=10 * SECOND_MS, max_length=50_000)
ORDERBOOK_UPDATES = _queue(
    "orderbook_updates",
    ex.MARKET,
    ["market.data.orderbook.*"],
    ttl=10 * SECOND_MS,
    max_length=10_000,
    overflow=DROP_HEAD,
)
TRADE_UPDATES = _queue(
    "trade_updates",
    ex.MARKET,
    ["market.data.trade.*"],
    ttl=60 * SECOND_MS,
    max_length=100_000,
    overflow=DROP_HEAD,
)
SENTIMENT_DATA = _queue("sentiment_data", ex.MARKET, ["sentiment.*.*"], ttl=5 * MINUTE_MS, max_length=10_000)
STOCK_INDEX_DATA = _queue("stock_index_data", ex.MARKET, ["stock.*"], ttl=5 * MINUTE_MS, max_length=1_000)
ONCHAIN_METRICS = _queue("strategy_service_onchain_metrics", ex.MARKET, ["onchain.*.*"], ttl=5 * MINUTE_MS)
STRATEGY_WHALE_ALERTS = _queue(
    "strategy_service_whale_alerts", ex.MARKET, ["whale.alert.*.*"], ttl=10 * MINUTE_MS
)
ALERT_WHALE_ALERTS = _queue("alert_whale_alerts", ex.MARKET, ["whale.alert.*.*"], ttl=10 * MINUTE_MS)
STRATEGY_MARKET_DATA = _queue(
    "strategy_market_data",
    ex.MARKET,
    ["market.#"],
    ttl=60 * SECOND_MS,
    max_length=100_000,
    overflow=DROP_HEAD,
)
EXECUTOR_MARKET_DATA = _queue(
    "executor_market_data",
    ex.MARKET,
    ["market.#", "ticker.*"],
    ttl=60 * SECOND_MS,
    max_length=100_000,
    overflow=DROP_HEAD,
)

# --- mastertrade.trading ------------------------------------------------------------------------------
BACKTEST_SIGNALS = _queue(
    "backtest_signals", ex.TRADING, ["signal.backtest.*"], max_length=100_000, overflow=REJECT_PUBLISH
)
TRADING_SIGNALS = _queue(
    "trading_signals",
    ex.TRADING_LIVE,
    ["signal.*.*"],
    ttl=30 * SECOND_MS,
    max_length=10_000,
    dead_letter_to="trading_signals",
)

# --- mastertrade.orders -------------------------------------------------------------------------------
ORDER_REQUESTS = _queue(
    "order_requests",
    ex.ORDERS,
    ["order.request.*"],
    ttl=1 * MINUTE_MS,
    max_length=5_000,
    dead_letter_to="order_requests",
)
ORDER_UPDATES = _queue("order_updates", ex.ORDERS, ["order.update.#"], ttl=5 * MINUTE_MS)
STRATEGY_ORDER_UPDATES = _queue(
    "strategy_order_updates",
    ex.ORDERS,
    ["order.update.#"],
    ttl=5 * MINUTE_MS,
    dead_letter_to="strategy_order_updates",
)
MONITORING_ORDER_UPDATES = _queue(
    "monitoring_order_updates", ex.ORDERS, ["order.update.#"], ttl=5 * MINUTE_MS
)

# --- mastertrade.risk ---------------------------------------------------------------------------------
RISK_CHECKS = _queue("risk_checks", ex.RISK, ["risk.check.*"], ttl=30 * SECOND_MS, max_length=5_000)
ALERT_RISK_EVENTS = _queue(
    "alert_risk_events",
    ex.RISK,
    ["risk.breach.*", "risk.circuit_breaker.*"],
    dead_letter_to="alert_risk_events",
)

# --- mastertrade.system -------------------------------------------------------------------------------
SYSTEM_NOTIFICATIONS = _queue("system_notifications", ex.SYSTEM, ["system.#"], ttl=10 * MINUTE_MS)
MONITORING_SYSTEM_NOTIFICATIONS = _queue(
    "monitoring_system_notifications", ex.SYSTEM, ["system.#"], ttl=10 * MINUTE_MS
)


def _retried(queue: Queue) -> Queue:
    """``queue``, also bound on ``mastertrade.retry`` by its own name (where its retries come back)."""
    return bind(queue, ex.RETRY, queue.name)


#: The queues a stage task consumes: one stage per queue. Workers consume these and nothing else.
STAGE_QUEUES: tuple[Queue, ...] = tuple(
    _retried(q)
    for q in (
        MARKET_DATA,
        TICKER_UPDATES,
        ORDERBOOK_UPDATES,
        TRADE_UPDATES,
        SENTIMENT_DATA,
        STOCK_INDEX_DATA,
        ONCHAIN_METRICS,
        STRATEGY_WHALE_ALERTS,
        ALERT_WHALE_ALERTS,
        STRATEGY_MARKET_DATA,
        EXECUTOR_MARKET_DATA,
        BACKTEST_SIGNALS,
        TRADING_SIGNALS,
        ORDER_REQUESTS,
        ORDER_UPDATES,
        STRATEGY_ORDER_UPDATES,
        MONITORING_ORDER_UPDATES,
        RISK_CHECKS,
        ALERT_RISK_EVENTS,
        SYSTEM_NOTIFICATIONS,
        MONITORING_SYSTEM_NOTIFICATIONS,
    )
)

# --- Celery's own tasks -----------------------------------------------------------------------------
PERIODIC_TASKS = _retried(
    _queue("periodic_tasks", ex.TASKS, ["periodic_tasks"], dead_letter_to="periodic_tasks")
)

#: Queues of plain Celery tasks (beat's periodic health report), consumed by workers like stage queues.
TASK_QUEUES: tuple[Queue, ...] = (PERIODIC_TASKS,)
#: Every queue a worker consumes.
WORKER_QUEUES: tuple[Queue, ...] = STAGE_QUEUES + TASK_QUEUES

#: The seed's only declared DLQ keeps its 24-hour TTL; the ones the seed omits keep messages until a person
#: acts on them (see docs/topology.md).
_DLQ_TTL = {"trading_signals": 24 * HOUR_MS}

#: Dead market data is stale prices that pile up fast when consumers fall behind (500 msg/s at the seed's
#: peak): their DLQs keep the newest million (a few hundred MB), so an outage cannot fill the broker's memory
#: or disk and stop every publisher, orders included; the DLQ-depth alert fires at 11 (docs/reliability.md).
MARKET_DLQ_MAX_LENGTH = 1_000_000


#: The stage queues of ``mastertrade.market``: what they carry is transient, and stale once dead.
MARKET_DATA_QUEUES = frozenset(
    q.name for q in WORKER_QUEUES if any(b.exchange.name == ex.MARKET.name for b in q.bindings)
)


def dead_letter_queue(queue: Queue, market: bool | None = None) -> Queue:
    """The DLQ of ``queue``; bounded like market data's when ``market`` (default: it is market data)."""
    market = queue.name in MARKET_DATA_QUEUES if market is None else market
    return _queue(
        dead_letter_queue_name(queue.name),
        ex.DLX,
        [dead_letter_queue_name(queue.name)],
        ttl=_DLQ_TTL.get(queue.name),
        max_length=MARKET_DLQ_MAX_LENGTH if market else None,
        overflow=DROP_HEAD if market else None,
    )


#: One dead-letter queue per worker queue, bound on ``mastertrade.dlx`` by its own name.
_WORKER_DLQS: tuple[Queue, ...] = tuple(dead_letter_queue(q) for q in WORKER_QUEUES)
#: Where a dead letter goes when it outlives its DLQ's TTL (``dlq.trading_signals`` keeps the seed's 24 h;
#: routing/policies.py sends what expires there to this queue, which keeps it).
ARCHIVE_QUEUE = _queue(f"{DLQ_PREFIX}archive", ex.DLX, [f"{DLQ_PREFIX}archive"])
DEAD_LETTER_QUEUES: tuple[Queue, ...] = (*_WORKER_DLQS, ARCHIVE_QUEUE)

#: One queue per alternate exchange: whatever no binding matched, kept for a person to inspect. The topic
#: exchanges' are bounded with reject-publish (a confirming publisher gets a nack past the bound); the
#: DLX's is not, because the broker itself dead-letters into it and would drop what a bound refused.
UNROUTED_QUEUES: tuple[Queue, ...] = (
    *(
        _queue(
            f"{UNROUTED_PREFIX}{ae.name.split('.')[1]}",
            ae,
            [""],
            max_length=UNROUTED_MAX_LENGTH,
            overflow=REJECT_PUBLISH,
        )
        for ae in (
            ex.MARKET_UNROUTED,
            ex.TRADING_UNROUTED,
            ex.ORDERS_UNROUTED,
            ex.RISK_UNROUTED,
            ex.SYSTEM_UNROUTED,
            ex.TASKS_UNROUTED,
            ex.RETRY_UNROUTED,
        )
    ),
    _queue(f"{UNROUTED_PREFIX}dlx", ex.DLX_UNROUTED, [""]),
)

#: The queues whose pool process dying must not lose the message it was running: it is redelivered.
CRITICAL_QUEUES = frozenset(
    {
        "order_requests",
        "trading_signals",
        "strategy_order_updates",
        "alert_risk_events",
    }
)
