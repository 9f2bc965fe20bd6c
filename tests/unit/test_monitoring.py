"""The monitoring files (deploy/prometheus, deploy/grafana, docker-compose.yml) against the code they watch.

Every metric a rule or a panel names is one tradebus exports (tradebus/metrics.py) or one RabbitMQ's
rabbitmq_prometheus serves on the path Prometheus scrapes (tests/live/test_metrics_live.py scrapes the
real plugin for the same names); the queue lists in the rules are the topologies'; every worker pool is a
scrape target on the port its service sets; Grafana reads the dashboard and the data source compose mounts.
With promtool installed (Debian's ``prometheus`` package), the config and rules are checked by it and the
alerts are unit-tested on synthetic series (tests/unit/promtool/tradebus_rules_test.yml).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import routing
from tradebus import metrics, sharding
from tradebus.errors import Reason

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy/prometheus"
RULES = PROMETHEUS / "rules/tradebus.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/tradebus.json"
TOPOLOGIES = [routing.build("mastertrade"), routing.build("letrade")]
#: What rabbitmq_prometheus serves on /metrics/detailed for the families Prometheus asks for (the live
#: test scrapes the plugin and finds each of them), and Prometheus's own ``up``.
BROKER_METRICS = {
    "rabbitmq_detailed_queue_messages",
    "rabbitmq_detailed_queue_messages_ready",
    "rabbitmq_detailed_queue_messages_unacked",
    "rabbitmq_detailed_queue_consumers",
}
#: The order path (signal -> risk -> order -> fill): the queues whose hops the order-path rule adds up.
ORDER_PATH = {"trading_signals", "order_requests", "order_updates"}
#: Its p99 target, docs/performance.md ("The order path").
ORDER_PATH_P99_TARGET = 0.025
_FUNCTIONS_AND_KEYWORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "max", "min", "avg", "count",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "vector", "bool", "offset",
    "humanizeDuration",
}  # fmt: skip


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in data["panels"] for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label matchers, grouping
    clauses and ranges that are no function or keyword."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = {
        m[0]
        for m in re.finditer(r"(?<![\w:.])[A-Za-z_:][A-Za-z0-9_:]*", text)
        if not text[m.end() :].lstrip().startswith("(")  # a function call
    }
    return names - _FUNCTIONS_AND_KEYWORDS


def label_values(expr: str, label: str) -> set[str]:
    """Every value ``label`` is compared with (``=`` or ``=~`` with ``|`` alternatives, unescaped)."""
    found: set[str] = set()
    for value in re.findall(rf'\b{label}=~?"((?:\\.|[^"\\])*)"', expr):
        found |= {part.replace("\\\\", "\\") for part in value.split("|")}
    return found


def queue_regex(expr: str, metric: str) -> re.Pattern[str]:
    """The regular expression ``metric``'s ``queue`` label is matched with in ``expr``."""
    match = re.search(rf'{metric}\{{[^}}]*queue=~"((?:\\.|[^"\\])*)"', expr)
    assert match, (metric, expr)
    return re.compile(match[1].replace("\\\\", "\\"))


def exported() -> set[str]:
    """Every sample name tradebus's metrics and the broker's give, and the recording rules' names."""
    ours = {sample for metric in metrics.METRICS for sample in metric.samples}
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    return ours | BROKER_METRICS | recorded | {"up"}


def test_the_metric_names_follow_prometheus_conventions() -> None:
    for metric in metrics.METRICS:
        assert re.fullmatch(r"tradebus_[a-z_]+", metric.name), metric.name
        assert metric.name.endswith("_total") == (metric.kind == "counter"), metric.name
        if metric.kind == "histogram":
            assert metric.name.endswith("_seconds"), f"{metric.name}: a duration in seconds, the base unit"
        assert set(metric.labels) <= {"queue", "stage", "outcome", "reason", "kind"}, metric.name
        # ``reason`` is a dead letter's (errors.Reason) and nothing else's.
        assert ("reason" in metric.labels) == (metric is metrics.DEAD_LETTERS), metric.name


def test_the_name_check_sees_a_misspelt_metric() -> None:
    """Positive control of the cross-checks below."""
    expr = 'sum by (queue) (rate(tradebus_mesages_processed_total{outcome="success"}[5m])) or vector(0)'
    assert metric_names(expr) == {"tradebus_mesages_processed_total"}
    assert not metric_names(expr) <= exported()


def test_every_metric_a_rule_or_a_panel_reads_is_exported() -> None:
    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    assert len(exprs) > 10
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported(), f"{sorted(names - exported())} in {expr}"


