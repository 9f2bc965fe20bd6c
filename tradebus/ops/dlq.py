"""Dead-letter tooling: list what the dead-letter queues hold, and replay what is valid again.

A dead letter says why it died in one of two ways: tradebus's own headers (``x-tradebus-reason`` and the
original exchange, routing key and message id, tradebus/deadletter.py) when a stage gave up on it, or
RabbitMQ's ``x-death`` when the broker dead-lettered it (expired, over the length limit, rejected).

Listing takes messages without acknowledging them and closes the channel, which puts them back where they
were. Replaying re-validates each message and republishes it, confirmed, with a new message id that names
the old one, before acknowledging it; what is still invalid stays in the dead-letter queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu import Connection

from routing import LETRADE, Topology
from tradebus import headers as dl
from tradebus.codec import wire_bytes
from tradebus.consumer import stage_argument
from tradebus.encryption import Keyring
from tradebus.errors import InvalidMessage, Reason
from tradebus.health import queue_stats
from tradebus.letrade.messages import parse as parse_letrade
from tradebus.mastertrade.wire import parse_wire
from tradebus.publisher import send

#: What a replay does with a message.
REPLAYED, WOULD_REPLAY, STILL_INVALID, KEPT = "replayed", "would replay", "still invalid", "kept"
#: Dead letters a replay never sends again: what failed its signature check (a replay signed with the
#: operator's key would launder it), a message already refused as too old to act on, and one whose
#: sealed fields did not open (tampered, an unknown key, or a secret sent in plaintext).
NEVER_REPLAYED = frozenset(
    {
        Reason.UNSIGNED,
        Reason.UNTRUSTED_SIGNER,
        Reason.BAD_SIGNATURE,
        Reason.STALE_SIGNATURE,
        Reason.REPLAYED,
        Reason.STALE,
        Reason.UNDECRYPTABLE,
    }
)
#: What RabbitMQ expired or pushed out of a market-data queue is a stale price: replaying it trades on it.
STALE_WHEN_DEAD = frozenset({"expired", "maxlen"})


@dataclass(frozen=True)
class DeadLetter:
    """One message in a dead-letter queue, with why and where from."""

    queue: str
    origin_queue: str
    reason: str
    error: str
    exchange: str
    routing_key: str
    count: int
    dead_lettered_at: datetime | None
    message_id: str
    body: bytes
    content_type: str | None
    headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def retries(self) -> int:
        """The retries a stage spent on it before it gave up (0 for what the broker dead-lettered)."""
        try:
            return int(self.headers.get(dl.RETRIES) or 0)
        except (TypeError, ValueError):
            return 0

    @property
    def age_seconds(self) -> float | None:
        """Seconds since it was dead-lettered."""
        if self.dead_lettered_at is None:
            return None
        return (datetime.now(UTC) - self.dead_lettered_at).total_seconds()


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _payload(letter: DeadLetter) -> tuple[bytes, str | None]:
    """The bus message inside a dead letter, and its content type (a Celery retry carries it as its one
    argument)."""
    argument = stage_argument(letter.headers, letter.body, letter.content_type)
    if argument is not None:
        return wire_bytes(argument), "application/json"
    return letter.body, letter.content_type


def describe(topology: Topology, queue: str, message: Any) -> DeadLetter:
    """A dead letter as the broker handed it over."""
    headers = dict(message.headers or {})
    raw = wire_bytes(message.body)
    properties = message.properties or {}
    content_type = message.content_type
    if dl.REASON in headers:
        return DeadLetter(
            queue=queue,
            origin_queue=str(headers.get(dl.QUEUE, "")),
            reason=str(headers[dl.REASON]),
            error=str(headers.get(dl.ERROR, "")),
            exchange=str(headers.get(dl.ORIGINAL_EXCHANGE, "")),
            routing_key=str(headers.get(dl.ORIGINAL_ROUTING_KEY, "")),
            count=1,
            dead_lettered_at=_as_datetime(headers.get(dl.DEAD_LETTERED_AT)),
            message_id=str(headers.get(dl.ORIGINAL_MESSAGE_ID) or properties.get("message_id") or ""),
            body=raw,
            content_type=content_type,
            headers=headers,
        )
    deaths = headers.get("x-death") or [{}]
    # Newest first; a dead letter that then expired from its own DLQ names that DLQ first.
    death = next(
        (d for d in deaths if not str(d.get("queue", "")).startswith(topology.dead_letter_prefix)), deaths[0]
    )
    keys = death.get("routing-keys") or [""]
    return DeadLetter(
        queue=queue,
        origin_queue=str(death.get("queue", "")),
        reason=str(death.get("reason", "unknown")),
        error=f"dead-lettered by RabbitMQ ({death.get('reason', 'unknown')})",
        exchange=str(headers.get(dl.ORIGINAL_EXCHANGE) or death.get("exchange", "")),
        routing_key=str(headers.get(dl.ORIGINAL_ROUTING_KEY) or keys[0]),
        count=int(death.get("count", 1)),
        dead_lettered_at=_as_datetime(death.get("time")),
        message_id=str(properties.get("message_id") or headers.get("id") or ""),
        body=raw,
        content_type=content_type,
        headers=headers,
    )


def depth(connection: Connection, queue: str) -> int:
    """How many dead letters ``queue`` holds (0 when it does not exist)."""
    return queue_stats(connection, [queue])[queue].messages or 0


def peek(topology: Topology, connection: Connection, queue: str, limit: int) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``queue``, oldest first, left in the queue."""
    channel = connection.channel()
    try:
        taken: list[DeadLetter] = []
        while len(taken) < limit and (message := channel.basic_get(queue, no_ack=False)) is not None:
            taken.append(describe(topology, queue, message))
        return taken
    finally:
        channel.close()  # every message taken goes back, in its place


