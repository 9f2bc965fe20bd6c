"""Pipeline stages: Celery tasks bound to one queue each, triggered by publishing a bus message.

``@stage(name, queue=..., accepts=...)`` turns ``fn(message)`` into a Celery task that

* runs for every message arriving on ``queue`` (tradebus/consumer.py hands it the raw body),
* validates the body against the message types it accepts and against the queue it came from,
* records what it received (tradebus/recorder.py), then calls ``fn`` with the validated model,
* dead-letters the original body to ``dlq.<queue>``, with the reason in its headers, when the body is
  invalid or ``fn`` fails; a failure to dead-letter fails the task, and the broker then rejects the message
  (so a queue with a dead-letter exchange still keeps it).

``task.delay(message)`` publishes ``message`` on its documented exchange and routing key, so every stage
subscribed to that key runs, this one included; the returned AsyncResult's id is the AMQP message id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from celery.result import AsyncResult
from celery.utils.log import get_task_logger

from routing import QUEUES_BY_NAME, route
from tradebus import recorder
from tradebus.app import app
from tradebus.deadletter import dead_letter
from tradebus.errors import InvalidMessage, Misrouted, UnknownMessageType, WrongStage
from tradebus.messages import BusMessage
from tradebus.publisher import encode, parse_wire, publish, to_message
from workers.profiles import POOLS

logger = get_task_logger(__name__)
R = TypeVar("R")
#: Dead-letter reason for a stage that raised while handling a valid message.
STAGE_ERROR = "stage_error"
#: Celery's own control-flow exceptions: they must reach Celery, not the dead-letter queue.
_CELERY_CONTROL = (Retry, Reject, Ignore)


class StageTask(Task):  # type: ignore[misc]
    """A Celery task that is the one stage of one queue."""

    queue_name: str
    accepts: tuple[type[BusMessage], ...]
    #: The stage's own function, called with the validated message.
    handler: Callable[[Any], Any]
    typing = False

    def mismatch(self, message: BusMessage) -> InvalidMessage | None:
        """Why this stage cannot take ``message``: a type it does not accept, or a payload routed elsewhere.

        A signal marked backtest published on a live key is the case that matters: its own payload says it
        must never reach the risk manager.
        """
        if not isinstance(message, self.accepts):
            names = ", ".join(cls.__name__ for cls in self.accepts)
            return UnknownMessageType(f"{self.name} accepts {names}, not {message.type!r}")
        if self.queue_name not in route(message.exchange, message.routing_key):
            return Misrouted(
                f"a {message.type} routed by its payload as {message.routing_key!r} never reaches "
                f"{self.queue_name}"
            )
        return None

    def parse(self, payload: str | bytes | dict[str, Any] | BusMessage) -> BusMessage:
        """Validate ``payload`` as a message this stage accepts on its queue, or raise InvalidMessage."""
        message = parse_wire(payload) if isinstance(payload, str | bytes) else to_message(payload)
        if problem := self.mismatch(message):
            raise problem
        return message

    def dead_letter(self, payload: Any, reason: str, error: str) -> None:
        """Send ``payload`` to this stage's DLQ with ``reason``; raises if the broker does not confirm."""
        body = payload if isinstance(payload, str | bytes) else _as_body(payload)
        logger.warning("%s: dead-lettering %s (%s): %s", self.queue_name, self.request.id, reason, error)
        dead_letter(
            body,
            queue=self.queue_name,
            reason=reason,
            error=error,
            delivery_info=self.request.delivery_info,
            message_id=self.request.id,
        )

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Publish the message this stage accepts on its documented route."""
        if self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        if options:
            raise WrongStage(
                f"{self.name} is triggered by publishing its message; options "
                f"{', '.join(sorted(options))} are not supported"
            )
        if kwargs or not args or len(args) != 1:
            raise WrongStage(f"{self.name}.delay() takes exactly one message")
        (message,) = args
        if not isinstance(message, BusMessage):
            raise WrongStage(f"{self.name}.delay() takes a bus message, not {type(message).__name__}")
        if problem := self.mismatch(message):
            raise WrongStage(str(problem)) from problem
        return self.AsyncResult(publish(message, message_id=task_id))


def _record(task: StageTask, message: BusMessage) -> None:
    """Note the delivery in Redis; observability must never cost a message, so failures only log."""
    request = task.request
    delivery = request.delivery_info or {}
    logger.info("%s: %s %s", task.queue_name, message.type, delivery.get("routing_key"))
    try:
        recorder.record(
            task.queue_name,
            task.name,
            {
                "id": request.id,
                "type": message.type,
                "exchange": delivery.get("exchange"),
                "routing_key": delivery.get("routing_key"),
                "redelivered": bool(delivery.get("redelivered")),
            },
        )
    except Exception as exc:  # noqa: BLE001 - Redis down must not stop the stage
        logger.warning("%s: could not record %s: %s", task.queue_name, request.id, exc)


def stage(
    name: str, *, queue: str, accepts: type[BusMessage] | tuple[type[BusMessage], ...], **options: Any
) -> Callable[[Callable[[Any], R]], StageTask]:
    """Make ``fn(message)`` the stage task ``name`` of ``queue``; ``options`` go to ``app.task``."""
    if queue not in QUEUES_BY_NAME:
        raise KeyError(f"stage {name}: no queue {queue!r} in routing")
    accepted = accepts if isinstance(accepts, tuple) else (accepts,)
    if POOLS[queue].critical:
        # Redeliver the message if the pool process running it dies.
        options = {"reject_on_worker_lost": True, **options}

    def decorate(fn: Callable[[Any], R]) -> StageTask:
        def run(self: StageTask, payload: Any) -> Any:
            try:
                message = self.parse(payload)
            except InvalidMessage as exc:
                self.dead_letter(payload, exc.reason, str(exc))
                return None
            _record(self, message)
            try:
                return self.handler(message)
            except _CELERY_CONTROL:
                raise
            except Exception as exc:  # every failure ends in the DLQ with its reason
                logger.exception("%s: stage %s failed on %s", queue, name, self.request.id)
                self.dead_letter(payload, STAGE_ERROR, f"{type(exc).__name__}: {exc}")
                return None

        run.__name__ = fn.__name__
        run.__qualname__ = fn.__qualname__
        run.__doc__ = fn.__doc__
        run.__module__ = fn.__module__
        task: StageTask = app.task(
            run,
            bind=True,
            base=StageTask,
            name=name,
            queue_name=queue,
            accepts=accepted,
            handler=staticmethod(fn),
            **options,
        )
        return task

    return decorate


def _as_body(payload: Any) -> bytes:
    """A best-effort wire body for a payload that arrived already decoded."""
    if isinstance(payload, BusMessage):
        return encode(payload)
    return json.dumps(payload, default=str).encode()


def stage_tasks(celery_app: Any = app) -> dict[str, StageTask]:
    """The registered stage tasks, by the queue each one consumes."""
    return {t.queue_name: t for t in celery_app.tasks.values() if isinstance(t, StageTask)}
