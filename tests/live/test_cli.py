"""The ``tradebus`` command as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from kombu import Exchange, Queue

from tests.support.bus import MASTERTRADE, Vhost
from tradebus.ops.cli import ExitCode, main
from tradebus.topology import diff

TRADEBUS = str(Path(sys.executable).with_name("tradebus"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tradebus ARGS`` in its own process, with ``env`` on top of ours."""
    return subprocess.run(
        [TRADEBUS, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120
    )


def test_route_names_the_queues_a_key_reaches() -> None:
    result = CliRunner().invoke(main, ["route", "mastertrade.market", "market.data.BTCUSDT.1m"])
    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == "queues: executor_market_data, market_data, strategy_market_data"


def test_route_shows_a_live_signal_passing_through_the_alternate_exchange() -> None:
    result = CliRunner().invoke(main, ["route", "mastertrade.trading", "signal.BTCUSDT.uuid-1234"])
    assert result.output.splitlines() == [
        "mastertrade.trading: no binding matched",
        "mastertrade.trading.live: trading_signals",
        "queues: trading_signals",
    ]


def test_route_of_an_unknown_exchange_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["route", "mastertrade.nope", "x"])
    assert result.exit_code == ExitCode.USAGE
    assert "unknown exchange" in result.output


def test_topology_show_lists_every_queue_with_its_stage_and_pool() -> None:
    result = CliRunner().invoke(main, ["topology", "show"])
    assert result.exit_code == 0
    for queue in MASTERTRADE.queues:
        assert queue.name in result.output
    assert "tradebus.execution.execute_order" in result.output
    assert "3 x prefetch 1" in result.output


def test_topology_export_is_definitions_json_for_the_given_vhost() -> None:
    result = CliRunner().invoke(main, ["topology", "export", "--vhost", "trading"])
    data = json.loads(result.output)
    assert {q["name"] for q in data["queues"]} == {q.name for q in MASTERTRADE.queues}
    assert {e["name"] for e in data["exchanges"]} == {e.name for e in MASTERTRADE.exchanges}
    assert {item["vhost"] for key in ("queues", "exchanges", "bindings") for item in data[key]} == {"trading"}


def test_unreachable_broker_exits_with_its_named_code() -> None:
    result = run("topology", "declare", env={"TRADEBUS_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"})
    assert result.returncode == ExitCode.BROKER_UNREACHABLE
    assert "cannot reach the broker" in result.stderr


@pytest.mark.broker
def test_exported_definitions_import_with_rabbitmqctl_into_the_same_topology(fresh_vhost: Vhost) -> None:
    rabbitmqctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    # rabbitmqctl reads the file as the rabbitmq user: it must be readable outside pytest's private tmp.
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir="/tmp") as definitions:
        definitions.write(run("topology", "export", "--vhost", fresh_vhost.name).stdout)
        definitions.flush()
        os.chmod(definitions.name, 0o644)
        imported = subprocess.run(
            [rabbitmqctl, "import_definitions", definitions.name], capture_output=True, text=True, timeout=120
        )
        assert imported.returncode == 0, imported.stderr
        management = fresh_vhost.management
        wanted = {(b.exchange.name, b.routing_key, q.name) for q in MASTERTRADE.queues for b in q.bindings}

        def live_bindings() -> set[tuple[str, str, str]]:
            return {
                (b["source"], b["routing_key"], b["destination"])
                for b in management.bindings()
                if b["source"]
            }

        deadline = time.monotonic() + 30  # the import runs asynchronously
        while live_bindings() != wanted and time.monotonic() < deadline:
            time.sleep(0.2)
    assert live_bindings() == wanted
    assert {q.name for q in MASTERTRADE.queues} <= {q["name"] for q in management.queues()}
    assert {p["name"]: p["definition"] for p in management.policies()} == {
        p.name: p.definition for p in MASTERTRADE.policies
    }
    assert diff(MASTERTRADE, management.exchanges(), management.queues()) == []


@pytest.mark.broker
def test_declare_is_idempotent_and_queues_lists_every_queue(fresh_vhost: Vhost) -> None:
    env = {"TRADEBUS_BROKER_URL": fresh_vhost.url}
    assert run("topology", "declare", env=env).returncode == ExitCode.OK
    assert run("topology", "declare", env=env).returncode == ExitCode.OK
    listing = run("queues", env=env)
    assert listing.returncode == ExitCode.OK
    rows = {line.split()[0]: line.split()[1:] for line in listing.stdout.splitlines()[2:]}
    assert set(rows) == {q.name for q in MASTERTRADE.queues}
    assert rows["order_requests"] == ["stage", "0", "0"]


def _seed_style_broker(vhost: Vhost) -> None:
    """A broker set up by code that departs from the seed: the seed's exchange, another TTL on its queue."""
    with vhost.connection() as conn:
        channel = conn.channel()
        Exchange("mastertrade.market", type="topic", durable=True)(channel).declare()
        Queue("market_data", durable=True, queue_arguments={"x-message-ttl": 30000})(channel).declare()


