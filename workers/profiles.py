"""Worker pool profiles: how a worker consuming some queues of a topology is sized.

The pool tables themselves are topology data (``Topology.pools``: routing/mastertrade/pools.py and
routing/letrade.py); this module combines them for a worker that consumes several queues.
"""

from __future__ import annotations

from collections.abc import Iterable

from routing import PoolProfile, Topology
from routing.model import PREFORK, PoolType
from tradebus.errors import ShardConcurrency, UnknownPool


def pool(topology: Topology, name: str) -> PoolProfile:
    """The pool called ``name`` in ``topology``, or UnknownPool listing the real ones."""
    try:
        return topology.pool(name)
    except KeyError as exc:
        raise UnknownPool(str(exc.args[0])) from None


def combined(topology: Topology, queues: Iterable[str]) -> tuple[int, int] | None:
    """(concurrency, prefetch multiplier) for a worker consuming ``queues``, or None if none is profiled.

    Several queues: the processes add up and the smallest prefetch multiplier wins. The window
    (processes x multiplier) is shared by every queue of the worker's channel, so a critical queue keeps its
    own documented window only in a worker of its own (see ``shares_a_critical_queue``).
    """
    profiles = [topology.pools[q] for q in queues if q in topology.pools]
    if not profiles:
        return None
    return sum(p.concurrency for p in profiles), min(p.prefetch_multiplier for p in profiles)


def pool_type(topology: Topology, queues: Iterable[str]) -> PoolType | None:
    """The Celery pool type of a worker consuming ``queues``: the type their profiles share, ``prefork``
    when they differ (threads are chosen per I/O-bound queue; one process's threads would also run the other
    queues' work under one GIL), None when none is profiled (Celery's own default then)."""
    names = list(queues)
    if not any(q in topology.pools for q in names):
        return None
    # A queue without a profile counts as prefork: threads only where every profile asks for them.
    types = {topology.pools[q].pool if q in topology.pools else PREFORK for q in names}
    return types.pop() if len(types) == 1 else PREFORK


def shares_a_critical_queue(topology: Topology, queues: Iterable[str]) -> list[str]:
    """The critical queues among ``queues`` when they are not alone in one worker."""
    names = list(dict.fromkeys(queues))
    if len(names) < 2:
        return []
    return [q for q in names if q in topology.critical_queues]


def check_shard_concurrency(topology: Topology, queues: Iterable[str], concurrency: int) -> None:
    """ShardConcurrency if a worker of ``concurrency`` processes would consume a shard queue: two processes
    on one shard could run two ticks of one symbol at once, out of order (docs/topology.md)."""
    shards = [q for q in dict.fromkeys(queues) if q in topology.shard_of_queue]
    if shards and concurrency > 1:
        raise ShardConcurrency(
            f"{', '.join(shards)}: a shard queue is consumed by one process (a symbol's ticks in order), "
            f"not {concurrency}; run one worker per shard with concurrency 1 "
            f"(tradebus worker {shards[0]}); the shards are the parallelism"
        )


def yields_cpu(topology: Topology, queues: Iterable[str], window: int) -> bool:
    """Whether a worker consuming ``queues`` with a prefetch ``window`` runs at a lower CPU priority: only
    batched market data, every key of every queue batched (``PoolProfile.batches_every_key``; not
    letrade.market_data, whose requests are answered one by one while a caller waits), with a window that
    batches (a batch is at most half of it: tradebus/consumer.py ``batch_limit``)."""
    names = list(queues)
    pools = topology.pools
    return bool(names) and window >= 4 and all(n in pools and pools[n].batches_every_key for n in names)
