"""Plain-text tables of the topology and of the live broker, for the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kombu import Connection

from routing import EXCHANGES, QUEUES, Hop
from tradebus.topology import queue_kind
from workers.profiles import POOLS


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows under headers, in aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _arguments(args: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted((args or {}).items())) or "-"


def topology_tables(stage_names: dict[str, str]) -> str:
    """Three tables: the exchanges, every queue (arguments, stage, pool), every binding."""
    exchanges = table(
        ["exchange", "type", "arguments"], [(e.name, e.type, _arguments(e.arguments)) for e in EXCHANGES]
    )
    queue_rows = []
    for q in QUEUES:
        profile = POOLS.get(q.name)
        pool = f"{profile.concurrency} x prefetch {profile.prefetch_multiplier}" if profile else "-"
        queue_rows.append(
            (q.name, queue_kind(q.name), _arguments(q.queue_arguments), stage_names.get(q.name, "-"), pool)
        )
    queues = table(["queue", "kind", "arguments", "stage", "pool"], queue_rows)
    binding_rows = sorted(
        (b.exchange.name, b.routing_key or "(fanout)", q.name) for q in QUEUES for b in q.bindings
    )
    bindings = table(["exchange", "routing key", "queue"], binding_rows)
    return f"{exchanges}\n\n{queues}\n\n{bindings}"


def route_report(hops: list[Hop]) -> str:
    """Which exchanges a key passed through and the queues it reached."""
    lines = []
    for hop in hops:
        reached = ", ".join(hop.queues) if hop.queues else "no binding matched"
        lines.append(f"{hop.exchange}: {reached}")
    return "\n".join(lines)


def queue_depths(connection: Connection) -> list[tuple[str, str, Any, Any]]:
    """(queue, kind, messages, consumers) for every queue, read with passive declares."""
    rows: list[tuple[str, str, Any, Any]] = []
    channel = connection.channel()
    for q in QUEUES:
        try:
            _, messages, consumers = channel.queue_declare(queue=q.name, passive=True)
        except connection.channel_errors:
            channel = connection.channel()  # a missing queue closes the channel
            messages, consumers = "missing", "-"
        rows.append((q.name, queue_kind(q.name), messages, consumers))
    channel.close()
    return rows