@dataclass(frozen=True)
class Replay:
    """What replaying one dead letter did."""

    letter: DeadLetter
    outcome: str
    detail: str
    new_message_id: str | None = None


def kept_back(topology: Topology, letter: DeadLetter) -> str | None:
    """Why ``letter`` must stay in its dead-letter queue whatever its content, or None."""
    if letter.reason in NEVER_REPLAYED:
        return f"{letter.reason}: not replayed; inspect it and publish a new message if it is genuine"
    if letter.reason in STALE_WHEN_DEAD and letter.origin_queue in topology.market_data_queues:
        return f"{letter.reason} market data is a stale price: not replayed"
    return None


def validated(
    topology: Topology,
    letter: DeadLetter,
    payload: bytes,
    content_type: str | None,
    keyring: Keyring | None = None,
) -> tuple[str, str, str]:
    """(type, exchange, routing key) of the message inside ``letter``, valid on ``topology``'s bus (its
    sealed fields open with ``keyring``), or the InvalidMessage that says why not. A Letrade message is
    read as its original key names it."""
    if topology.name == LETRADE:
        envelope = parse_letrade(payload, letter.routing_key, content_type, keyring)
        return envelope.type, envelope.exchange, envelope.routing_key
    message = parse_wire(payload, content_type, keyring)
    return message.type, message.exchange, message.routing_key


def destination(
    topology: Topology,
    letter: DeadLetter,
    payload: bytes,
    content_type: str | None,
    keyring: Keyring | None = None,
) -> tuple[str, str]:
    """Where a valid dead letter goes again: its original exchange and key, or straight to its queue.

    When the original route reaches other queues too (a fan-out), those subscribers processed it already;
    the replay then goes to the queue that failed it, through the retry exchange (keyed by queue name).
    """
    _, exchange, routing_key = validated(topology, letter, payload, content_type, keyring)
    origin = letter.origin_queue
    route = topology.route
    # A shard is reached by its whole group: which shard took it was the broker's hash of a header.
    if origin and not topology.reaches(exchange, routing_key, origin):
        raise InvalidMessage(f"its payload routes as {routing_key!r}, which never reaches {origin}")
    reached = route(letter.exchange, letter.routing_key) if letter.exchange else frozenset()
    if origin and reached != {origin}:
        return topology.retry.name, origin
    return letter.exchange or exchange, letter.routing_key or routing_key


def _replay_headers(letter: DeadLetter, payload_type: str | None) -> dict[str, Any]:
    kept = {
        k: v
        for k, v in letter.headers.items()
        if not k.startswith("x-")
        and k not in ("task", "id", "retries", "eta", "expires", "root_id", "parent_id")
    }
    return kept | {
        dl.REPLAY_OF: letter.message_id,
        dl.REPLAYED_FROM: letter.queue,
        dl.REPLAYED_AT: datetime.now(UTC).isoformat(),
        dl.ORIGINAL_EXCHANGE: letter.exchange,
        dl.ORIGINAL_ROUTING_KEY: letter.routing_key,
        **({dl.TYPE: payload_type} if payload_type else {}),
    }


def replay(
    app: Celery, connection: Connection, queue: str, limit: int, dry_run: bool = False
) -> list[Replay]:
    """Re-validate and republish up to ``limit`` dead letters of ``queue``; the rest stays."""
    topology = app.topology
    keyring = app.settings.encryption.keyring  # a sealed message is checked, and replayed as it is
    channel = connection.channel()
    results: list[Replay] = []
    try:
        while len(results) < limit and (message := channel.basic_get(queue, no_ack=False)) is not None:
            letter = describe(topology, queue, message)
            if (why := kept_back(topology, letter)) is not None:
                results.append(Replay(letter, KEPT, why))
                continue
            payload, content_type = _payload(letter)
            try:
                exchange, routing_key = destination(topology, letter, payload, content_type, keyring)
                kind = validated(topology, letter, payload, content_type, keyring)[0]
            except InvalidMessage as exc:
                results.append(Replay(letter, STILL_INVALID, f"{exc.reason}: {exc}"))
                continue
            target = f"{routing_key!r} on {exchange}"
            if dry_run:
                results.append(Replay(letter, WOULD_REPLAY, target))
                continue
            new_id = str(uuid.uuid4())
            send(
                app,
                payload,
                exchange=exchange,
                routing_key=routing_key,
                message_id=new_id,
                headers=_replay_headers(letter, kind),
                persistent=True,
                # Straight to its queue, it is verified against the route it names (stage.origin).
                signed_route=(letter.exchange or exchange, letter.routing_key or routing_key),
            )
            channel.basic_ack(message.delivery_tag)
            results.append(Replay(letter, REPLAYED, target, new_id))
    finally:
        channel.close()  # what was not replayed goes back, in its place
    return results


def queues_of(topology: Topology, name: str | None) -> list[str]:
    """The dead-letter queue ``name`` names (a DLQ, or the stage queue whose DLQ it is), or every DLQ."""
    names = [q.name for q in topology.dead_letter_queues]
    if name is None:
        return names
    for candidate in (name, topology.dead_letter_prefix + name):
        if candidate in names:
            return [candidate]
    raise KeyError(f"no dead-letter queue {name!r}; they are {', '.join(names)}")
