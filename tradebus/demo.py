"""``tradebus demo``: the bus at work on a real RabbitMQ, from a fresh start, in about a minute.

Declares the topology, starts every pool as its own worker process, publishes one message for each route of
the seed's routing-key hierarchy, and prints which stage received what.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
from kombu import Connection

from routing import route
from tradebus import recorder
from tradebus.management import Management
from tradebus.publisher import publish
from tradebus.report import table
from tradebus.samples import documented_messages
from tradebus.settings import get_settings
from tradebus.topology import check_and_declare
from workers.launch import PoolProcess, start_pool, wait_for_consumers
from workers.profiles import POOLS


def run_demo(timeout: float = 90.0) -> int:
    """Run the demo; returns 0 when every documented message reached every stage it should."""
    settings = get_settings()
    log_dir = Path(tempfile.mkdtemp(prefix="tradebus-demo-"))
    with Connection(settings.broker_url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=3)
        check_and_declare(conn, Management(settings.management))
        click.echo(f"topology declared on {settings.management.base_url} vhost {settings.management.vhost}")
        pools: list[PoolProcess] = []
        try:
            click.echo(f"starting {len(POOLS)} pools (logs in {log_dir}) ...")
            pools = [start_pool(name, log_dir, ["--loglevel", "WARNING"]) for name in POOLS]
            missing = wait_for_consumers(conn, POOLS, timeout, pools)
            if missing:
                click.echo(f"pools not consuming after {timeout:.0f}s: {', '.join(missing)}", err=True)
                return 1
            click.echo("every pool is consuming; publishing the seed's documented messages")
            return _publish_and_report(timeout)
        finally:
            for pool in pools:
                pool.stop()


def _publish_and_report(timeout: float) -> int:
    before = recorder.counts()
    expected: dict[str, int] = {}
    rows = []
    for message in documented_messages():
        queues = sorted(route(message.exchange, message.routing_key))
        publish(message)
        for q in queues:
            expected[q] = expected.get(q, 0) + 1
        rows.append((message.exchange, message.routing_key, ", ".join(queues)))
    click.echo(table(["exchange", "routing key", "queues"], rows))

    deadline = time.monotonic() + timeout
    got: dict[str, int] = {}
    while time.monotonic() < deadline:
        now = recorder.counts()
        got = {q: now.get(q, 0) - before.get(q, 0) for q in expected}
        if all(got[q] >= n for q, n in expected.items()):
            break
        time.sleep(0.2)
    click.echo("")
    click.echo(
        table(
            ["queue", "stage received", "expected"],
            [(q, got.get(q, 0), n) for q, n in sorted(expected.items())],
        )
    )
    short = [q for q, n in expected.items() if got.get(q, 0) < n]
    if short:
        click.echo(f"\nstages still waiting: {', '.join(sorted(short))}", err=True)
        return 1
    click.echo(f"\nall {sum(expected.values())} deliveries processed by their stages")
    return 0
