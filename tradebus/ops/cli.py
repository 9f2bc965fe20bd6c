"""The ``tradebus`` command: parse, call one function, exit with a named code."""

from __future__ import annotations

import json
import os
import sys

import click
from kombu import Connection
from kombu.exceptions import OperationalError

from routing import LETRADE, PROFILES
from tradebus import tls
from tradebus.application import TOPOLOGY_ENV, TradebusCelery, create_app, topology_for, using
from tradebus.errors import (
    BrokerUnreachable,
    ManagementAPIError,
    PublishFailed,
    SettingsError,
    ShardConcurrency,
    TopologyConflict,
    UnknownPool,
)
from tradebus.ops.check import check_command, print_differences, report_declared
from tradebus.ops.exits import ExitCode, TradebusGroup
from tradebus.settings import Settings


def _app() -> TradebusCelery:
    """The app this command works on, built once by ``main`` from ``--topology`` and the environment."""
    app: TradebusCelery = click.get_current_context().find_root().obj
    return app


def _connection() -> Connection:
    """The broker, connected: one more try for one node, each node of a cluster's list once."""
    connection = tls.broker_connection(_app().settings, connect_timeout=5)
    connection.ensure_connection(max_retries=max(1, len(connection.alt)))
    return connection


@click.group(cls=TradebusGroup)
@click.option(
    "--topology",
    type=click.Choice(PROFILES),
    default=None,
    help=f"The bus to work on (default: ${TOPOLOGY_ENV}, else mastertrade).",
)
@click.pass_context
def main(ctx: click.Context, topology: str | None) -> None:
    """tradebus: the MasterTrade (and Letrade_v1) message bus on RabbitMQ and Celery."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        click.echo(str(exc), err=True)
        sys.exit(ExitCode.USAGE)
    name = topology or os.environ.get(TOPOLOGY_ENV) or "mastertrade"
    try:
        bus = topology_for(name, settings)
    except ValueError as exc:
        click.echo(f"{TOPOLOGY_ENV}: {exc}", err=True)
        sys.exit(ExitCode.USAGE)
    # Celery's current app while the command runs (a pool, a demo, code that finds its app through Celery).
    ctx.obj = ctx.with_resource(using(create_app(bus, settings)))


def _mastertrade_only(what: str) -> None:
    """Exit with a usage error when this command's bus has no such tool yet."""
    name = _app().topology.name
    if name == LETRADE:
        click.echo(f"{what} exists for the mastertrade topology only (this is {name})", err=True)
        sys.exit(ExitCode.USAGE)


@main.group(commands=[check_command])
def topology() -> None:
    """Declare, show or export the topology."""


