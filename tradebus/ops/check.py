"""``tradebus topology check``: the broker against the topology, read-only.

Arguments and policies (``tradebus.topology.diff``), a reshard (``reshard_conflicts``), the bindings the
topology does not declare, and the consistent-hash ring (tradebus/ops/ring.py) where it can be read.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import click

from routing import Topology
from tradebus.errors import ManagementAPIError
from tradebus.management import Management
from tradebus.ops.exits import ExitCode
from tradebus.ops.ring import RING_HINT, ring_differences, ring_state
from tradebus.topology import (
    Declared,
    Difference,
    conflict_hints,
    diff,
    extra_bindings,
    has_reshard,
    reshard_conflicts,
)


@dataclass
class Check:
    """What ``check`` found: differences, hints for them, warnings, and the rings it read."""

    differences: list[Difference] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rings: dict[str, dict[int, str]] = field(default_factory=dict)


def check(topology: Topology, management: Management) -> Check:
    """Compare the broker behind ``management`` with ``topology``; ManagementAPIError if it does not
    answer."""
    found = Check()
    bindings = management.bindings()
    rows = diff(topology, management.exchanges(), management.queues(), management.policies())
    rows += reshard_conflicts(topology, bindings)
    # A broker sharded another way has no ring worth reading (rabbitmq-diagnostics takes seconds to start).
    for shards in () if has_reshard(rows) else topology.shards:
        state = ring_state(management.settings.vhost, shards.exchange)
        if isinstance(state, str):
            found.warnings.append(f"ring of {shards.exchange} not checked: {state}")
        else:
            found.rings[shards.exchange] = state
    ring_rows = ring_differences(topology, found.rings)
    found.warnings += [
        f"warning: binding {exchange} {key!r} -> {queue} is not part of the topology"
        for exchange, key, queue in extra_bindings(topology, bindings)
    ]
    found.differences = rows + ring_rows
    found.hints = conflict_hints(rows) + [RING_HINT] * bool(ring_rows)
    return found


def print_differences(title: str, differences: list[Difference], hints: list[str]) -> None:
    """The differences as a table on stderr, under ``title``, with what to do about them."""
    from tradebus.ops.report import table  # its imports are the CLI's heaviest: only when needed

    click.echo(title, err=True)
    click.echo(table(["object", "argument", "live", "wanted"], differences), err=True)
    for hint in hints:
        click.echo(hint, err=True)


def report_declared(declared: Declared) -> None:
    """What ``topology declare`` did: warnings, the queues skipped (exit QUEUES_SKIPPED), or success."""
    for exchange, key, queue in declared.extra:
        click.echo(f"warning: binding {exchange} {key!r} -> {queue} is not part of the topology", err=True)
    if declared.skipped:
        click.echo(
            f"not declared, their node is down: {', '.join(declared.skipped)}; declared everything else: "
            "run it again once the node is back (docs/scaling.md)",
            err=True,
        )
        sys.exit(ExitCode.QUEUES_SKIPPED)
    click.echo("topology declared")


@click.command("check")
def check_command() -> None:
    """Compare the broker with the topology, changing nothing: arguments, policies, shards and the
    consistent-hash ring (where rabbitmq-diagnostics runs); exits 3 on a difference."""
    app = click.get_current_context().find_root().obj
    try:
        found = check(app.topology, Management(app.settings.management))
    except ManagementAPIError as exc:
        click.echo(f"management API: {exc}", err=True)
        sys.exit(ExitCode.MANAGEMENT_API_ERROR)
    for warning in found.warnings:
        click.echo(warning, err=True)
    if found.differences:
        print_differences("The broker differs from the topology:", found.differences, found.hints)
        sys.exit(ExitCode.TOPOLOGY_CONFLICT)
    for exchange, ring in found.rings.items():
        click.echo(f"ring of {exchange}: {len(ring)} buckets, bucket i is shard i")
    click.echo("topology matches")
