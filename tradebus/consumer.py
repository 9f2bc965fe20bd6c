"""The worker's consumer: the queue a message arrives on decides which stage task runs it.

MasterTrade services publish plain JSON in the documented formats, and one message fans out to several
queues (a candle reaches ``market_data``, ``strategy_market_data`` and ``executor_market_data``), so a task
name inside the message cannot say which stage should run it. Before Celery looks at a delivery, this
consumer finds the queue it came from (Kombu keeps the consumer tag of every queue it consumes) and turns the
delivery into a Celery protocol-2 task message for that queue's stage, whose only argument is the raw body.
Deliveries on queues without a stage (Celery's own task queues) pass through as is.

Celery itself would acknowledge and drop what it cannot decode (a pickled body, a malformed task message);
here such a delivery is handed to the stage as raw bytes, with its content type, and the stage
dead-letters it with the reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from celery.worker.consumer import Consumer
from kombu.message import Message

from routing import topic_matches
from tradebus import batching
from tradebus.autodeclare import declare_topology
from tradebus.batching import Batcher
from tradebus.codec import wire_bytes
from tradebus.headers import CONTENT_TYPE, ORIGINAL_ROUTING_KEY
from tradebus.registry import stages_of_queues

#: The embed part of a protocol-2 body: no callbacks, no chain, no chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Headers that Celery or Kombu read as task metadata or body encoding; a plain message's own headers must
#: not set them (``compression`` would make Kombu try to decompress the converted body).
_PROTOCOL_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
        "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "replaced_task_nesting",
        "ignore_result", "stamped_headers", "stamps", "compression",
    }
)  # fmt: skip


def stage_argument(headers: Mapping[str, Any], body: str | bytes, content_type: str | None) -> str | None:
    """The raw body a JSON protocol-2 task message carries as its one argument, or None if it is not one."""
    if "task" not in headers or "id" not in headers or content_type != "application/json":
        return None
    try:
        args, kwargs, _ = json.loads(body)
    except (ValueError, TypeError):
        return None
    if isinstance(args, list) and len(args) == 1 and isinstance(args[0], str) and kwargs == {}:
        return args[0]
    return None


def derived_id(message: Message, raw: bytes) -> str:
    """An id for a message its publisher gave none (pika sets none by default): the same for every delivery
    of the same message, so its redeliveries are counted and its dead letter names it."""
    route = f"{message.delivery_info.get('exchange', '')}\n{message.delivery_info.get('routing_key', '')}\n"
    return "sha256-" + hashlib.sha256(route.encode() + raw).hexdigest()[:32]


def raw_delivery(message: Message) -> tuple[str, str, dict[str, Any]] | None:
    """A plain (non-Celery) delivery's body as text, its task id and its own headers; None for a Celery
    task message (a retry, ``app.send_task``), which keeps its own id and retry count."""
    headers = dict(message.headers or {})
    if stage_argument(headers, message.body, message.content_type) is not None:
        return None
    raw = wire_bytes(message.body)
    # surrogateescape keeps bytes that are not UTF-8, so a dead letter carries the original body.
    text = raw.decode("utf-8", errors="surrogateescape")
    task_id = (message.properties or {}).get("message_id") or derived_id(message, raw)
    headers = {k: v for k, v in headers.items() if k not in _PROTOCOL_HEADERS}
    headers[CONTENT_TYPE] = message.content_type or ""
    return text, str(task_id), headers


def to_task_message(message: Message, task_name: str) -> Message:
    """The delivery ``message`` as a protocol-2 message for ``task_name``, acknowledged as the original.

    A Celery task message (a retry, or ``app.send_task``) keeps its id, retry count and countdown and
    nothing else it asked for: no callbacks, no chain, no expiry (an expired task would be dropped unseen).
    Any other delivery is a raw body: its task id is its message id.
    """
    headers = dict(message.headers or {})
    properties = dict(message.properties or {})
    argument = stage_argument(headers, message.body, message.content_type)
    if argument is not None:
        text, task_id = argument, str(headers["id"])
        retries, eta = int(headers.get("retries") or 0), headers.get("eta")
    else:
        raw = wire_bytes(message.body)
        # surrogateescape keeps bytes that are not UTF-8, so a dead letter carries the original body.
        text = raw.decode("utf-8", errors="surrogateescape")
        task_id = properties.get("message_id") or derived_id(message, raw)
        retries, eta = 0, None
        headers[CONTENT_TYPE] = message.content_type or ""
    headers = {k: v for k, v in headers.items() if k not in _PROTOCOL_HEADERS}
    headers.update(
        lang="py",
        task=task_name,
        id=task_id,
        root_id=task_id,
        parent_id=None,
        group=None,
        retries=retries,
        eta=eta,
        expires=None,
        timelimit=[None, None],
        argsrepr=f"<{len(text)} characters>",
        kwargsrepr="{}",
    )
    return Message(
        body=json.dumps([[text], {}, _EMBED]),
        delivery_tag=message.delivery_tag,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_info=message.delivery_info,
        properties=properties,
        headers=headers,
        accept=message.accept,
        channel=message.channel,
    )


def original_routing_key(message: Message, retry_exchange: str) -> str:
    """The key a delivery was first published with: a retry names it in its headers (tradebus/stage.py)."""
    delivery = message.delivery_info or {}
    if delivery.get("exchange") == retry_exchange:
        return str((message.headers or {}).get(ORIGINAL_ROUTING_KEY) or "")
    return str(delivery.get("routing_key") or "")


def batch_limit(batch_size: int, window: int) -> int:
    """How many deliveries a batch takes at most: ``batch_size``, but at most half the prefetch ``window``."""
    return max(1, min(batch_size, window // 2))


def stage_for_key(candidates: list[tuple[tuple[str, ...], str]], routing_key: str) -> str:
    """The stage of a queue that takes ``routing_key``: the first whose patterns match it.

    None matching (a message bound to the queue by hand): the first stage, which dead-letters it as
    misrouted rather than let it pass unseen.
    """
    for keys, name in candidates:
        if not keys or any(topic_matches(pattern, routing_key) for pattern in keys):
            return name
    return candidates[0][1]


class StageConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, dispatching each delivery to the stage of the queue it arrived on."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        """Celery's consumer steps without native delayed delivery.

        With a quorum queue in the app, that step declares 28 ``celery_delayed_*`` queues and binds every
        exchange of the topology to them with ``#.<key>``, changing the routing contract (and a
        least-privilege worker may not); tradebus's retries wait in the topology's own delay queues
        instead (``Topology.retry_delay``, docs/topology.md "Retries on quorum queues").
        """

        default_steps: ClassVar[list[str]] = [
            s for s in Consumer.Blueprint.default_steps if not s.endswith(":DelayedDelivery")
        ]

    def connect(self) -> Any:
        """Connect, then declare the whole topology (tradebus/autodeclare.py) before anything is consumed."""
        connection = super().connect()
        declare_topology(self.app, connection)
        return connection

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)
        stages = {
            queue: [(task.keys, task.name) for task in tasks]
            for queue, tasks in stages_of_queues(self.app).items()
        }
        retry_exchange = self.app.topology.retry.name
        queue_of_tag: dict[str, str] = {}
        batchers: dict[str, Batcher | None] = {}

        def batcher(queue: str, stage: str, routing_key: str) -> Batcher | None:
            """The batcher of ``stage`` when its queue's pool consumes this key in batches."""
            profile = self.app.topology.pools.get(queue)
            if profile is None or not profile.batched or self.hub is None:
                return None
            if profile.batch_keys and not any(topic_matches(p, routing_key) for p in profile.batch_keys):
                return None
            if stage not in batchers:
                # At most half the pool's prefetch window (docs/performance.md): the next batch gathers
                # while one runs, and a shared queue's unbatched keys keep slots (a window of 2: none).
                window = profile.prefetch_count
                if self.qos is not None and self.qos.value:  # an explicit -c or prefetch may shrink it
                    window = min(window, self.qos.value)
                limit = batch_limit(profile.batch_size, window)
                processes = int(getattr(self.pool, "num_processes", None) or 1)
                batchers[stage] = (
                    Batcher(stage, limit, profile.batch_ms / 1000, processes, self.hub, handle)
                    if limit > 1
                    else None
                )
            return batchers[stage]

        def queue_for(tag: str | None) -> str | None:
            if tag not in queue_of_tag:
                # Kombu maps queue name -> consumer tag; invert it again when queues come and go.
                active = getattr(self.task_consumer, "_active_tags", {})
                queue_of_tag.clear()
                queue_of_tag.update({t: q for q, t in active.items()})
            return queue_of_tag.get(tag) if tag is not None else None

        def on_task_received(message: Message) -> Any:
            # On a stage queue the stage runs, whatever task a message names (a message naming celery.chain
            # or any other task must not get past the stage's checks); other queues carry Celery's own.
            queue = queue_for(message.delivery_info.get("consumer_tag")) or ""
            candidates = stages.get(queue)
            if candidates:
                routing_key = original_routing_key(message, retry_exchange)
                stage = stage_for_key(candidates, routing_key)
                gather = batcher(queue, stage, routing_key)
                # A redelivery runs alone: if it is the poison that killed its batch's process, it must not
                # take healthy batch-mates with it towards MAX_REDELIVERIES and the DLQ.
                redelivered = bool(message.delivery_info.get("redelivered"))
                if gather is not None and not redelivered and (plain := raw_delivery(message)) is not None:
                    gather.add(message, batching.item(message, *plain))
                    return None
                message = to_task_message(message, stage)
            return handle(message)

        return on_task_received
