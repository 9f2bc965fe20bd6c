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
from tradebus.ops.bench import Bench
from tradebus.ops.benchkit import Plan, bench_vhost

ONE_NODE = "one node"
CLUSTER = "cluster"
RATIO = "cluster / one node"


def order_path(app: TradebusCelery, plan: Plan, echo: Callable[[str], None]) -> dict[str, Any]:
    """The order path's latencies (per load: p50, p95, p99 in ms, and the count) on ``app``'s broker."""
    with bench_vhost(app, echo) as bench_app:
        bench = Bench(bench_app, plan, echo)
        try:
            bench.order_path()
        finally:
            bench.stop()
    figures: dict[str, Any] = bench.results["order_path"]["signal_to_fill_ms"]
    return figures


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
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The order path on ``app``'s broker, then on the cluster at ``cluster_url`` with quorum queues."""
    plan = Plan.quick() if quick else Plan()
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
