"""The MasterTrade topology (seed 000): ``build()`` returns it as one :class:`~routing.model.Topology`.

``exchanges``, ``queues``, ``keys``, ``policies``, ``pools`` and ``services`` hold its parts as data.
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from routing.mastertrade import exchanges as ex
from routing.mastertrade import queues as qs
from routing.mastertrade import quorum
from routing.mastertrade import shards as sh
from routing.mastertrade.keys import symbol_of
from routing.mastertrade.policies import policies
from routing.mastertrade.pools import POOLS
from routing.model import QUORUM, Topology, TopologyOptions

NAME = "mastertrade"

#: The stage modules of the pipeline, one per stage (tasks/).
STAGE_MODULES: tuple[str, ...] = (
    "tasks.market_data",
    "tasks.strategy",
    "tasks.risk",
    "tasks.execution",
    "tasks.alerts",
    "tasks.monitoring",
    "tasks.backtest",
)


def _replace(queues: tuple[Queue, ...], name: str, by: tuple[Queue, ...]) -> tuple[Queue, ...]:
    """``queues`` with the one called ``name`` replaced by ``by``, in its place."""
    return tuple(new for q in queues for new in (by if q.name == name else (q,)))


def build(options: TopologyOptions | None = None) -> Topology:
    """MasterTrade's bus: the seed's five topic exchanges and DLX, every queue, policy, route and pool.

    With ``market_data_shards`` N > 0, ``strategy_market_data`` is replaced by N shard queues behind a
    consistent-hash exchange (routing/mastertrade/shards.py). ``queue_type="quorum"``: the critical queues
    and their DLQs are quorum queues, and retries wait out their delay in the broker's delay queues
    (routing/mastertrade/quorum.py). The two options are independent: shards are market data, never quorum.
    """
    options = options or TopologyOptions()
    count = options.market_data_shards
    exchanges, stage_queues, dead_letter_queues = ex.EXCHANGES, qs.STAGE_QUEUES, qs.DEAD_LETTER_QUEUES
    task_queues = qs.TASK_QUEUES
    market_data_queues, pools = qs.MARKET_DATA_QUEUES, dict(POOLS)
    if count:
        sharded = sh.SHARDED_QUEUE.name
        shard_queues = sh.shard_queues(count)
        dead = qs.dead_letter_queue_name(sharded)
        exchanges = (*exchanges, sh.STRATEGY_SHARDS)
        stage_queues = _replace(stage_queues, sharded, shard_queues)
        dead_letter_queues = _replace(
            dead_letter_queues, dead, tuple(qs.dead_letter_queue(q, market=True) for q in shard_queues)
        )
        market_data_queues = (market_data_queues - {sharded}) | {q.name for q in shard_queues}
        del pools[sharded]
        pools |= sh.pools(count)
    variant: dict[str, Any] = {}
    if options.queue_type == QUORUM:
        # The worker queues as built (shards included) get their retries back from the delay queues.
        workers = frozenset(q.name for q in (*stage_queues, *task_queues))
        stage_queues = tuple(quorum.replicated(q, workers) for q in stage_queues)
        task_queues = tuple(quorum.replicated(q, workers) for q in task_queues)
        dead_letter_queues = tuple(quorum.replicated(q, workers) for q in dead_letter_queues)
        exchanges = (*exchanges, quorum.RETRY_DELAY)
        stage_policies = policies(
            stage_queues,
            dead_letter_queues,
            quorum=quorum.REPLICATED | quorum.REPLICATED_DEAD_LETTERS,
            alternates=(*ex.ALTERNATES, (quorum.RETRY_DELAY, ex.RETRY_UNROUTED)),
        )
        variant = {"retry_delay": quorum.RETRY_DELAY, "delay_queues": quorum.DELAY_QUEUES}
    else:
        stage_policies = policies(stage_queues, dead_letter_queues)
    return Topology(
        name=NAME,
        options=options,
        exchanges=exchanges,
        public_exchanges=ex.PUBLIC_EXCHANGES,
        persistent_exchanges=ex.PERSISTENT_EXCHANGES,
        dlx=ex.DLX,
        retry=ex.RETRY,
        stage_queues=stage_queues,
        task_queues=task_queues,
        dead_letter_queues=dead_letter_queues,
        unrouted_queues=qs.UNROUTED_QUEUES,
        market_data_queues=market_data_queues,
        critical_queues=qs.CRITICAL_QUEUES,
        pools=pools,
        policies=(*stage_policies, sh.alternate_policy()) if count else stage_policies,
        exchange_bindings=(sh.exchange_binding(),) if count else (),
        shards=(sh.shards(count),) if count else (),
        shardable={sh.SHARDED_QUEUE.name: sh.STRATEGY_SHARDS.name},
        hash_value=symbol_of,
        dead_letter_route=qs.dead_letter_route,
        dead_letter_prefix=qs.DLQ_PREFIX,
        stage_modules=STAGE_MODULES,
        # One trace per signal, through risk, order and fill (docs/operations.md, "Traces").
        trace_roots=((ex.TRADING.name, "signal.#"),),
        # Celery beat: every 30 s, each service's health and the dead-letter queues' depths
        # (tasks/monitoring.py).
        beat_schedule={"health-report": {"task": "tradebus.monitoring.health_report", "schedule": 30.0}},
        task_routes={
            "tradebus.monitoring.health_report": {
                "queue": qs.PERIODIC_TASKS.name,
                "exchange": ex.TASKS.name,
                "routing_key": qs.PERIODIC_TASKS.name,
            }
        },
        **variant,
    )