def test_the_label_values_rules_and_panels_compare_with_are_ones_tradebus_writes() -> None:
    queues = {q.name for t in TOPOLOGIES for q in t.queues}
    for expr in [rule["expr"] for rule in rules()] + dashboard_exprs():
        assert label_values(expr, "outcome") <= {o.value for o in metrics.Outcome}, expr
        assert label_values(expr, "reason") <= {r.value for r in Reason}, expr
        assert label_values(expr, "kind") <= {sharding.NO_SYMBOL, sharding.MISPLACED}, expr
        plain = {v for v in label_values(expr, "queue") if re.fullmatch(r"[\w.]+", v) and "\\" not in v}
        assert plain <= queues, expr


def test_the_dlq_alert_watches_every_dead_letter_queue_of_both_buses_and_nothing_else() -> None:
    (rule,) = [r for r in rules() if r.get("alert") == "TradebusDeadLetterQueueFilling"]
    assert rule["expr"].endswith("> 10")  # the seed's rule: alert on DLQ depth > 10
    pattern = queue_regex(rule["expr"], "rabbitmq_detailed_queue_messages")
    for topology in TOPOLOGIES:
        for queue in topology.queues:
            is_dlq = topology.is_dead_letter_queue(queue.name)
            assert bool(pattern.fullmatch(queue.name)) == is_dlq, queue.name


def test_the_no_consumer_alert_watches_exactly_the_critical_queues_of_both_buses() -> None:
    (rule,) = [r for r in rules() if r.get("alert") == "TradebusCriticalQueueWithoutConsumers"]
    assert rule["expr"].endswith("== 0")
    pattern = queue_regex(rule["expr"], "rabbitmq_detailed_queue_consumers")
    for topology in TOPOLOGIES:
        for queue in topology.queues:
            assert bool(pattern.fullmatch(queue.name)) == (queue.name in topology.critical_queues), queue.name


def test_the_order_path_alert_adds_up_the_order_paths_hops_against_its_target() -> None:
    (record,) = [r for r in rules() if r.get("record") == "tradebus:order_path_p99_seconds"]
    waits = queue_regex(record["expr"], "tradebus_publish_to_start_seconds_bucket")
    work = queue_regex(record["expr"], "tradebus_processing_seconds_bucket")
    queues = {q.name for q in TOPOLOGIES[0].queues}
    assert {q for q in queues if waits.fullmatch(q)} == ORDER_PATH
    assert {q for q in queues if work.fullmatch(q)} == ORDER_PATH - {"order_updates"}
    (alert,) = [r for r in rules() if r.get("alert") == "TradebusOrderPathSlow"]
    assert alert["expr"] == f"tradebus:order_path_p99_seconds > {ORDER_PATH_P99_TARGET}"


def test_a_critical_queues_pool_whose_every_replica_is_gone_alerts_by_its_compose_service() -> None:
    """DNS discovery drops a stopped container's target, so ``up == 0`` cannot see it: ``absent`` does."""
    (rule,) = [r for r in rules() if r.get("alert") == "TradebusCriticalWorkerAbsent"]
    parts = [p.strip() for p in rule["expr"].split(" or ")]
    assert all(re.fullmatch(r'absent\(up\{job="tradebus-workers", service="[\w-]+"\}\)', p) for p in parts)
    critical = {
        name
        for name, service in compose()["services"].items()
        if (service.get("command") or [])[:2] == ["tradebus", "worker"]
        and service["command"][2] in TOPOLOGIES[0].critical_queues
    }
    assert len(critical) == len(TOPOLOGIES[0].critical_queues)
    assert label_values(rule["expr"], "service") == critical