@topology.command("declare")
def topology_declare() -> None:
    """Declare every exchange, queue and binding (idempotent); on a conflict print the diff."""
    from tradebus.management import Management
    from tradebus.topology import check_and_declare, conflict_hints

    app = _app()
    try:
        with _connection() as conn:
            declared = check_and_declare(app.topology, conn, Management(app.settings.management))
    except TopologyConflict as exc:
        title = "The broker holds objects that differ from the topology; nothing was changed:"
        print_differences(title, exc.differences, conflict_hints(exc.differences))
        sys.exit(ExitCode.TOPOLOGY_CONFLICT)
    except (BrokerUnreachable, OperationalError, OSError) as exc:
        click.echo(f"cannot reach the broker: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)
    except ManagementAPIError as exc:
        click.echo(f"management API: {exc}", err=True)
        sys.exit(ExitCode.MANAGEMENT_API_ERROR)
    report_declared(declared)


@topology.command("migrate")
@click.option("--dry-run", is_flag=True, help="Only list the queues whose type would change.")
def topology_migrate(dry_run: bool) -> None:
    """Move queues to the type TRADEBUS_QUEUE_TYPE wants, messages and all (docs/scaling.md)."""
    from tradebus.ops.migrate import command

    sys.exit(command(_app(), _connection, dry_run=dry_run, echo=click.echo))


@topology.command("show")
def topology_show() -> None:
    """Print the exchanges and queues (arguments, bindings, stage, pool) as tables."""
    from tradebus.ops.report import topology_tables
    from tradebus.registry import stages_of_queues

    app = _app()
    stages = {q: ", ".join(sorted(t.name for t in tasks)) for q, tasks in stages_of_queues(app).items()}
    click.echo(topology_tables(app.topology, stages))


@topology.command("export")
@click.option("--vhost", default=None, help="vhost to write into the definitions (default: the broker's).")
@click.option(
    "--users",
    is_flag=True,
    help="Add the vhost and a least-privilege user per service (TRADEBUS_USER_PASSWORD_<SERVICE>).",
)
@click.option("--user-prefix", default="tradebus-", show_default=True, help="Prefix of every user name.")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write to FILE (mode 0600).")
def topology_export(vhost: str | None, users: bool, user_prefix: str, output: str | None) -> None:
    """Print RabbitMQ definitions JSON for ``rabbitmqctl import_definitions``."""
    from tradebus.ops.users import export_definitions

    if users:
        _mastertrade_only("--users")
    app = _app()
    try:
        text = export_definitions(
            app.topology,
            vhost or app.settings.management.vhost,
            users=users,
            user_prefix=user_prefix,
            passwords={
                name: secret.get_secret_value() for name, secret in app.settings.user_passwords.items()
            },
        )
    except SettingsError as exc:
        click.echo(str(exc), err=True)
        sys.exit(ExitCode.USAGE)
    if output is None:
        click.echo(text)
    else:
        write_private(output, text + "\n")


def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (it may hold password hashes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


@topology.command("users")
@click.option("--user-prefix", default="tradebus-", show_default=True, help="Prefix of every user name.")
def topology_users(user_prefix: str) -> None:
    """The RabbitMQ user of every service and what it may configure, write, read and publish."""
    from tradebus.ops.report import table
    from tradebus.ops.users import UserDefinitions

    _mastertrade_only("tradebus topology users")
    rows = []
    for account in UserDefinitions(prefix=user_prefix).accounts:
        topics = "; ".join(f"{ex}: {keys}" for ex, keys in sorted(account.topic_permissions().items()))
        rows.append(
            (f"{user_prefix}{account.service}", account.configure, account.write, account.read, topics or "-")
        )
    click.echo(table(["user", "configure", "write", "read", "publishes (topic keys)"], rows))


@main.command("route")
@click.argument("exchange")
@click.argument("routing_key")
def route_cmd(exchange: str, routing_key: str) -> None:
    """Which queues ROUTING_KEY published to EXCHANGE reaches, computed from the topology."""
    from tradebus.ops.report import route_report

    topology = _app().topology
    try:
        hops = topology.trace(exchange, routing_key)
    except KeyError as exc:
        click.echo(exc.args[0], err=True)
        sys.exit(ExitCode.USAGE)
    click.echo(route_report(hops))
    click.echo("queues: " + ", ".join(sorted(topology.route(exchange, routing_key))))


@main.command("queues")
def queues_cmd() -> None:
    """Depth and consumers of every queue on the live broker."""
    from tradebus.ops.report import queue_depths, table

    try:
        with _connection() as conn:
            rows = queue_depths(_app().topology, conn)
    except (OperationalError, OSError) as exc:
        click.echo(f"cannot reach the broker: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)
    click.echo(table(["queue", "kind", "messages", "consumers"], rows))


@main.group()
def dlq() -> None:
    """Inspect and replay dead letters."""


def _dead_letter_queues(queue: str | None) -> list[str]:
    """The dead-letter queues QUEUE names (every one without it), or a usage error."""
    from tradebus.ops import dlq as dead

    try:
        return dead.queues_of(_app().topology, queue)
    except KeyError as exc:
        click.echo(exc.args[0], err=True)
        sys.exit(ExitCode.USAGE)


@dlq.command("list")
@click.argument("queue", required=False)
@click.option("--limit", default=20, show_default=True, help="Dead letters shown per queue.")
def dlq_list(queue: str | None, limit: int) -> None:
    """Show dead letters (reason, original route, count, age) without consuming them.

    QUEUE is a dead-letter queue or the queue it serves (order_requests = dlq.order_requests); without it,
    every dead-letter queue that holds something.
    """
    from tradebus.ops.report import dead_letter_report

    names = _dead_letter_queues(queue)
    try:
        with _connection() as conn:
            click.echo(dead_letter_report(_app(), conn, names, limit, show_empty=queue is not None))
    except (OperationalError, OSError) as exc:
        click.echo(f"cannot reach the broker: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)


@dlq.command("replay")
@click.argument("queue")
@click.option("--limit", default=100, show_default=True, help="Dead letters to replay at most.")
@click.option("--dry-run", is_flag=True, help="Only say what would be replayed, and where.")
def dlq_replay(queue: str, limit: int, dry_run: bool) -> None:
    """Re-validate dead letters of QUEUE and republish the valid ones; the invalid ones stay."""
    from tradebus.ops import dlq as dead
    from tradebus.ops.report import replay_report

    (name,) = _dead_letter_queues(queue)
    try:
        with _connection() as conn:
            results = dead.replay(_app(), conn, name, limit, dry_run=dry_run)
    except (OperationalError, OSError, PublishFailed) as exc:
        click.echo(f"cannot replay: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)
    click.echo(replay_report(name, results))


@main.command("bench")
@click.option(
    "--quick", is_flag=True, help="A short run of every scenario (checks it works; no figures to quote)."
)
@click.option("--json", "as_json", is_flag=True, help="End with one line of JSON with every figure.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(["hop", "fanout", "order_path", "letrade_async", "traces"]),
    help="Run only this scenario (repeatable; default: all).",
)
@click.option("--cluster", help="A cluster's broker URLs (a;b;c): its order path against this broker's.")
@click.option("--cluster-management", help="The cluster's management API URLs (a;b;c).")
def bench_cmd(quick: bool, as_json: bool, scenarios: tuple[str, ...], **cluster: str | None) -> None:
    """Measure tradebus against raw Kombu and bare Celery on this machine's broker (docs/performance.md),
    or with --cluster the order path on a cluster against it (docs/scaling.md)."""
    from tradebus.ops.benchrun import run_bench

    _mastertrade_only("tradebus bench")
    try:
        results = run_bench(_app(), quick, click.echo, scenarios, **cluster)
    except (BrokerUnreachable, ManagementAPIError, OperationalError, OSError) as exc:
        click.echo(f"cannot run the benchmark: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)
    if as_json:
        click.echo(json.dumps(results, sort_keys=True))


@main.command("worker", context_settings={"ignore_unknown_options": True})
@click.argument("pool")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_cmd(pool: str, celery_args: tuple[str, ...]) -> None:
    """Start worker pool POOL (a stage queue's name); extra arguments go to ``celery worker``."""
    from workers.run import run_pool

    try:
        run_pool(_app(), pool, celery_args)
    except (UnknownPool, ShardConcurrency) as exc:
        click.echo(exc.args[0], err=True)
        sys.exit(ExitCode.USAGE)


@main.command("simulate")
@click.option("--rate", default=100.0, show_default=True, help="Messages per second.")
@click.option("--burst-rate", default=500.0, show_default=True, help="Messages per second during bursts.")
@click.option("--duration", default=60.0, show_default=True, help="Seconds to run; 0 runs until stopped.")
@click.option("--seed", default=None, type=int, help="Random seed, for a repeatable market.")
def simulate_cmd(rate: float, burst_rate: float, duration: float, seed: int | None) -> None:
    """Publish simulated market data (candles, tickers, books, trades, sentiment...) to the broker."""
    app = _app()
    if app.topology.name == LETRADE:
        from tradebus.letrade import simulator as letrade_simulator
        from tradebus.letrade.stage import publish

        click.echo(f"Letrade candles at {rate:g}/s (--burst-rate is MasterTrade's simulator's)")
        try:
            count = letrade_simulator.run(
                lambda message: publish(message, app=app), rate, duration or float("inf"), seed
            )
        except PublishFailed as exc:
            click.echo(f"cannot publish: {exc}", err=True)
            sys.exit(ExitCode.BROKER_UNREACHABLE)
        click.echo(f"published {count} candles (market_data.binance.*)")
        return
    from tradebus.mastertrade.simulator import MarketSimulator, Pace, run_publishing

    try:
        stats = run_publishing(app, Pace(rate, burst_rate), duration, MarketSimulator(seed=seed), click.echo)
    except PublishFailed as exc:
        click.echo(f"cannot publish: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)
    counts = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.by_type.items()))
    click.echo(f"published {stats.published} messages in {stats.seconds:.1f}s ({stats.rate:.0f}/s): {counts}")


@main.command("demo")
@click.option("--duration", default=20.0, show_default=True, help="Seconds of simulated market data.")
@click.option("--broker", default=None, help="Broker URL; memory:// runs everything in this process.")
@click.option("--json", "as_json", is_flag=True, help="End with one line of JSON with the figures.")
@click.option("--seed", type=int, help="The simulated market's random seed [default: 1, the same every run].")
def demo_cmd(duration: float, broker: str | None, as_json: bool, seed: int | None) -> None:
    """Run the trading pipeline on simulated market data and report what it did."""
    if _app().topology.name == LETRADE:
        from tradebus.ops.letrade_demo import run_demo
    else:
        from tradebus.ops.demo import run_demo

    try:
        code = run_demo(_app(), duration, broker, as_json, seed)
    except (BrokerUnreachable, OperationalError, OSError) as exc:
        click.echo(f"cannot reach the broker: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)
    sys.exit(ExitCode.OK if code == 0 else ExitCode.FAILURE)


@main.command("health")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one line of JSON.")
def health_cmd(as_json: bool) -> None:
    """Status (healthy, degraded, unhealthy) and queue depth of the bus; exits 6 unless healthy."""
    from tradebus.health import bus_health
    from tradebus.ops.report import table

    try:
        with _connection() as conn:
            topology = _app().topology
            report = bus_health(
                conn,
                [q.name for q in topology.worker_queues],
                [q.name for q in topology.dead_letter_queues],
                [q.name for q in topology.unrouted_queues],
            )
    except (OperationalError, OSError) as exc:
        click.echo(f"cannot reach the broker: {exc}", err=True)
        sys.exit(ExitCode.BROKER_UNREACHABLE)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        click.echo(f"status: {report['status']}")
        click.echo(f"queue depth: {report['queue_depth']}")
        click.echo(f"dead letters: {report['dead_letters']}; unrouted: {report['unrouted']}")
        queues = report["queues"]
        assert isinstance(queues, dict)
        rows = [(q, s["messages"], s["consumers"]) for q, s in sorted(queues.items())]
        click.echo(table(["queue", "messages", "consumers"], rows))
    sys.exit(ExitCode.OK if report["status"] == "healthy" else ExitCode.UNHEALTHY)


if __name__ == "__main__":
    main(prog_name="tradebus")