@pytest.mark.broker
def test_declare_on_a_conflicting_broker_prints_the_diff_and_changes_nothing(fresh_vhost: Vhost) -> None:
    _seed_style_broker(fresh_vhost)
    result = run("topology", "declare", env={"TRADEBUS_BROKER_URL": fresh_vhost.url})
    assert result.returncode == ExitCode.TOPOLOGY_CONFLICT
    rows = [line.split() for line in result.stderr.splitlines()]
    assert ["queue", "market_data", "x-message-ttl", "30000", "60000"] in rows
    assert ["queue", "market_data", "x-max-length", "(unset)", "100000"] in rows
    assert ["queue", "market_data", "x-overflow", "(unset)", "drop-head"] in rows
    # The seed's own exchange declaration is what tradebus declares: no difference there.
    assert not [row for row in rows if row[:2] == ["exchange", "mastertrade.market"]]
    assert "order_requests" not in {q["name"] for q in fresh_vhost.management.queues()}


@pytest.mark.broker
def test_declare_without_the_management_api_still_explains_the_conflict(fresh_vhost: Vhost) -> None:
    _seed_style_broker(fresh_vhost)
    result = run(
        "topology",
        "declare",
        env={"TRADEBUS_BROKER_URL": fresh_vhost.url, "TRADEBUS_MANAGEMENT_URL": "http://127.0.0.1:1"},
    )
    assert result.returncode == ExitCode.TOPOLOGY_CONFLICT
    assert "x-message-ttl" in result.stderr and "market_data" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.broker
def test_declare_over_an_exchange_with_an_alternate_exchange_argument_says_how_to_migrate(
    fresh_vhost: Vhost,
) -> None:
    """What an older tradebus declared: the alternate exchange as an argument, which cannot be changed."""
    with fresh_vhost.connection() as conn:
        arguments = {"alternate-exchange": "mastertrade.market.unrouted"}
        Exchange("mastertrade.market", type="topic", durable=True, arguments=arguments)(
            conn.channel()
        ).declare()
    result = run("topology", "declare", env={"TRADEBUS_BROKER_URL": fresh_vhost.url})
    assert result.returncode == ExitCode.TOPOLOGY_CONFLICT
    rows = [line.split() for line in result.stderr.splitlines()]
    assert [
        "exchange",
        "mastertrade.market",
        "alternate-exchange",
        "mastertrade.market.unrouted",
        "(unset)",
    ] in rows
    assert "delete it" in result.stderr and "docs/topology.md" in result.stderr


@pytest.mark.broker
def test_declare_refuses_an_operator_policy_that_would_replace_an_alternate_exchange(
    fresh_vhost: Vhost,
) -> None:
    """RabbitMQ applies one policy per object: a higher one without our key would drop unroutable messages."""
    fresh_vhost.management.put_policy(
        "ops-everything",
        {"pattern": "^mastertrade\\.", "definition": {"max-length": 1}, "priority": 50, "apply-to": "all"},
    )
    result = run("topology", "declare", env={"TRADEBUS_BROKER_URL": fresh_vhost.url})
    assert result.returncode == ExitCode.TOPOLOGY_CONFLICT
    rows = [line.split() for line in result.stderr.splitlines()]
    assert [
        "exchange",
        "mastertrade.orders",
        "alternate-exchange",
        "(unset)",
        "(policy",
        "ops-everything,",
        "priority",
        "50)",
        "mastertrade.orders.unrouted",
    ] in rows
    # Positive control: the same policy below ours (priority 0) takes nothing away, and declaring succeeds.
    fresh_vhost.management.put_policy(
        "ops-everything",
        {"pattern": "^mastertrade\\.", "definition": {"max-length": 1}, "priority": 0, "apply-to": "all"},
    )
    assert run("topology", "declare", env={"TRADEBUS_BROKER_URL": fresh_vhost.url}).returncode == ExitCode.OK


@pytest.mark.broker
def test_declare_warns_about_a_live_binding_the_topology_does_not_declare(declared_vhost: Vhost) -> None:
    with declared_vhost.connection() as conn:
        conn.channel().queue_bind("backtest_signals", "mastertrade.trading", "#")
    result = run("topology", "declare", env={"TRADEBUS_BROKER_URL": declared_vhost.url})
    assert result.returncode == ExitCode.OK
    assert "warning: binding mastertrade.trading '#' -> backtest_signals is not part of the topology" in (
        result.stderr
    )


def test_dlq_commands_name_the_dead_letter_queues_when_given_an_unknown_one() -> None:
    for args in (["dlq", "list", "no_such_queue"], ["dlq", "replay", "no_such_queue"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == ExitCode.USAGE
        assert "no dead-letter queue 'no_such_queue'" in result.output
        assert "dlq.order_requests" in result.output
