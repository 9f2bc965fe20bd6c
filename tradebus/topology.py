"""Operations on the declared topology: declare it, diff it against a live broker, export it, show it."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from amqp.exceptions import PreconditionFailed
from kombu import Connection, Exchange, Queue

from routing import Topology
from tradebus.errors import ManagementAPIError, TopologyConflict
from tradebus.management import Management

#: One difference: (object, attribute, live value, wanted value).
Difference = tuple[str, str, object, object]
UNSET = "(unset)"

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']+)'"
    r" in vhost '[^']*': received (?P<wanted>.+?) but current is (?P<live>.+)$"
)


def _exchange_spec(exchange: Exchange) -> dict[str, Any]:
    return {
        "type": exchange.type,
        "durable": bool(exchange.durable),
        "auto_delete": bool(exchange.auto_delete),
        "arguments": dict(exchange.arguments or {}),
    }


def _queue_spec(queue: Queue) -> dict[str, Any]:
    return {
        "durable": bool(queue.durable),
        "auto_delete": bool(queue.auto_delete),
        "arguments": dict(queue.queue_arguments or {}),
    }


def _diff_spec(name: str, live: dict[str, Any], wanted: dict[str, Any]) -> list[Difference]:
    rows: list[Difference] = []
    for attr in sorted(set(wanted) - {"arguments"}):
        if live.get(attr) != wanted[attr]:
            rows.append((name, attr, live.get(attr, UNSET), wanted[attr]))
    live_args, wanted_args = live.get("arguments") or {}, wanted.get("arguments") or {}
    for arg in sorted(set(live_args) | set(wanted_args)):
        if live_args.get(arg) != wanted_args.get(arg):
            rows.append((name, arg, live_args.get(arg, UNSET), wanted_args.get(arg, UNSET)))
    return rows


def diff(
    topology: Topology, live_exchanges: list[dict[str, Any]], live_queues: list[dict[str, Any]]
) -> list[Difference]:
    """Differences between live objects (as the management API lists them) and the topology.

    Objects missing from the broker are not differences: declaring creates them.
    """
    exchanges = {e["name"]: e for e in live_exchanges}
    queues = {q["name"]: q for q in live_queues}
    rows: list[Difference] = []
    for exchange in topology.exchanges:
        if exchange.name in exchanges:
            rows += _diff_spec(
                f"exchange {exchange.name}", exchanges[exchange.name], _exchange_spec(exchange)
            )
    for queue in topology.queues:
        if queue.name in queues:
            rows += _diff_spec(f"queue {queue.name}", queues[queue.name], _queue_spec(queue))
    return rows


def extra_bindings(topology: Topology, live_bindings: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Live bindings on tradebus's exchanges that the topology does not declare: (exchange, key, queue).

    Declaring never removes them, and one of them can change the routing contract (a catch-all on
    ``mastertrade.trading`` would take live signals away from ``mastertrade.trading.live``).
    """
    ours = {e.name for e in topology.exchanges}
    wanted = {(b.exchange.name, b.routing_key or "", q.name) for q in topology.queues for b in q.bindings}
    live = {(b["source"], b["routing_key"], b["destination"]) for b in live_bindings if b["source"] in ours}
    return sorted(live - wanted)


def conflict_from_error(exc: PreconditionFailed) -> TopologyConflict:
    """The readable diff hidden in RabbitMQ's PRECONDITION_FAILED text."""
    match = _INEQUIVALENT.search(str(exc))
    if match is None:
        return TopologyConflict([("broker", "precondition", str(exc), "declarable topology")])
    row = (f"{match['kind']} {match['name']}", match["arg"], match["live"], match["wanted"])
    return TopologyConflict([row])


def declare(topology: Topology, connection: Connection) -> None:
    """Declare every exchange, queue and binding; idempotent. Raises TopologyConflict on a mismatch."""
    channel = connection.channel()
    try:
        for exchange in topology.exchanges:
            exchange(channel).declare()
        for queue in topology.queues:
            queue(channel).declare()
    except PreconditionFailed as exc:
        raise conflict_from_error(exc) from exc
    finally:
        with contextlib.suppress(Exception):  # the broker may already have closed it
            channel.close()


def apply_policies(topology: Topology, management: Management) -> None:
    """Create or update the topology's policies (routing/mastertrade/policies.py); idempotent."""
    live = {p["name"]: p for p in management.policies()}
    for policy in topology.policies:
        wanted = policy.as_json()
        current = live.get(policy.name)
        if current is None or any(current.get(k) != v for k, v in wanted.items()):
            management.put_policy(policy.name, wanted)


def check_and_declare(
    topology: Topology, connection: Connection, management: Management | None
) -> list[tuple[str, str, str]]:
    """Compare with the live broker first (when its API answers), then declare, then apply the policies.

    With the management API, every conflicting argument is reported at once and nothing is touched;
    without it, RabbitMQ's first PRECONDITION_FAILED is translated into a diff, and the dead-letter
    policies cannot be applied (ManagementAPIError, after everything else is declared). Returns the live
    bindings the topology does not declare, for the caller to warn about.
    """
    reachable = management is not None and management.reachable()
    extra: list[tuple[str, str, str]] = []
    if management is not None and reachable:
        rows = diff(topology, management.exchanges(), management.queues())
        if rows:
            raise TopologyConflict(rows)
        extra = extra_bindings(topology, management.bindings())
    declare(topology, connection)
    if not topology.policies:  # Letrade: every queue dead-letters by its own arguments, nothing to apply
        return extra
    if management is None or not reachable:
        where = management.settings.base_url if management is not None else "(none configured)"
        raise ManagementAPIError(
            f"declared every exchange, queue and binding, but the management API at {where} did not "
            "answer, so the dead-letter policies are not applied: what market-data queues expire would "
            "be dropped"
        )
    apply_policies(topology, management)
    return extra


def definitions(topology: Topology, vhost: str = "/") -> dict[str, Any]:
    """The topology as RabbitMQ definitions, for ``rabbitmqctl import_definitions``."""
    exchanges = [
        {"name": e.name, "vhost": vhost, "internal": False, **_exchange_spec(e)} for e in topology.exchanges
    ]
    queues = [{"name": q.name, "vhost": vhost, **_queue_spec(q)} for q in topology.queues]
    bindings = [
        {
            "source": b.exchange.name,
            "vhost": vhost,
            "destination": q.name,
            "destination_type": "queue",
            "routing_key": b.routing_key,
            "arguments": {},
        }
        for q in topology.queues
        # Kombu keeps bindings in a set: sort them, so the export is the same file on every run.
        for b in sorted(q.bindings, key=lambda b: (b.exchange.name, b.routing_key or ""))
    ]
    policies = [{"vhost": vhost, "name": p.name, **p.as_json()} for p in topology.policies]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings, "policies": policies}


def queue_kind(topology: Topology, name: str) -> str:
    """``stage``, ``task``, ``dead-letter`` or ``unrouted``."""
    if name in {q.name for q in topology.stage_queues}:
        return "stage"
    if name in {q.name for q in topology.task_queues}:
        return "task"
    if name in {q.name for q in topology.dead_letter_queues}:
        return "dead-letter"
    assert name in {q.name for q in topology.unrouted_queues}
    return "unrouted"