def test_prometheus_scrapes_every_worker_pool_on_the_port_its_service_serves() -> None:
    services = compose()["services"]
    workers = {
        name: service
        for name, service in services.items()
        if (service.get("command") or [])[:2] == ["tradebus", "worker"]
    }
    assert len(workers) == len(TOPOLOGIES[0].pools)
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (discovery,) = jobs["tradebus-workers"]["dns_sd_configs"]
    # docker-compose.shards.yml's shard pools are scraped too, with the same settings.
    shards = yaml.safe_load((ROOT / "docker-compose.shards.yml").read_text())["services"]
    shard_workers = {name for name, service in shards.items() if "command" in service}
    assert shard_workers and set(discovery["names"]) == set(workers) | shard_workers
    for name, service in workers.items():
        env = service["environment"]
        assert int(env["TRADEBUS_METRICS_PORT"]) == discovery["port"], name
        assert env["TRADEBUS_METRICS_ADDRESS"] == "0.0.0.0", name  # reachable from the prometheus service
        assert "ports" not in service, f"{name}: metrics stay inside the compose network"
    # The pool processes' sample files live on a tmpfs of the container's own, named by the environment, so
    # a restarted worker starts from an empty directory (the exporter also clears it at start).
    for name, service in [*workers.items(), *((n, shards[n]) for n in shard_workers)]:
        directory = service["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert any(t.split(":", 1)[0] == directory for t in service["tmpfs"]), name


def test_prometheus_reads_per_queue_figures_from_rabbitmq_prometheus_which_compose_enables() -> None:
    services = compose()["services"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    queues = next(job for job in config["scrape_configs"] if job["job_name"] == "rabbitmq-queues")
    assert queues["metrics_path"] == "/metrics/detailed"
    assert queues["params"]["family"] == ["queue_coarse_metrics", "queue_consumer_count"]
    # Every node of docker-compose.cluster.yml (each reports the queues it leads); one node: rabbitmq.
    cluster = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())["services"]
    nodes = {"rabbitmq"} | {name for name in cluster if re.fullmatch(r"rabbitmq-\d", name)}
    node = next(job for job in config["scrape_configs"] if job["job_name"] == "rabbitmq")
    for job in (queues, node):
        (discovery,) = job["dns_sd_configs"]
        assert (set(discovery["names"]), discovery["port"]) == (nodes, 15692), job["job_name"]
    plugins = (ROOT / "deploy/rabbitmq/enabled_plugins").read_text().strip()
    assert re.fullmatch(r"\[[a-z_,]+\]\.", plugins)
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= set(plugins[1:-2].split(","))
    mount = "./deploy/rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro"
    assert mount in services["rabbitmq"]["volumes"]
    assert "rabbitmq-plugins enable rabbitmq_prometheus" in (ROOT / "scripts/services.sh").read_text()


def test_prometheus_and_grafana_load_the_files_compose_mounts() -> None:
    services = compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (rule_glob,) = config["rule_files"]
    assert Path(rule_glob).parent == Path("/etc/prometheus/rules") and RULES.match(Path(rule_glob).name)
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/tradebus.yml").read_text())
    (dashboards,) = provider["providers"]
    assert mounts["./deploy/grafana/dashboards"] == dashboards["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} == {source["uid"]}
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    for service in (prometheus, grafana):
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])


def test_the_dashboard_shows_rates_latencies_depths_dead_letters_and_the_order_path() -> None:
    read = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    assert {
        "tradebus_messages_processed_total",
        "tradebus_processing_seconds_bucket",
        "tradebus_publish_to_start_seconds_bucket",
        "tradebus_dead_letters_total",
        "tradebus_retries_total",
        "tradebus_redeliveries_total",
        "rabbitmq_detailed_queue_messages",
        "rabbitmq_detailed_queue_messages_unacked",
        "rabbitmq_detailed_queue_consumers",
        "tradebus:order_path_p99_seconds",
        "tradebus_shard_deliveries_total",
    } <= read


PROMTOOL = shutil.which("promtool")
# `make test` installs promtool (scripts/promtool.sh); in CI a missing promtool fails, elsewhere it skips.
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("TRADEBUS_REQUIRE_BROKER") != "1",
    reason="promtool is not installed (bash scripts/promtool.sh)",
)


@needs_promtool
def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    config = (PROMETHEUS / "prometheus.yml").read_text().replace("/etc/prometheus/rules", str(RULES.parent))
    (tmp_path / "prometheus.yml").write_text(config)
    for argv in (["check", "config", str(tmp_path / "prometheus.yml")], ["check", "rules", str(RULES)]):
        result = subprocess.run([str(PROMTOOL), *argv], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_alert_fires_on_what_should_fire_it_and_not_just_under_its_threshold() -> None:
    tests = Path(__file__).parent / "promtool"
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", "tradebus_rules_test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tests,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    covered = yaml.safe_load((tests / "tradebus_rules_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in covered for case in test["alert_rule_test"]}
    assert tested == {r["alert"] for r in rules() if "alert" in r} - {"TradebusWorkerDown"}


def test_the_operations_guide_has_a_line_for_every_metric_and_every_alert() -> None:
    guide = (ROOT / "docs/operations.md").read_text()
    for metric in metrics.METRICS:
        assert f"`{metric.name}" in guide, metric.name
    for name in BROKER_METRICS:
        assert f"`{name}`" in guide, name
    for rule in rules():
        assert f"`{rule.get('alert') or rule['record']}`" in guide, rule
