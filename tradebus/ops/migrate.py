"""Move a live broker's queues to the type the topology wants: ``tradebus topology migrate``.

RabbitMQ cannot change a queue's type in place (``x-queue-type`` is fixed at declaration), so each queue
whose live type differs from the topology's (classic -> quorum under ``TRADEBUS_QUEUE_TYPE=quorum``, or
back) is rebuilt under the same name while publishers keep publishing (docs/scaling.md, "Moving to quorum
queues"):

1. declare ``<queue>.migrating`` (the new type, no TTL or limit: nothing expires or is dropped there) and
   bind it like the queue; 2. unbind the queue: new messages now reach the temporary queue only;
3. move every message of the queue to it (confirmed publish, then ack); 4. delete the queue (if empty) and
   declare it anew, with its bindings; 5. unbind the temporary queue; 6. move its messages back; delete it.

At every moment at least one of the two is bound, so no message is routed nowhere; a message published in
the instant both are bound reaches both (the same message id twice: the stages drop the repeat and the
executor fills a ``request_id`` once, docs/reliability.md). A message is acknowledged where it was only
after the broker confirmed its copy, so a crash mid-way leaves it in one queue or both, never in none.
The queue's consumers must be stopped first (a consumer would be cancelled by the delete).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqp import Message
from kombu import Connection, Queue
from kombu.exceptions import OperationalError

from routing import Topology
from routing.model import CLASSIC, QUEUE_TYPE_ARGUMENT
from tradebus.application import TradebusCelery
from tradebus.errors import BrokerUnreachable, ManagementAPIError, MigrationBlocked
from tradebus.management import Management
from tradebus.ops.exits import ExitCode
from tradebus.redeliveries import DELIVERY_COUNT
from tradebus.topology import apply_policies, declare

TEMPORARY_SUFFIX = ".migrating"
#: Policies tradebus creates (routing/): one left over from the other queue type is removed.
OWN_POLICY_PREFIXES = ("tradebus-dead-letter.", "tradebus-quorum.", "tradebus-alternate-exchange.")


@dataclass(frozen=True)
class Move:
    """One queue moved to another type, and how many messages travelled with it."""

    queue: str
    live_type: str
    wanted_type: str
    moved: int


def wanted_type(queue: Queue) -> str:
    """The type the topology declares ``queue`` with."""
    return str((queue.queue_arguments or {}).get(QUEUE_TYPE_ARGUMENT) or CLASSIC)


def plan(topology: Topology, live_queues: list[dict[str, object]]) -> list[tuple[Queue, str]]:
    """The topology's queues whose live type differs from the wanted one, with their live type."""
    live = {str(q["name"]): str(q.get("type") or CLASSIC) for q in live_queues}
    return [(q, live[q.name]) for q in topology.queues if q.name in live and live[q.name] != wanted_type(q)]


def move_messages(connection: Connection, source: str, target: str) -> int:
    """Move every message of ``source`` to ``target``: each copy is confirmed before its original is
    acknowledged. Returns how many moved.

    A copy leaves ``source``'s delivery count (``x-delivery-count``, a quorum queue's) behind: it counts
    deliveries from ``source``, and on a classic ``target`` it would pose as a count the broker keeps.
    """
    channel = connection.channel()
    moved = 0
    try:
        while (message := channel.basic_get(source, no_ack=False)) is not None:
            copy = Message(message.body, **_without_delivery_count(message.properties))
            channel.basic_publish_confirm(copy, exchange="", routing_key=target)
            channel.basic_ack(message.delivery_tag)
            moved += 1
    finally:
        channel.close()
    return moved


def _without_delivery_count(properties: dict[str, Any]) -> dict[str, Any]:
    """``properties`` with ``x-delivery-count`` left out of their headers."""
    headers = properties.get("application_headers")
    if not headers or DELIVERY_COUNT not in headers:
        return properties
    kept = {name: value for name, value in headers.items() if name != DELIVERY_COUNT}
    return {**properties, "application_headers": kept}


def _delete_drained(channel: Any, name: str) -> None:
    """Delete ``name``, unbound and drained, after checking it is empty (quorum queues refuse ``if-empty``;
    nothing can reach an unbound queue in between)."""
    _, count, _ = channel.queue_declare(name, passive=True)
    if count:
        raise MigrationBlocked(f"{name} still holds {count} messages; nothing was deleted")
    channel.queue_delete(name)


