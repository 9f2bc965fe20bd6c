"""Pipeline stages: Celery tasks bound to one queue each, triggered by publishing a bus message.

``@stage(name, queue=..., accepts=...)`` turns ``fn(message)`` into a Celery task that

* runs for every message arriving on ``queue`` (tradebus/consumer.py hands it the raw body),
* validates the body against the message types it accepts and against the queue it came from,
* records what it received and how long after its publication (tradebus/recorder.py), then calls ``fn``
  with the validated model,
* retries a transient failure (Redis or the broker away) with the seed's policy, 3 times after 5, 10 and
  20 seconds, through Celery's own retry, delivered straight back to ``queue`` (on the quorum topology
  after waiting in the broker's delay queue rather than in the worker),
* drops a copy of a message it has handled already: the same publisher-given id on a persistent
  message, a repeated outcome (tradebus/outcomes.py, tradebus/seen.py),
* dead-letters the original body to ``dlq.<queue>``, with the reason in its headers, when the body is
  invalid, ``fn`` rejects it as invalid, the retries are exhausted, ``fn`` fails otherwise, or the message
  keeps coming back because it kills the process running it. A failure to dead-letter fails the task, and
  the broker then rejects the message (the queue's dead-letter exchange still keeps it).

``task.delay(message)`` publishes ``message`` on its documented exchange and routing key, so every stage
subscribed to that key runs, this one included; the returned AsyncResult's id is the AMQP message id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NoReturn, TypeVar

from celery import Task, current_task
from celery.exceptions import Ignore
from celery.result import AsyncResult
from celery.signals import task_revoked
from celery.utils.log import get_task_logger
from pydantic import BaseModel

from routing import topic_matches
from tradebus import handling, metrics, recorder, redeliveries, seen, sharding, signing
from tradebus.application import running
from tradebus.deadletter import dead_letter
from tradebus.errors import (
    InvalidMessage,
    Misrouted,
    Reason,
    SignatureCheckUnavailable,
    UnknownMessageType,
    WrongStage,
)
from tradebus.headers import CONTENT_TYPE, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, PUBLISHED_AT
from tradebus.publisher import PERSISTENT
from tradebus.redeliveries import DELIVERY_COUNT, MAX_REDELIVERIES
from tradebus.retries import SEED_POLICY, RetryPolicy

logger = get_task_logger(__name__)
R = TypeVar("R")
#: Headers the broker sets on a delivery (dead-lettering, a quorum queue's count): a retry is a new
#: message and starts without them.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", DELIVERY_COUNT)


class StageTask(Task):  # type: ignore[misc]
    """A Celery task that is the one stage of one queue (or of the keys ``keys`` of a shared queue).

    A profile subclasses it to say how its messages are decoded, named and published
    (tradebus/mastertrade/stage.py, tradebus/letrade/stage.py); everything else is shared.
    """

    queue_name: str
    #: Routing-key patterns this stage takes from a queue it shares with other stages (empty: every key).
    keys: tuple[str, ...] = ()
    accepts: tuple[type[Any], ...]
    #: The stage's own function, called with the validated message.
    handler: Callable[[Any], Any]
    #: Takes a whole batch's valid messages at once (tradebus/batching.py); None: ``handler`` for each.
    batch_handler: Callable[[list[Any]], Any] | None = None
    retry_policy: RetryPolicy = SEED_POLICY
    #: The handler tells a repeat by ``handling.repeat_read`` itself: no round trip of the stage's before it.
    handler_checks_repeats = False
    #: The base class of the profile's messages (what ``delay`` takes).
    message_base: type[Any] = BaseModel
    typing = False

    # --- what a profile defines -------------------------------------------------------------------------

    def decode(self, payload: Any, content_type: str | None) -> Any:
        """``payload`` (raw body or a decoded dict) as one of the profile's messages, or InvalidMessage."""
        raise NotImplementedError

    def send_message(self, message: Any, message_id: str | None) -> str:
        """Publish ``message`` on its documented exchange and key, confirmed; returns its message id."""
        raise NotImplementedError

    @staticmethod
    def type_name(cls: type[Any]) -> str:
        """How an error names a message class."""
        return cls.__name__

    def authenticate(self, payload: Any, content_type: str | None) -> None:
        """Check who sent the current delivery, before it is parsed: tradebus's signature when required (a
        profile adds its own, Letrade its JWT). Raises SignatureRejected or SignatureCheckUnavailable."""
        signing.check_delivery(self, payload, content_type)

    def retry_credentials(self, content_type: str | None) -> dict[str, Any]:
        """The headers with which this worker vouches for the retry it schedules (its signature)."""
        return signing.retry_headers(self, content_type)

    # --- shared -----------------------------------------------------------------------------------------

    def mismatch(self, message: Any) -> InvalidMessage | None:
        """Why this stage cannot take ``message``: a type it does not accept, or a message routed elsewhere.

        A signal marked backtest published on a live key is the case that matters: its own payload says it
        must never reach the risk manager.
        """
        if not isinstance(message, self.accepts):
            names = ", ".join(self.type_name(cls) for cls in self.accepts)
            return UnknownMessageType(f"{self.name} accepts {names}, not {message.type!r}")
        if not self.app.topology.reaches(message.exchange, message.routing_key, self.queue_name):
            return Misrouted(
                f"a {message.type} routed by its payload as {message.routing_key!r} never reaches "
                f"{self.queue_name}"
            )
        if self.keys and not any(topic_matches(p, message.routing_key) for p in self.keys):
            return Misrouted(f"{self.name} takes {', '.join(self.keys)}, not {message.routing_key!r}")
        return None

    def parse(self, payload: Any, content_type: str | None = None) -> Any:
        """Validate ``payload`` as a message this stage accepts on its queue, or raise InvalidMessage."""
        message = payload if isinstance(payload, self.accepts) else self.decode(payload, content_type)
        if problem := self.mismatch(message):
            raise problem
        return message

    @property
    def headers(self) -> Mapping[str, Any]:
        """The current delivery's own (non-Celery) headers."""
        return self.request.headers or {}

    def origin(self) -> tuple[str, str]:
        """The exchange and routing key the current message was first published with.

        A retry (or a replay of a fanned-out dead letter) travels straight to this stage's queue through
        ``mastertrade.retry`` and carries the original route in its headers; any other delivery's own
        route is its origin, whatever its headers claim.
        """
        delivery = self.request.delivery_info or {}
        exchange, routing_key = delivery.get("exchange") or "", delivery.get("routing_key") or ""
        # Only a retry or a replay may say where it came from first.
        if exchange != self.app.topology.retry.name:
            return exchange, routing_key
        headers = self.headers
        return headers.get(ORIGINAL_EXCHANGE) or exchange, headers.get(ORIGINAL_ROUTING_KEY) or routing_key

    def dead_letter(self, payload: Any, reason: str, error: str) -> None:
        """Send ``payload`` to this stage's DLQ with ``reason``; raises if the broker does not confirm."""
        body = payload if isinstance(payload, str | bytes) else _as_body(payload)
        logger.warning("%s: dead-lettering %s (%s): %s", self.queue_name, self.request.id, reason, error)
        exchange, routing_key = self.origin()
        dead_letter(
            self.app,
            body,
            queue=self.queue_name,
            reason=reason,
            error=error,
            delivery_info={"exchange": exchange, "routing_key": routing_key},
            message_id=self.request.id,
            retries=self.request.retries or 0,
        )
        metrics.dead_lettered(self.queue_name, self.name, reason, self.request)

    def retry_later(self, exc: BaseException) -> NoReturn:
        """Schedule the current message again on this stage's queue after the policy's delay (Celery's
        ``Task.retry``, which raises Retry for Celery to acknowledge the current delivery)."""
        exchange, routing_key = self.origin()
        headers = {k: v for k, v in self.headers.items() if not k.startswith(_BROKER_HEADERS)} | {
            ORIGINAL_EXCHANGE: exchange,
            ORIGINAL_ROUTING_KEY: routing_key,
        }
        # This worker vouches for the retry with its own signature and attempt number (tradebus/signing.py).
        headers |= self.retry_credentials(self.headers.get(CONTENT_TYPE))
        delay = self.retry_policy.delay(self.request.retries or 0)
        logger.warning(
            "%s: %s failed (%s: %s); retry %d of %d in %.1fs",
            self.queue_name,
            self.request.id,
            type(exc).__name__,
            exc,
            (self.request.retries or 0) + 1,
            self.retry_policy.max_retries,
            delay,
        )
        # Quorum topology: the retry waits in the broker's delay queue for its delay, then comes back through
        # mastertrade.retry, so no worker holds it (and a prefetch slot) meanwhile; countdown 0 keeps Celery
        # from holding it again or rerouting it to its own delay exchanges (docs/topology.md, "Retries on
        # quorum queues"). Otherwise Celery's countdown: the worker holds it until it is due.
        delayed = self.app.topology.retry_delay_route(self.queue_name, delay)
        via, key = delayed or (self.app.topology.retry.name, self.queue_name)
        self.retry(
            exc=exc,
            countdown=0 if delayed else delay,
            max_retries=self.retry_policy.max_retries,
            queue=self.queue_name,
            exchange=via,
            routing_key=key,
            headers=headers,
        )
        raise AssertionError("Task.retry raises")  # pragma: no cover

    def retry_or_give_up(self, payload: Any, exc: BaseException) -> None:
        """Retry a transient failure later (Celery's Retry), or dead-letter it when the retries are spent."""
        if (self.request.retries or 0) < self.retry_policy.max_retries:
            self.retry_later(exc)
        error = f"still failing after {self.retry_policy.max_retries} retries: {type(exc).__name__}: {exc}"
        self.dead_letter(payload, Reason.MAX_RETRIES, error)

    def publisher_id(self) -> str | None:
        """The id the current delivery's publisher gave it, if a repeat of it would be dropped.

        Only a persistent message (what stages publish as outcomes, and what must not be lost) on its first
        attempt: a retry is the same delivery's continuation, and a message with no id of its own (pika's
        default) has no id a repeat could be told by.
        """
        properties = getattr(self.request, "properties", None) or {}
        if self.request.retries or properties.get("delivery_mode") != PERSISTENT:
            return None
        message_id = properties.get("message_id")
        return str(message_id) if message_id else None

    def over_redelivery_limit(self) -> bool:
        """Whether the current message came back more than MAX_REDELIVERIES times (redeliveries.py)."""
        return redeliveries.over_limit(
            self.queue_name,
            f"{self.request.id}:{self.request.retries or 0}",
            bool((self.request.delivery_info or {}).get("redelivered")),
            self.headers,
            self.queue_name in self.app.topology.quorum_queues,
        )

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Publish the message this stage accepts on its documented route.

        Celery's own retry (see ``retry_later``) goes through unchanged: it sends the raw body straight back
        to this stage's queue.
        """
        if self.app.conf.task_always_eager or options.get("retries"):
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        if options:
            raise WrongStage(
                f"{self.name} is triggered by publishing its message; options "
                f"{', '.join(sorted(options))} are not supported"
            )
        if kwargs or not args or len(args) != 1:
            raise WrongStage(f"{self.name}.delay() takes exactly one message")
        (message,) = args
        if not isinstance(message, self.message_base):
            raise WrongStage(f"{self.name}.delay() takes a bus message, not {type(message).__name__}")
        if problem := self.mismatch(message):
            raise WrongStage(str(problem)) from problem
        return self.AsyncResult(self.send_message(message, task_id))

    def run_stage(self, payload: Any) -> Any:
        """Validate, record and handle one delivery; every way it can fail ends in a retry or the DLQ."""
        with running(self.app):  # what this delivery's code finds as its app (tradebus.application.current)
            return self._run_stage(payload)

    def _run_stage(self, payload: Any) -> Any:
        try:
            # Signatures first, before the body is even parsed (tradebus/signing.py; no-op unless required).
            self.authenticate(payload, self.headers.get(CONTENT_TYPE))
            message = self.parse(payload, self.headers.get(CONTENT_TYPE))
        except InvalidMessage as exc:
            self.dead_letter(payload, exc.reason, str(exc))
            return None
        except SignatureCheckUnavailable as exc:  # Redis down: retried, never passed unchecked
            self.retry_or_give_up(payload, exc)
            return None
        message_id = self.publisher_id()
        # A handler that checks repeats itself does so in a Redis round trip it makes anyway (handling.py).
        if message_id and not self.handler_checks_repeats and seen.handled(self.queue_name, message_id):
            handling.drop_repeat(self, message_id)
        if self.over_redelivery_limit():
            self.dead_letter(
                payload,
                Reason.REDELIVERY_LIMIT,
                f"redelivered more than {MAX_REDELIVERIES} times; it may crash",
            )
            return None
        if not self.handler_checks_repeats:
            _record(self, message)
            done, result = handling.handle(self, payload, message)
        else:  # recorded once the handler did not drop it as a repeat (handling.drop_repeat's Ignore)
            started = time.time()
            try:
                done, result = handling.handle(self, payload, message)
            except Ignore:
                raise
            except BaseException:
                _record(self, message, started)
                raise
            _record(self, message, started)
        if done:
            handling.note(self, message_id)
        return result


@task_revoked.connect  # type: ignore[untyped-decorator]
def _dead_letter_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A stage message revoked by an operator (Flower, ``celery control revoke``) goes to its DLQ too.

    Celery has already acknowledged it; the dead letter, reason ``revoked``, is what keeps it.
    """
    if not isinstance(sender, StageTask) or request is None or not request.args:
        return
    delivery = dict(request.delivery_info or {})
    if delivery.get("exchange") == sender.app.topology.retry.name:  # a retry: under its original route
        headers = request.headers or {}
        delivery["exchange"] = headers.get(ORIGINAL_EXCHANGE) or delivery["exchange"]
        delivery["routing_key"] = headers.get(ORIGINAL_ROUTING_KEY) or delivery.get("routing_key")
    try:
        dead_letter(
            sender.app,
            request.args[0],
            queue=sender.queue_name,
            reason=Reason.REVOKED,
            error="revoked by an operator before it ran",
            delivery_info=delivery,
            message_id=request.id,
        )
        metrics.dead_lettered(sender.queue_name, sender.name, Reason.REVOKED)
    except Exception:  # the worker must go on; the revocation itself is in Celery's log
        logger.exception("%s: could not dead-letter revoked message %s", sender.queue_name, request.id)


