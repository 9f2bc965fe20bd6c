"""The worker's consumer: the queue a message arrives on decides which stage task runs it.

MasterTrade services publish plain JSON in the documented formats, and one message fans out to several
queues (a candle reaches ``market_data``, ``strategy_market_data`` and ``executor_market_data``), so a task
name inside the message cannot say which stage should run it. Before Celery looks at a delivery, this
consumer finds the queue it came from (Kombu keeps the consumer tag of every queue it consumes) and turns the
delivery into a Celery protocol-2 task message for that queue's stage, whose only argument is the raw body.
Deliveries on queues without a stage, and genuine Celery messages for non-stage tasks, pass through as is.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

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


def to_task_message(message: Message, task_name: str) -> Message:
    """The delivery ``message`` as a protocol-2 message for ``task_name``, acknowledged as the original."""
    headers = dict(message.headers or {})
    properties = dict(message.properties or {})
    if "task" in headers and "id" in headers:
        # Already a Celery task message: the queue still decides which stage runs it.
        body: bytes | str = message.body
        headers["task"] = task_name
    else:
        raw = message.body
        # surrogateescape keeps bytes that are not UTF-8, so a dead letter carries the original body.
        text = raw.decode("utf-8", errors="surrogateescape") if isinstance(raw, bytes) else str(raw)
        task_id = properties.get("message_id") or properties.get("correlation_id") or str(uuid.uuid4())
        headers = {k: v for k, v in headers.items() if k not in _PROTOCOL_HEADERS}
        headers.update(
            lang="py",
            task=task_name,
            id=task_id,
            root_id=task_id,
            parent_id=None,
            group=None,
            retries=0,
            eta=None,
            expires=None,
            timelimit=[None, None],
            argsrepr=f"<{len(raw)} bytes>",
            kwargsrepr="{}",
        )
        body = json.dumps([[text], {}, _EMBED])
    return Message(
        body=body,
        delivery_tag=message.delivery_tag,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_info=message.delivery_info,
        properties=properties,
        headers=headers,
        accept=message.accept,
        channel=message.channel,
    )


class StageConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, dispatching each delivery to the stage of the queue it arrived on."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        from tradebus.stage import StageTask, stage_tasks

        handle = super().create_task_handler(*args, **kwargs)
        stages = {queue: task.name for queue, task in stage_tasks(self.app).items()}
        tasks = self.app.tasks
        queue_of_tag: dict[str, str] = {}

        def queue_for(tag: str | None) -> str | None:
            if tag not in queue_of_tag:
                # Kombu maps queue name -> consumer tag; invert it again when queues come and go.
                active = getattr(self.task_consumer, "_active_tags", {})
                queue_of_tag.clear()
                queue_of_tag.update({t: q for q, t in active.items()})
            return queue_of_tag.get(tag) if tag is not None else None

        def on_task_received(message: Message) -> Any:
            stage = stages.get(queue_for(message.delivery_info.get("consumer_tag")) or "")
            if stage is not None:
                named = (message.headers or {}).get("task")
                if named is None or named not in tasks or isinstance(tasks[named], StageTask):
                    message = to_task_message(message, stage)
            return handle(message)

        return on_task_received
