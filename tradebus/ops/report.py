"""Plain-text tables of the topology and of the live broker, for the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery
from kombu import Connection

from routing import Hop, Topology
from routing.consistent_hash import header_bucket
from routing.model import THREADS
from tradebus.health import queue_stats
from tradebus.ops import dlq
from tradebus.topology import queue_kind


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows under headers, in aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _arguments(args: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted((args or {}).items())) or "-"


def topology_tables(topology: Topology, stage_names: dict[str, str]) -> str:
    """Three tables: the exchanges, every queue (arguments, policy, stage, pool), every binding."""
    policy = {(p.apply_to, p.target): _arguments(p.definition) for p in topology.policies}
    exchanges = table(
        ["exchange", "type", "arguments", "policy"],
        [
            (e.name, e.type, _arguments(e.arguments), policy.get(("exchanges", e.name), "-"))
            for e in topology.exchanges
        ],
    )
    queue_rows = []
    for q in topology.queues:
        profile = topology.pools.get(q.name)
        threads = " threads" if profile and profile.pool == THREADS else ""  # else processes (prefork)
        pool = f"{profile.concurrency}{threads} x prefetch {profile.prefetch_multiplier}" if profile else "-"
        queue_rows.append(
            (
                q.name,
                queue_kind(topology, q.name),
                _arguments(q.queue_arguments),
                policy.get(("queues", q.name), "-"),
                stage_names.get(q.name, "-"),
                pool,
            )
        )
    queues = table(["queue", "kind", "arguments", "policy", "stage", "pool"], queue_rows)
    binding_rows = sorted(
        (b.exchange.name, b.routing_key or "(fanout)", q.name) for q in topology.queues for b in q.bindings
    )
    binding_rows += [
        (b.source, b.routing_key, f"exchange {b.destination}") for b in topology.exchange_bindings
    ]
    bindings = table(["exchange", "routing key", "queue"], binding_rows)
    return f"{exchanges}\n\n{queues}\n\n{bindings}{_shard_table(topology)}"


def _shard_table(topology: Topology) -> str:
    """Each sharded queue's shards and how a message picks one (empty without shards)."""
    rows = [
        (s.queue, s.exchange, f"header {s.header}", len(s.queues), f"{s.queues[0]} .. {s.queues[-1]}")
        for s in topology.shards
    ]
    if not rows:
        return ""
    return "\n\n" + table(["sharded queue", "consistent-hash exchange", "hashes", "shards", "queues"], rows)


def route_report(hops: list[Hop]) -> str:
    """Which exchanges a key passed through and the queues it reached."""
    lines = []
    for hop in hops:
        reached = [*hop.queues, *(f"exchange {e}" for e in hop.exchanges)]
        line = f"{hop.exchange}: {', '.join(reached) if reached else 'no binding matched'}"
        if hop.hashed is not None:
            what, bucket, buckets = hop.hashed
            line += f" (shard {bucket} of {buckets}: consistent hash of {what})"
            if what.startswith("header "):
                header = what.split()[1].partition("=")[0]
                line += (
                    f"\n  a publisher that sets no {header} header (plain JSON) reaches shard "
                    f"{header_bucket(None, buckets)}: hash of 'undefined'"
                )
        lines.append(line)
    return "\n".join(lines)


def queue_depths(topology: Topology, connection: Connection) -> list[tuple[str, str, Any, Any]]:
    """(queue, kind, messages, consumers) for every queue, read with passive declares."""
    stats = queue_stats(connection, [q.name for q in topology.queues])
    return [
        (
            name,
            queue_kind(topology, name),
            "missing" if s.messages is None else s.messages,
            "-" if s.consumers is None else s.consumers,
        )
        for name, s in stats.items()
    ]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def dead_letter_report(
    app: Celery, connection: Connection, names: list[str], limit: int, show_empty: bool
) -> str:
    """Each dead-letter queue's depth and its first ``limit`` dead letters, left in place."""
    parts = []
    for name in names:
        total = dlq.depth(connection, name)
        if not total and not show_empty:
            continue
        letters = dlq.peek(app.topology, connection, name, limit)
        shown = f", first {len(letters)}" if total > len(letters) else ""
        rows = [
            (
                d.reason,
                d.exchange or "-",
                d.routing_key or "-",
                d.count,
                d.retries,
                _age(d.age_seconds),
                d.error[:60],
            )
            for d in letters
        ]
        header = f"{name}: {total} dead letter(s){shown}"
        columns = ["reason", "exchange", "routing key", "count", "retries", "age", "error"]
        body = table(columns, rows) if rows else ""
        parts.append(f"{header}\n{body}".rstrip())
    return "\n\n".join(parts) if parts else "no dead letters"


def replay_report(name: str, results: list[dlq.Replay]) -> str:
    """What a replay did to each dead letter."""
    rows = [
        (r.letter.message_id or "-", r.letter.reason, r.outcome, r.detail, r.new_message_id or "-")
        for r in results
    ]
    listing = (
        table(["message id", "reason", "outcome", "where / why", "new message id"], rows) if rows else ""
    )
    replayed = sum(r.outcome == dlq.REPLAYED for r in results)
    return f"{listing}\n{replayed} replayed, {len(results) - replayed} left in {name}".lstrip()
