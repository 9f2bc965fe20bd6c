"""Worker pool profiles: how many pool processes and how much prefetch each stage queue gets.

The five profiles of the seed's consumer table are kept as written; the rest are sized so that each
exchange's total matches the seed's throughput table (market 15, trading 3, orders 5, risk 3, system 2
consumers), plus one consumer for each queue tradebus adds (docs/topology.md).
A worker's prefetch window is ``concurrency * prefetch_multiplier``: ``order_requests`` (3 processes,
prefetch 1) lets RabbitMQ hand out at most 3 unacknowledged orders.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from routing import LETRADE, PROFILE, WORKER_QUEUES
from tradebus.errors import UnknownPool


@dataclass(frozen=True)
class PoolProfile:
    """A pool of worker processes consuming one stage queue."""

    queue: str
    concurrency: int
    prefetch_multiplier: int
    #: The seed's critical queues (and tradebus's own that must not lose a message): a pool process that
    #: dies mid-task gets its message redelivered. Every stage acknowledges late (celeryconfig.py).
    critical: bool = False

    @property
    def name(self) -> str:
        """The pool's name, which is its queue's name."""
        return self.queue

    @property
    def prefetch_count(self) -> int:
        """The unacknowledged messages RabbitMQ allows this pool."""
        return self.concurrency * self.prefetch_multiplier


MASTERTRADE_POOLS: dict[str, PoolProfile] = {
    p.name: p
    for p in (
        # The seed's consumer table.
        PoolProfile("strategy_market_data", concurrency=5, prefetch_multiplier=10),
        PoolProfile("sentiment_data", concurrency=2, prefetch_multiplier=5),
        PoolProfile("order_requests", concurrency=3, prefetch_multiplier=1, critical=True),
        PoolProfile("trading_signals", concurrency=3, prefetch_multiplier=5, critical=True),
        PoolProfile("order_updates", concurrency=2, prefetch_multiplier=10),
        # mastertrade.market: 8 more consumers make the seed's 15.
        PoolProfile("market_data", concurrency=1, prefetch_multiplier=20),
        PoolProfile("ticker_updates", concurrency=1, prefetch_multiplier=50),
        PoolProfile("orderbook_updates", concurrency=1, prefetch_multiplier=20),
        PoolProfile("trade_updates", concurrency=1, prefetch_multiplier=20),
        PoolProfile("stock_index_data", concurrency=1, prefetch_multiplier=5),
        PoolProfile("strategy_service_onchain_metrics", concurrency=1, prefetch_multiplier=5),
        PoolProfile("strategy_service_whale_alerts", concurrency=1, prefetch_multiplier=5),
        PoolProfile("executor_market_data", concurrency=1, prefetch_multiplier=20),
        # mastertrade.risk: the seed's 3 risk consumers check risk.
        PoolProfile("risk_checks", concurrency=3, prefetch_multiplier=5),
        # mastertrade.system: the seed's 2 consumers, one per subscriber.
        PoolProfile("system_notifications", concurrency=1, prefetch_multiplier=10),
        PoolProfile("monitoring_system_notifications", concurrency=1, prefetch_multiplier=10),
        # Queues tradebus adds for fan-out and for messages the seed leaves unrouted.
        PoolProfile("alert_whale_alerts", concurrency=1, prefetch_multiplier=5),
        PoolProfile("backtest_signals", concurrency=1, prefetch_multiplier=10),
        PoolProfile("strategy_order_updates", concurrency=1, prefetch_multiplier=10, critical=True),
        PoolProfile("monitoring_order_updates", concurrency=1, prefetch_multiplier=10),
        PoolProfile("alert_risk_events", concurrency=1, prefetch_multiplier=10, critical=True),
        # Celery beat's periodic health report.
        PoolProfile("periodic_tasks", concurrency=1, prefetch_multiplier=1),
    )
}

#: Letrade_v1 gives no consumer counts. Prefetch 1 wherever trade messages arrive: priority reorders only
#: what is still queued, so a deep prefetch buffer of market data would make a trade command wait behind it.
LETRADE_POOLS: dict[str, PoolProfile] = {
    p.name: p
    for p in (
        PoolProfile("letrade.exchange_connector", concurrency=2, prefetch_multiplier=1, critical=True),
        PoolProfile("letrade.capital_manager", concurrency=1, prefetch_multiplier=1, critical=True),
        PoolProfile("letrade.strategy", concurrency=2, prefetch_multiplier=1, critical=True),
        # Critical too: it answers requests, and a request lost with its process is a caller left waiting.
        PoolProfile("letrade.market_data", concurrency=1, prefetch_multiplier=10, critical=True),
    )
}

#: The pools of the profile this process runs (routing/profile.py).
POOLS = LETRADE_POOLS if PROFILE == LETRADE else MASTERTRADE_POOLS

assert set(POOLS) == {q.name for q in WORKER_QUEUES}, "every worker queue needs exactly one pool profile"


def pool(name: str) -> PoolProfile:
    """The profile called ``name``, or UnknownPool listing the real ones."""
    try:
        return POOLS[name]
    except KeyError:
        raise UnknownPool(f"no pool {name!r}; pools: {', '.join(sorted(POOLS))}") from None


def combined(queues: Iterable[str]) -> tuple[int, int] | None:
    """(concurrency, prefetch multiplier) for a worker consuming ``queues``, or None if none is profiled.

    Several queues: the processes add up and the smallest prefetch multiplier wins. The window
    (processes x multiplier) is shared by every queue of the worker's channel, so a critical queue keeps its
    own documented window only in a worker of its own (see ``shares_a_critical_queue``).
    """
    profiles = [POOLS[q] for q in queues if q in POOLS]
    if not profiles:
        return None
    return sum(p.concurrency for p in profiles), min(p.prefetch_multiplier for p in profiles)


def shares_a_critical_queue(queues: Iterable[str]) -> list[str]:
    """The critical queues among ``queues`` when they are not alone in one worker."""
    names = list(dict.fromkeys(queues))
    if len(names) < 2:
        return []
    return [q for q in names if q in POOLS and POOLS[q].critical]
