"""Operations on the declared topology: declare it, diff it against a live broker, export it, show it.

Exchanges and queues are declared with the seed's own arguments only; what tradebus adds (alternate
exchanges, dead-lettering) is applied as RabbitMQ policies after declaring (docs/topology.md).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

from amqp.exceptions import NotFound, PreconditionFailed
from kombu import Connection, Exchange, Queue

from routing import Policy, Topology
from routing.match import ALTERNATE_EXCHANGE
from tradebus.errors import ManagementAPIError, TopologyConflict
from tradebus.management import Management

#: How RabbitMQ refuses to declare a durable classic queue whose node is down (a cluster's other nodes).
HOME_NODE_DOWN = "is down or inaccessible"

#: One difference: (object, attribute, live value, wanted value).
Difference = tuple[str, str, object, object]
UNSET = "(unset)"

#: What to do about an exchange an older tradebus declared with an ``alternate-exchange`` argument.
ALTERNATE_ARGUMENT_HINT = (
    "An exchange carries an alternate-exchange argument: tradebus now sets alternate exchanges by policy, "
    "so that services declaring the seed's way (no arguments) can start. An exchange's arguments cannot be "
    "changed: delete it (rabbitmqctl delete_exchange / the management UI), then run `tradebus topology "
    "declare` again; it re-declares the exchange and the bindings of tradebus's queues (bindings others "
    "made on it must be made again). docs/topology.md, 'Alternate exchanges are policies'."
)

#: The attribute of a reshard conflict's rows (``reshard_conflicts``).
SHARDS_ATTRIBUTE = "shards"
#: What to do when the broker is sharded another way than the topology (docs/operations.md, "Resharding").
RESHARD_HINT = (
    "The broker's market data for the strategy is sharded another way than TRADEBUS_MARKET_DATA_SHARDS "
    "says: declaring would leave messages (and new ones) in queues nobody consumes, or move symbols to "
    "other shards under queued ticks. Either set the variable to what the broker has, or reshard: drain "
    "the shards, stop their workers, delete the exchange mastertrade.market.strategy (and the queues no "
    "longer wanted), then declare again and start one worker per new shard. docs/operations.md, "
    "'Resharding'."
)
#: What to do when a live queue is of another type than the topology's (TRADEBUS_QUEUE_TYPE changed).
QUEUE_TYPE_HINT = (
    "A queue's type (x-queue-type) cannot be changed in place: stop the workers of the queues listed, then "
    "run `tradebus topology migrate`, which rebuilds each under its name with its messages while publishers "
    "go on (docs/scaling.md, 'Moving to quorum queues')."
)

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


def _overridden_keys(policy: Policy, live: dict[str, Any]) -> list[str]:
    """The keys of ``policy`` that the live policy ``live`` (another one) would take away from its object.

    RabbitMQ applies one policy per object, the highest priority's: ``live`` wins over ours when it applies
    to the same kind of object, its pattern matches our object's name and its priority is not lower.
    """
    if live.get("apply-to", "all") not in (policy.apply_to, "all"):
        return []
    if int(live.get("priority") or 0) < policy.priority:
        return []
    try:
        if re.search(str(live.get("pattern", "")), policy.target) is None:
            return []
    except re.error:
        return []
    definition = live.get("definition") or {}
    return sorted(k for k, v in policy.definition.items() if definition.get(k) != v)


def policy_diff(topology: Topology, live_policies: list[dict[str, Any]]) -> list[Difference]:
    """Policies of others that would replace one of ours without repeating its keys.

    Our own policies, by name, are not differences: applying them updates them.
    """
    ours = {p.name for p in topology.policies}
    rows: list[Difference] = []
    for policy in topology.policies:
        for live in live_policies:
            if live.get("name") in ours:
                continue
            for key in _overridden_keys(policy, live):
                value = (live.get("definition") or {}).get(key, UNSET)
                where = f"{value} (policy {live['name']}, priority {live.get('priority')})"
                rows.append((f"{policy.apply_to[:-1]} {policy.target}", key, where, policy.definition[key]))
    return rows


def diff(
    topology: Topology,
    live_exchanges: list[dict[str, Any]],
    live_queues: list[dict[str, Any]],
    live_policies: list[dict[str, Any]] | None = None,
) -> list[Difference]:
    """Differences between live objects (as the management API lists them) and the topology.

    Objects missing from the broker are not differences: declaring creates them. With ``live_policies``,
    another policy that would take the place of one of ours on one of our objects is one too.
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
    return rows + policy_diff(topology, live_policies or [])


