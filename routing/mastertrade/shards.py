"""Market data for the strategy split over N shard queues by symbol (``TopologyOptions.market_data_shards``).

The seed's "Queue sharding" binds ``market.data.BTC*``, which is not topic syntax (a ``*`` is one whole
word), and would need a queue per symbol prefix. Instead ``mastertrade.market`` passes what
``strategy_market_data`` bound (``market.#``) on to ``mastertrade.market.strategy``, a consistent-hash
exchange (RabbitMQ's rabbitmq_consistent_hash_exchange plugin) hashing the header ``x-tradebus-symbol``;
it delivers each message to exactly one shard, ``strategy_market_data.0`` ... ``.N-1``, each message of a
symbol to the same one and, one queue being FIFO, in order. Each shard has the arguments, dead-letter
queue, policy and retry binding the one queue had, and a pool of one process (order within a symbol
needs one consumer per shard; the shards are the parallelism), held to one by single active consumer.
docs/topology.md, "Sharding by symbol".
"""

from __future__ import annotations

from kombu import Exchange, Queue

from routing.build import alternate_exchange_policy, bind, durable_queue
from routing.mastertrade import exchanges as ex
from routing.mastertrade import queues as qs
from routing.mastertrade.keys import SYMBOL_HEADER
from routing.mastertrade.pools import SEED_BATCH_MS, SEED_BATCH_SIZE
from routing.match import CONSISTENT_HASH, HASH_HEADER, ExchangeBinding
from routing.model import SHARD_WEIGHT, Policy, PoolProfile, Shards

#: The queue sharding replaces.
SHARDED_QUEUE = qs.STRATEGY_MARKET_DATA
#: What ``mastertrade.market`` passes on to the shards: what the sharded queue bound.
SHARDED_KEY = "market.#"
#: A shard's pool: one process keeps a symbol's messages in order; the seed's prefetch of 10.
SHARD_CONCURRENCY = 1
SHARD_PREFETCH_MULTIPLIER = 10
#: Each shard's weight on the exchange: one bucket each, so bucket i is shard i (checked by Topology).
WEIGHT = SHARD_WEIGHT
#: One consumer per shard, enforced by the broker: with ``x-single-active-consumer`` a second worker on a
#: shard (a replica started by mistake) stays idle until the first one goes, instead of splitting a
#: symbol's messages between two processes. The worker itself refuses more than one process on a shard
#: (workers/profiled.py).
SHARD_ARGUMENTS = {**SHARDED_QUEUE.queue_arguments, "x-single-active-consumer": True}

STRATEGY_SHARDS = Exchange(
    f"{ex.MARKET.name}.strategy",
    type=CONSISTENT_HASH,
    durable=True,
    auto_delete=False,
    arguments={HASH_HEADER: SYMBOL_HEADER},
)


def shard_name(index: int) -> str:
    """The name of shard ``index`` of the strategy's market data."""
    return f"{SHARDED_QUEUE.name}.{index}"


def shard_queues(count: int) -> tuple[Queue, ...]:
    """The ``count`` shard queues, shard 0 first (the order they are bound in), each with the sharded
    queue's arguments plus single active consumer, bound on the consistent-hash exchange and by name on
    ``mastertrade.retry``."""
    return tuple(
        bind(
            durable_queue(shard_name(i), [(STRATEGY_SHARDS, WEIGHT)], SHARD_ARGUMENTS),
            ex.RETRY,
            shard_name(i),
        )
        for i in range(count)
    )


def shards(count: int) -> Shards:
    """The shards as topology data."""
    return Shards(
        SHARDED_QUEUE.name, STRATEGY_SHARDS.name, SYMBOL_HEADER, tuple(map(shard_name, range(count)))
    )


def exchange_binding() -> ExchangeBinding:
    """``mastertrade.market`` -> the consistent-hash exchange, with the sharded queue's key."""
    return ExchangeBinding(ex.MARKET.name, STRATEGY_SHARDS.name, SHARDED_KEY)


def alternate_policy() -> Policy:
    """What the consistent-hash exchange cannot deliver (no shard bound) is kept in ``unrouted.market``."""
    return alternate_exchange_policy(STRATEGY_SHARDS, ex.MARKET_UNROUTED)


def pools(count: int) -> dict[str, PoolProfile]:
    """One pool per shard, batched like the queue it replaces (one process runs a batch in order, so a
    symbol's ticks stay in order inside a batch and from one batch to the next)."""
    return {
        shard_name(i): PoolProfile(
            shard_name(i), SHARD_CONCURRENCY, SHARD_PREFETCH_MULTIPLIER, SEED_BATCH_SIZE, SEED_BATCH_MS
        )
        for i in range(count)
    }
