"""The MasterTrade topology (seed 000): ``build()`` returns it as one :class:`~routing.model.Topology`.

``exchanges``, ``queues``, ``keys``, ``policies``, ``pools`` and ``services`` hold its parts as data.
"""

from __future__ import annotations

from routing.mastertrade import exchanges as ex
from routing.mastertrade import queues as qs
from routing.mastertrade.policies import policies
from routing.mastertrade.pools import POOLS
from routing.model import Topology, TopologyOptions

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
    """MasterTrade's bus: the seed's five topic exchanges and DLX, every queue, policy, route and pool."""
    return Topology(
        name=NAME,
        options=options or TopologyOptions(),
        exchanges=ex.EXCHANGES,
        public_exchanges=ex.PUBLIC_EXCHANGES,
        persistent_exchanges=ex.PERSISTENT_EXCHANGES,
        dlx=ex.DLX,
        retry=ex.RETRY,
        stage_queues=qs.STAGE_QUEUES,
        task_queues=qs.TASK_QUEUES,
        dead_letter_queues=qs.DEAD_LETTER_QUEUES,
        unrouted_queues=qs.UNROUTED_QUEUES,
        market_data_queues=qs.MARKET_DATA_QUEUES,
        critical_queues=qs.CRITICAL_QUEUES,
        pools=POOLS,
        policies=policies(qs.STAGE_QUEUES, qs.DEAD_LETTER_QUEUES),
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
    )