def extra_bindings(topology: Topology, live_bindings: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Live bindings on tradebus's exchanges that the topology does not declare: (exchange, key, queue).

    Declaring never removes them, and one of them can change the routing contract (a catch-all on
    ``mastertrade.trading`` would take live signals away from ``mastertrade.trading.live``).
    """
    ours = {e.name for e in topology.exchanges}
    wanted = {(b.exchange.name, b.routing_key or "", q.name) for q in topology.queues for b in q.bindings}
    wanted |= {(b.source, b.routing_key, b.destination) for b in topology.exchange_bindings}
    live = {(b["source"], b["routing_key"], b["destination"]) for b in live_bindings if b["source"] in ours}
    return sorted(live - wanted)


def reshard_conflicts(topology: Topology, live_bindings: list[dict[str, Any]]) -> list[Difference]:
    """Where the broker is sharded another way than the topology: the replaced queue still bound (off ->
    N), shards still bound to the consistent-hash exchange or it to its source (N -> off), or another set
    of shards bound (N -> M). Declaring over any of these strands messages or moves symbols between shards.
    """
    rows: list[Difference] = []
    for queue, exchange in topology.shardable.items():
        shards = topology.sharded.get(queue)
        wanted = set(shards.queues) if shards else set()
        bound = {b["destination"] for b in live_bindings if b["source"] == exchange}
        into = [b["source"] for b in live_bindings if b["destination"] == exchange]
        # The default exchange ("") binds every queue to its name; any other binding routes into it.
        plain = sorted(
            f"{b['source']} {b['routing_key']!r}"
            for b in live_bindings
            if b["destination"] == queue and b["source"]
        )
        if wanted and plain:
            rows.append(
                (
                    f"queue {queue}",
                    SHARDS_ATTRIBUTE,
                    f"bound: {', '.join(plain)}",
                    f"replaced by {len(wanted)} shards",
                )
            )
        if not wanted and (bound or into):
            live = f"{len(bound)} bound" + (f", bound from {', '.join(sorted(into))}" if into else "")
            rows.append((f"exchange {exchange}", SHARDS_ATTRIBUTE, live, "none (unsharded)"))
        if wanted and bound and bound != wanted:
            rows.append(
                (
                    f"exchange {exchange}",
                    SHARDS_ATTRIBUTE,
                    f"{len(bound)}: {', '.join(sorted(bound))}",
                    f"{len(wanted)}",
                )
            )
    return rows


def has_reshard(differences: list[Difference]) -> bool:
    """Whether ``differences`` hold a reshard conflict (see RESHARD_HINT)."""
    return any(arg == SHARDS_ATTRIBUTE for _, arg, _, _ in differences)


def has_alternate_argument(differences: list[Difference]) -> bool:
    """Whether a live exchange holds an ``alternate-exchange`` argument (see ALTERNATE_ARGUMENT_HINT)."""
    return any(
        obj.startswith("exchange ") and arg == ALTERNATE_EXCHANGE and live not in (UNSET, "none")
        for obj, arg, live, _ in differences
    )


def has_queue_type_change(differences: list[Difference]) -> bool:
    """Whether a live queue has another type than the topology's (see QUEUE_TYPE_HINT)."""
    return any(obj.startswith("queue ") and arg == "x-queue-type" for obj, arg, _, _ in differences)


def conflict_hints(differences: list[Difference]) -> list[str]:
    """What to do about ``differences`` that redeclaring cannot fix (an argument, a queue's type, a
    reshard)."""
    return [
        hint
        for hint, applies in (
            (ALTERNATE_ARGUMENT_HINT, has_alternate_argument(differences)),
            (QUEUE_TYPE_HINT, has_queue_type_change(differences)),
            (RESHARD_HINT, has_reshard(differences)),
        )
        if applies
    ]


def conflict_from_error(exc: PreconditionFailed) -> TopologyConflict:
    """The readable diff hidden in RabbitMQ's PRECONDITION_FAILED text."""
    match = _INEQUIVALENT.search(str(exc))
    if match is None:
        return TopologyConflict([("broker", "precondition", str(exc), "declarable topology")])
    row = (f"{match['kind']} {match['name']}", match["arg"], match["live"], match["wanted"])
    return TopologyConflict([row])


def declare(topology: Topology, connection: Connection) -> list[str]:
    """Declare every exchange, queue and binding; idempotent. Raises TopologyConflict on a mismatch.

    Returns the queues that could not be declared because their node is down: on a cluster, a classic
    queue lives on one node and cannot be declared (nor used) while that node is away (docs/scaling.md);
    the rest of the topology still is, so a worker of another queue reconnects and goes on.
    """
    down: list[str] = []
    channel = connection.channel()
    try:
        for exchange in topology.exchanges:
            exchange(channel).declare()
        for binding in topology.exchange_bindings:
            channel.exchange_bind(
                destination=binding.destination, source=binding.source, routing_key=binding.routing_key
            )
        # In order: a consistent-hash exchange hands out its buckets in the order its queues are bound.
        for queue in topology.queues:
            try:
                queue(channel).declare()
            except NotFound as exc:
                if HOME_NODE_DOWN not in str(exc):
                    raise
                down.append(queue.name)
                channel = connection.channel()  # the broker closed the channel with the error
    except PreconditionFailed as exc:
        raise conflict_from_error(exc) from exc
    finally:
        with contextlib.suppress(Exception):  # the broker may already have closed it
            channel.close()
    return down


def apply_policies(topology: Topology, management: Management) -> None:
    """Create or update the topology's policies (alternate exchanges, dead-lettering); idempotent."""
    live = {p["name"]: p for p in management.policies()}
    for policy in topology.policies:
        wanted = policy.as_json()
        current = live.get(policy.name)
        if current is None or any(current.get(k) != v for k, v in wanted.items()):
            management.put_policy(policy.name, wanted)


@dataclass(frozen=True)
class Declared:
    """What ``check_and_declare`` found: the live bindings the topology does not declare (to warn about),
    and the queues it could not declare because their node is down (``declare``)."""

    extra: list[tuple[str, str, str]]
    skipped: list[str]


def check_and_declare(topology: Topology, connection: Connection, management: Management | None) -> Declared:
    """Compare with the live broker first (when its API answers), then declare, then apply the policies.

    With the management API, every conflicting argument (and a reshard: ``reshard_conflicts``) is
    reported at once and nothing is touched;
    without it, RabbitMQ's first PRECONDITION_FAILED is translated into a diff, and the policies (alternate
    exchanges, dead-lettering) cannot be applied (ManagementAPIError, after everything else is declared).
    Returns the live bindings the topology does not declare and the queues skipped (their node is down).
    """
    reachable = management is not None and management.reachable()
    extra: list[tuple[str, str, str]] = []
    if management is not None and reachable:
        bindings = management.bindings()
        rows = diff(topology, management.exchanges(), management.queues(), management.policies())
        rows += reshard_conflicts(topology, bindings)
        if rows:
            raise TopologyConflict(rows)
        extra = extra_bindings(topology, bindings)
    declared = Declared(extra, declare(topology, connection))
    if not topology.policies:
        return declared
    if management is None or not reachable:
        where = management.settings.base_url if management is not None else "(none configured)"
        raise ManagementAPIError(
            f"declared every exchange, queue and binding, but the management API at {where} did not "
            "answer, so the policies are not applied: without the alternate exchanges an unroutable "
            "message is dropped, and without the dead-letter policies so is what a queue expires"
        )
    apply_policies(topology, management)
    return declared


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
    ] + [
        {
            "source": b.source,
            "vhost": vhost,
            "destination": b.destination,
            "destination_type": "exchange",
            "routing_key": b.routing_key,
            "arguments": {},
        }
        for b in topology.exchange_bindings
    ]
    policies = [{"vhost": vhost, "name": p.name, **p.as_json()} for p in topology.policies]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings, "policies": policies}


def queue_kind(topology: Topology, name: str) -> str:
    """``stage``, ``task``, ``dead-letter``, ``unrouted`` or ``delay`` (a retry's wait, quorum topology)."""
    if name in {q.name for q in topology.stage_queues}:
        return "stage"
    if name in {q.name for q in topology.task_queues}:
        return "task"
    if name in {q.name for q in topology.dead_letter_queues}:
        return "dead-letter"
    if name in {q.name for q in topology.delay_queues}:
        return "delay"
    assert name in {q.name for q in topology.unrouted_queues}
    return "unrouted"