def _live_bindings(management: Management, queue: str) -> set[tuple[str, str]]:
    return {
        (str(b["source"]), str(b["routing_key"]))
        for b in management.bindings()
        if b.get("destination") == queue and b.get("destination_type") == "queue" and b.get("source")
    }


def migrate_queue(connection: Connection, management: Management, queue: Queue, live_type: str) -> Move:
    """Rebuild ``queue`` as the topology declares it, with its messages, under publishers' feet."""
    temporary = f"{queue.name}{TEMPORARY_SUFFIX}"
    wanted = wanted_type(queue)
    old = _live_bindings(management, queue.name)
    new = {(b.exchange.name, b.routing_key or "") for b in queue.bindings}
    channel = connection.channel()
    try:
        arguments = {} if wanted == CLASSIC else {QUEUE_TYPE_ARGUMENT: wanted}
        channel.queue_declare(temporary, durable=True, auto_delete=False, arguments=arguments)
        for exchange, key in sorted(old | new):
            channel.queue_bind(temporary, exchange, key)
        for exchange, key in sorted(old):
            channel.queue_unbind(queue.name, exchange, key)
        moved = move_messages(connection, queue.name, temporary)
        _delete_drained(channel, queue.name)
        queue.bind(channel).declare()
        for exchange, key in sorted(old | new):
            channel.queue_unbind(temporary, exchange, key)
        move_messages(connection, temporary, queue.name)
        _delete_drained(channel, temporary)
    finally:
        channel.close()
    return Move(queue.name, live_type, wanted, moved)


def migrate(
    topology: Topology,
    connection: Connection,
    management: Management,
    *,
    on_move: Callable[[Move], None] = lambda move: None,
) -> list[Move]:
    """Move every queue whose type differs, then declare the rest of the topology and its policies and
    remove tradebus's policies the topology no longer has. MigrationBlocked when one is consumed."""
    todo = plan(topology, management.queues())
    # Consumers counted by the broker itself (a passive declare), not the API's statistics, which lag.
    channel = connection.channel()
    try:
        consumed = [queue.name for queue, _ in todo if channel.queue_declare(queue.name, passive=True)[2]]
    finally:
        channel.close()
    if consumed:
        raise MigrationBlocked(
            f"stop the workers of {', '.join(consumed)} first: a queue changes type by being deleted"
        )
    moves = []
    for queue, live_type in todo:
        moves.append(migrate_queue(connection, management, queue, live_type))
        on_move(moves[-1])
    declare(topology, connection)
    apply_policies(topology, management)
    ours = {p.name for p in topology.policies}
    for policy in management.policies():
        name = str(policy["name"])
        if name.startswith(OWN_POLICY_PREFIXES) and name not in ours:
            management.delete_policy(name)
    return moves


def command(
    app: TradebusCelery, connect: Callable[[], Connection], *, dry_run: bool, echo: Callable[..., None]
) -> ExitCode:
    """``tradebus topology migrate [--dry-run]``: what it prints, and its exit code."""
    management = Management(app.settings.management)

    def moved(move: Move) -> None:
        echo(f"{move.queue}: {move.live_type} -> {move.wanted_type}, {move.moved} messages moved")

    try:
        if dry_run:
            for queue, live_type in plan(app.topology, management.queues()):
                echo(f"{queue.name}: {live_type} -> {wanted_type(queue)} (dry run)")
            return ExitCode.OK
        with connect() as conn:
            conn.ensure_connection(max_retries=1)
            moves = migrate(app.topology, conn, management, on_move=moved)
    except MigrationBlocked as exc:
        echo(str(exc), err=True)
        return ExitCode.TOPOLOGY_CONFLICT
    except (BrokerUnreachable, OperationalError, OSError) as exc:
        echo(f"cannot reach the broker: {exc}", err=True)
        return ExitCode.BROKER_UNREACHABLE
    except ManagementAPIError as exc:
        echo(f"management API: {exc}", err=True)
        return ExitCode.MANAGEMENT_API_ERROR
    echo(f"topology declared; {len(moves)} queues changed type")
    return ExitCode.OK
