"""``tradebus bench --cluster``'s figure: each load's cluster p50 and p99 over one node's."""

from __future__ import annotations

from tradebus.ops.bench_cluster import ratios


def test_ratios_are_cluster_over_one_node_per_load_and_percentile() -> None:
    one = {"idle": {"p50": 10.0, "p95": 12.0, "p99": 20.0, "n": 6.0}, "busy": {"p50": 0.0, "p99": 5.0}}
    cluster = {"idle": {"p50": 25.0, "p95": 30.0, "p99": 30.0, "n": 6.0}, "busy": {"p50": 1.0, "p99": 5.0}}
    assert ratios(one, cluster) == {"idle": {"p50": 2.5, "p99": 1.5}, "busy": {"p99": 1.0}}
    assert ratios(one, {}) == {}
