"""``tradebus bench``: run the scenarios of tradebus/ops/bench.py on a vhost of their own, or compare the
order path on a cluster with one node (tradebus/ops/bench_cluster.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from tradebus.application import TradebusCelery
from tradebus.ops import bench_cluster
from tradebus.ops.bench import Bench
from tradebus.ops.benchkit import Plan, bench_vhost


def run_bench(
    app: TradebusCelery,
    quick: bool,
    echo: Callable[[str], None] = print,
    only: Sequence[str] = (),
    cluster: str | None = None,
    cluster_management: str | None = None,
) -> dict[str, Any]:
    """Run every scenario (or those named in ``only``) on ``app``'s bus; returns the figures. With
    ``cluster`` (its broker URLs), the order path there against ``app``'s (tradebus/ops/bench_cluster.py)."""
    if cluster:
        return bench_cluster.compare(app, cluster, cluster_management, quick, echo, order_path_figures)
    plan = Plan.quick() if quick else Plan()
    with bench_vhost(app, echo) as bench_app:
        bench = Bench(bench_app, plan, echo)
        try:
            for scenario in (bench.hop, bench.fanout, bench.order_path, bench.letrade_async, bench.traces):
                if only and scenario.__name__ not in only:
                    continue
                echo(f"{scenario.__name__.replace('_', ' ')} ...")
                scenario()
        finally:
            bench.stop()
        bench.results["finished_at"] = datetime.now(UTC).isoformat()
        return bench.results


def order_path_figures(app: TradebusCelery, plan: Plan, echo: Callable[[str], None]) -> dict[str, Any]:
    """The order path alone (per load: p50, p95, p99 in ms, and the count) on ``app``'s broker, in a vhost
    of its own: what ``tradebus bench --cluster`` compares (tradebus/ops/bench_cluster.py)."""
    with bench_vhost(app, echo) as bench_app:
        bench = Bench(bench_app, plan, echo)
        try:
            bench.order_path()
        finally:
            bench.stop()
    figures: dict[str, Any] = bench.results["order_path"]["signal_to_fill_ms"]
    return figures
