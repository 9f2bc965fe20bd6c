"""The ``tradebus`` command: parse, call one function, exit with a named code."""

from __future__ import annotations

import json
import sys
from enum import IntEnum

import click
from kombu import Connection
from kombu.exceptions import OperationalError

from routing import route as route_keys
from routing import trace
from tradebus.errors import BrokerUnreachable, ManagementAPIError, TopologyConflict, UnknownPool
from tradebus.settings import get_settings


class ExitCode(IntEnum):
    """What ``tradebus`` exits with."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    TOPOLOGY_CONFLICT = 3
    BROKER_UNREACHABLE = 4
    MANAGEMENT_API_ERROR = 5


def _connection() -> Connection:
    return Connection(get_settings().broker_url, connect_timeout=5)


@click.group()
def main() -> None:
    """tradebus: the MasterTrade message bus on RabbitMQ and Celery."""


@main.group()
def topology() -> None:
    """Declare, show or export the topology."""


@topology.command("declare")
def topology_declare() -> None:
    """Declare every exchange, queue and binding (idempotent); on a conflict print the diff."""
    from tradebus.management import Management
    from tradebus.report import table
    from tradebus.topology import check_and_declare

    settings = get_settings()
    try:
        with _connection() as conn:
            conn.ensure_connection(max_retries=1)
            extra = check_and_declare(conn, Management(settings.management))
    except TopologyConflict as exc:
        click.echo("The broker holds objects that differ from the topology; nothing was changed:", err=True)
        click.echo(table(["object", "argument", "live", "wanted"], exc.differences), err=True)
        sys.exit(ExitCode.TOPOLOGY_CONFLICT)
    except (BrokerUnreachable, OperationalError, OSError) as exc:
        click.echo(f"cannot reach the broker: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)
    except ManagementAPIError as exc:
        click.echo(f"the management API refused: {exc}", err=True)
        sys.exit(ExitCode.MANAGEMENT_API_ERROR)
    for exchange, key, queue in extra:
        click.echo(f"warning: binding {exchange} {key!r} -> {queue} is not part of the topology", err=True)
    click.echo("topology declared")


@topology.command("show")
def topology_show() -> None:
    """Print the exchanges and queues (arguments, bindings, stage, pool) as tables."""
    from tradebus.app import app
    from tradebus.report import topology_tables
    from tradebus.stage import stage_tasks

    app.loader.import_default_modules()
    click.echo(topology_tables({q: t.name for q, t in stage_tasks(app).items()}))


@topology.command("export")
@click.option(
    "--vhost", default=None, help="vhost to write into the definitions (default: the broker URL's)."
)
def topology_export(vhost: str | None) -> None:
    """Print RabbitMQ definitions JSON for ``rabbitmqctl import_definitions``."""
    from tradebus.topology import definitions

    click.echo(json.dumps(definitions(vhost or get_settings().management.vhost), indent=2))


@main.command("route")
@click.argument("exchange")
@click.argument("routing_key")
def route_cmd(exchange: str, routing_key: str) -> None:
    """Which queues ROUTING_KEY published to EXCHANGE reaches, computed from the topology."""
    from tradebus.report import route_report

    try:
        hops = trace(exchange, routing_key)
    except KeyError as exc:
        click.echo(exc.args[0], err=True)
        sys.exit(ExitCode.USAGE)
    click.echo(route_report(hops))
    click.echo("queues: " + ", ".join(sorted(route_keys(exchange, routing_key))))


@main.command("queues")
def queues_cmd() -> None:
    """Depth and consumers of every queue on the live broker."""
    from tradebus.report import queue_depths, table

    try:
        with _connection() as conn:
            conn.ensure_connection(max_retries=1)
            rows = queue_depths(conn)
    except (OperationalError, OSError) as exc:
        click.echo(f"cannot reach the broker: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)
    click.echo(table(["queue", "kind", "messages", "consumers"], rows))


@main.command("worker", context_settings={"ignore_unknown_options": True})
@click.argument("pool")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_cmd(pool: str, celery_args: tuple[str, ...]) -> None:
    """Start worker pool POOL (a stage queue's name); extra arguments go to ``celery worker``."""
    from workers.run import run_pool

    try:
        run_pool(pool, celery_args)
    except UnknownPool as exc:
        click.echo(exc.args[0], err=True)
        sys.exit(ExitCode.USAGE)


@main.command("demo")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the stages.")
def demo_cmd(timeout: float) -> None:
    """Declare the topology, start every pool, publish the documented messages, show who got what."""
    from tradebus.demo import run_demo

    sys.exit(run_demo(timeout=timeout))
