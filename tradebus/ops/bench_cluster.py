"""``tradebus bench --cluster URLS``: the order path on a RabbitMQ cluster with quorum queues, against the
same path on this broker, in one run (docs/reliability.md, "The price of the cluster").

The order path (signal -> risk -> order -> paper fill, tradebus/ops/bench.py) runs first on the configured
broker with its topology, then on the cluster with the quorum topology (``TRADEBUS_QUEUE_TYPE=quorum``),
each in a vhost of its own; the figure to quote is the ratio of each load's p50 and p99, measured minutes
apart on the same machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from routing import build
from tradebus.application import TradebusCelery, create_app
from tradebus.ops.benchkit import Plan

#: Runs the order path on an app's broker with a plan: tradebus/ops/bench.py's ``order_path_figures``.
OrderPath = Callable[[TradebusCelery, Plan, Callable[[str], None]], dict[str, Any]]

#: The comparison's own plan: 50 round trips per load, under 200 ticks/s. At the full bench's 500 ticks/s
#: one per message, a three-node cluster sharing a 2-core machine with its workers fell behind: a tick
#: reached the executor more than 30 s late (docs/scaling.md).
CLUSTER_PLAN = Plan(round_trips=50, background_ticks=200.0)
ONE_NODE = "one node"
CLUSTER = "cluster"
RATIO = "cluster / one node"


def ratios(one_node: dict[str, Any], cluster: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each load's cluster p50 and p99 over the one node's (above 1: the cluster is slower)."""
    return {
        load: {p: round(cluster[load][p] / one_node[load][p], 2) for p in ("p50", "p99") if one_node[load][p]}
        for load in one_node
        if load in cluster
    }


def compare(
    app: TradebusCelery,
    cluster_url: str,
    cluster_management: str | None,
    quick: bool,
    echo: Callable[[str], None],
    order_path: OrderPath,
) -> dict[str, Any]:
    """The order path on ``app``'s broker, then on the cluster at ``cluster_url`` with quorum queues."""
    plan = Plan.quick() if quick else CLUSTER_PLAN
    settings = app.settings.with_(
        broker_url=cluster_url, management_url=cluster_management, queue_type="quorum"
    )
    on_cluster = create_app(build(app.topology.name, queue_type="quorum"), settings)
    echo(f"order path on one node ({app.settings.queue_type} queues) ...")
    single = order_path(app, plan, echo)
    echo("order path on the cluster (quorum queues) ...")
    try:
        clustered = order_path(on_cluster, plan, echo)
    finally:
        on_cluster.close()
    result = {ONE_NODE: single, CLUSTER: clustered, RATIO: ratios(single, clustered)}
    for load, ratio in result[RATIO].items():
        echo(f"  cluster / one node, {load}: p50 x{ratio.get('p50')}, p99 x{ratio.get('p99')}")
    return result
