"""Letrade stages: tradebus's stage machinery (tradebus/stage.py), reading the Letrade envelope.

A Letrade service consumes one inbox queue (routing/letrade.py), so several stages share it, each taking
the routing keys of one message (``keys``). A body is validated against the payload its routing key names;
retries follow the seed's policy (3, 5000 ms, x2) through ``letrade.retry``, and what fails for good goes
to ``letrade.dlq`` with its routing key plus ``.dead`` and the reason in its headers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from celery.result import AsyncResult

from routing import letrade, topic_matches
from tradebus.errors import InvalidMessage, Misrouted, UnknownMessageType, WrongStage
from tradebus.letrade.messages import STRATEGY_HEADER, Envelope, encode, parse
from tradebus.publisher import TYPE_HEADER, send
from tradebus.stage import StageTask, stage

R = TypeVar("R")


def publish(
    message: Envelope,
    *,
    strategy_id: int | None = None,
    headers: Mapping[str, Any] | None = None,
    app: Any = None,
) -> str:
    """Publish ``message`` on its exchange and key, with its priority, confirmed; returns its message id.

    ``strategy_id`` names the strategy of a message whose payload does not (an allocation response).
    """
    body = encode(message)
    strategy = strategy_id if strategy_id is not None else message.strategy_id
    extra = {TYPE_HEADER: message.type, **(headers or {})}
    if strategy is not None:
        extra[STRATEGY_HEADER] = strategy
    return send(
        body,
        exchange=message.exchange,
        routing_key=message.routing_key,
        message_id=message.message_id,
        headers=extra,
        persistent=message.route.persistent,
        priority=message.route.priority,
        app=app,
    )


class LetradeStageTask(StageTask):
    """A stage of a Letrade inbox: parses the envelope its routing key names."""

    def mismatch(self, message: Any) -> InvalidMessage | None:
        """Why this stage cannot take ``message``: another message type, or routed elsewhere."""
        if not isinstance(message, self.accepts):
            names = ", ".join(cls.route_name for cls in self.accepts)
            return UnknownMessageType(f"{self.name} accepts {names}, not {message.type!r}")
        if self.queue_name not in letrade.ROUTER.route(message.exchange, message.routing_key):
            return Misrouted(f"{message.routing_key!r} never reaches {self.queue_name}")
        if self.keys and not any(topic_matches(p, message.routing_key) for p in self.keys):
            return Misrouted(f"{self.name} takes {', '.join(self.keys)}, not {message.routing_key!r}")
        return None

    def parse(self, payload: Any, content_type: str | None = None) -> Any:
        """Validate ``payload`` as the message its original routing key names, or raise InvalidMessage."""
        if isinstance(payload, Envelope):
            message = payload
        else:
            _, routing_key = self.origin()
            message = parse(payload, routing_key, content_type)
        if problem := self.mismatch(message):
            raise problem
        return message

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Publish the Letrade message this stage accepts (Celery's own retries go through unchanged)."""
        if self.app.conf.task_always_eager or options.get("retries"):
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        if options or kwargs or not args or len(args) != 1 or not isinstance(args[0], Envelope):
            raise WrongStage(f"{self.name}.delay() takes exactly one Letrade message")
        (message,) = args
        if problem := self.mismatch(message):
            raise WrongStage(str(problem)) from problem
        return self.AsyncResult(publish(message))


def letrade_stage(
    name: str, *, queue: str, accepts: type[Envelope], **options: Any
) -> Callable[[Callable[[Any], R]], StageTask]:
    """Make ``fn(message)`` the stage ``name`` for ``accepts`` messages arriving on inbox ``queue``."""
    pattern = letrade.ROUTES[accepts.route_name].pattern
    return stage(name, queue=queue, accepts=accepts, keys=(pattern,), base=LetradeStageTask, **options)
