"""The MasterTrade topology (seed 000): ``build()`` returns it as one :class:`~routing.model.Topology`.

``exchanges``, ``queues``, ``keys``, ``policies``, ``pools`` and ``services`` hold its parts as data.
"""

from __future__ import annotations

from typing import Any

from routing.mastertrade import exchanges as ex
from routing.mastertrade import queues as qs
from routing.mastertrade import quorum
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


def build(options: TopologyOptions | None = None) -> Topology:
    """MasterTrade's bus: the seed's five topic exchanges and DLX, every queue, policy, route and pool.

    ``queue_type="quorum"``: the critical queues and their DLQs are quorum queues, and retries wait out
    their delay in the broker's delay queues (routing/mastertrade/quorum.py).
    """
    options = options or TopologyOptions()
    if options.queue_type == QUORUM:
        return _quorum(options)
    return _build(options)


def _quorum(options: TopologyOptions) -> Topology:
    stage_queues = tuple(quorum.replicated(q) for q in qs.STAGE_QUEUES)
    dead_letter_queues = tuple(quorum.replicated(q) for q in qs.DEAD_LETTER_QUEUES)
    replicated = quorum.REPLICATED | quorum.REPLICATED_DEAD_LETTERS
    alternates = (*ex.ALTERNATES, (quorum.RETRY_DELAY, ex.RETRY_UNROUTED))
    return _build(
        options,
        stage_queues=stage_queues,
        task_queues=tuple(quorum.replicated(q) for q in qs.TASK_QUEUES),
        dead_letter_queues=dead_letter_queues,
        exchanges=(*ex.EXCHANGES, quorum.RETRY_DELAY),
        policies=policies(stage_queues, dead_letter_queues, quorum=replicated, alternates=alternates),
        retry_delay=quorum.RETRY_DELAY,
        delay_queues=quorum.DELAY_QUEUES,
    )


def _build(options: TopologyOptions, **variant: Any) -> Topology:
    parts: dict[str, Any] = {
        "stage_queues": qs.STAGE_QUEUES,
        "task_queues": qs.TASK_QUEUES,
        "dead_letter_queues": qs.DEAD_LETTER_QUEUES,
        "exchanges": ex.EXCHANGES,
        "policies": policies(qs.STAGE_QUEUES, qs.DEAD_LETTER_QUEUES),
    } | variant
    return Topology(
        name=NAME,
        options=options,
        public_exchanges=ex.PUBLIC_EXCHANGES,
        persistent_exchanges=ex.PERSISTENT_EXCHANGES,
        dlx=ex.DLX,
        retry=ex.RETRY,
        unrouted_queues=qs.UNROUTED_QUEUES,
        market_data_queues=qs.MARKET_DATA_QUEUES,
        critical_queues=qs.CRITICAL_QUEUES,
        pools=POOLS,
        dead_letter_route=qs.dead_letter_route,
        dead_letter_prefix=qs.DLQ_PREFIX,
        stage_modules=STAGE_MODULES,
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
        **parts,
    )