def _record(task: StageTask, message: Any, started: float | None = None) -> None:
    """Note the delivery in Redis (its latency from its publication to ``started``, by default now);
    observability must never cost a message, so failures only log."""
    request = task.request
    delivery = request.delivery_info or {}
    exchange, routing_key = task.origin()
    published = task.headers.get(PUBLISHED_AT)
    first_try = not request.retries
    at = time.time() if started is None else started
    latency = (at - float(published)) * 1000 if first_try and published else None
    logger.info("%s: %s %s", task.queue_name, message.type, routing_key)
    try:
        # On a shard: a delivery without the symbol header, or one the ring put elsewhere, is counted, in
        # Prometheus first (the Redis count raises when Redis is down).
        arrived = str(delivery.get("exchange") or "")
        count = partial(_shard_count, task)
        sharding.check_delivery(task.app.topology, task.queue_name, arrived, task.headers, count)
        recorder.record(
            task.queue_name,
            task.name,
            {
                "id": request.id,
                "type": message.type,
                "exchange": exchange,
                "routing_key": routing_key,
                "redelivered": bool(delivery.get("redelivered")),
                "retries": request.retries or 0,
            },
            latency_ms=latency,
            at=at,
        )
    except Exception as exc:  # noqa: BLE001 - Redis down must not stop the stage
        logger.warning("%s: could not record %s: %s", task.queue_name, request.id, exc)


def _shard_count(task: StageTask, kind: str, name: str) -> None:
    """Count a delivery on a shard that is not where tradebus computes it: in Prometheus, then in Redis."""
    metrics.shard_delivery(task.queue_name, task.name, kind)
    recorder.bump(name)


def _as_body(payload: Any) -> bytes:
    """A best-effort wire body for a payload that arrived already decoded."""
    if isinstance(payload, BaseModel):
        return payload.model_dump_json().encode()
    return json.dumps(payload, default=str).encode()


def delivery_id() -> str:
    """The message id of the delivery the running stage handles (what idempotency keys derive from)."""
    request = current_task.request
    return str(request.id)
