"""Worker pool sizes of the MasterTrade bus: processes and prefetch for each worker queue.

The five profiles of the seed's consumer table are kept as written; the rest are sized so that each
exchange's total matches the seed's throughput table (market 15, trading 3, orders 5, risk 3, system 2
consumers), plus one consumer for each queue tradebus adds (docs/topology.md).
A worker's prefetch window is ``concurrency * prefetch_multiplier``: ``order_requests`` (3 processes,
prefetch 1) lets RabbitMQ hand out at most 3 unacknowledged orders.

The market-data pools consume in batches, as the seed's scaling section says (up to 100 messages or 1 s;
docs/performance.md): a batch is at most half the pool's prefetch window.
"""

from __future__ import annotations

from routing.model import PoolProfile

#: The seed's consumer-side batching: up to 100 messages or 1 second.
SEED_BATCH_SIZE, SEED_BATCH_MS = 100, 1_000


def _batched(queue: str, concurrency: int, prefetch_multiplier: int) -> PoolProfile:
    """A market-data pool, consuming in the seed's batches."""
    return PoolProfile(queue, concurrency, prefetch_multiplier, SEED_BATCH_SIZE, SEED_BATCH_MS)


POOLS: dict[str, PoolProfile] = {
    p.name: p
    for p in (
        # The seed's consumer table.
        _batched("strategy_market_data", concurrency=5, prefetch_multiplier=10),
        PoolProfile("sentiment_data", concurrency=2, prefetch_multiplier=5),
        PoolProfile("order_requests", concurrency=3, prefetch_multiplier=1),
        PoolProfile("trading_signals", concurrency=3, prefetch_multiplier=5),
        PoolProfile("order_updates", concurrency=2, prefetch_multiplier=10),
        # mastertrade.market: 8 more consumers make the seed's 15.
        _batched("market_data", concurrency=1, prefetch_multiplier=20),
        _batched("ticker_updates", concurrency=1, prefetch_multiplier=100),
        _batched("orderbook_updates", concurrency=1, prefetch_multiplier=20),
        _batched("trade_updates", concurrency=1, prefetch_multiplier=20),
        PoolProfile("stock_index_data", concurrency=1, prefetch_multiplier=5),
        PoolProfile("strategy_service_onchain_metrics", concurrency=1, prefetch_multiplier=5),
        PoolProfile("strategy_service_whale_alerts", concurrency=1, prefetch_multiplier=5),
        _batched("executor_market_data", concurrency=1, prefetch_multiplier=100),
        # mastertrade.risk: the seed's 3 risk consumers check risk.
        PoolProfile("risk_checks", concurrency=3, prefetch_multiplier=5),
        # mastertrade.system: the seed's 2 consumers, one per subscriber.
        PoolProfile("system_notifications", concurrency=1, prefetch_multiplier=10),
        PoolProfile("monitoring_system_notifications", concurrency=1, prefetch_multiplier=10),
        # Queues tradebus adds for fan-out and for messages the seed leaves unrouted.
        PoolProfile("alert_whale_alerts", concurrency=1, prefetch_multiplier=5),
        PoolProfile("backtest_signals", concurrency=1, prefetch_multiplier=10),
        PoolProfile("strategy_order_updates", concurrency=1, prefetch_multiplier=10),
        PoolProfile("monitoring_order_updates", concurrency=1, prefetch_multiplier=10),
        PoolProfile("alert_risk_events", concurrency=1, prefetch_multiplier=10),
        # Celery beat's periodic health report.
        PoolProfile("periodic_tasks", concurrency=1, prefetch_multiplier=1),
    )
}
