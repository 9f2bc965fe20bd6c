"""``LetradeBus``: the seed's ``MessageBus`` client, synchronous, on Kombu.

    with LetradeBus(source="strategy_123") as bus:
        bus.publish("letrade.commands", "execute_trade", {...})        # the seed's short key works too
        bus.publish_candles(candles)                                    # market data, 500 per message
        bus.subscribe("events.trade_*", handle)                         # handle(topic, payload_dict)
        bus.drain(5.0)                                                  # deliver for up to 5 s
        answer = bus.request("request.capital.allocation", {...}, timeout=5.0)
        print(bus.health_check()["status"])

Every publish is validated (envelope, payload, 128 KB), carries its route's priority and persistence, and
returns only once RabbitMQ confirmed it: it goes through the core's publisher (tradebus/publisher.py), as a
stage's would, on an app of Letrade's topology, reconnecting when the connection drops. Subscriptions use
a queue of their own that lives as long as the connection (tradebus/letrade/subscriptions.py says what
each pattern binds). A handler that raises is retried with the seed's policy, as the asyncio client's
subscriber does (3 retries after 5, 10 and 20 s; ``retry_policy=``): the delivery stays unacknowledged
and is tried again by ``drain`` when its delay is over; then it is dead-lettered to ``letrade.dlq`` with
the reason (``client.give_up_reason``) and ``x-tradebus-retries``. An invalid delivery, or with
``TRADEBUS_JWT_REQUIRED=1`` one whose JWT fails (tradebus/letrade/tokens.py), is dead-lettered at once,
before any handler sees it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from kombu import Connection, Consumer, Exchange, Queue, binding
from kombu.message import Message

from routing import TopologyOptions, letrade
from tradebus import seen, tls, tracing
from tradebus.application import TradebusCelery, create_app, current_settings
from tradebus.deadletter import dead_letter
from tradebus.encryption import revealed
from tradebus.errors import (
    InvalidMessage,
    PublishFailed,
    Reason,
    RequestTimeout,
    SignatureCheckUnavailable,
)
from tradebus.health import bus_health
from tradebus.letrade import client, feed
from tradebus.letrade.client import DEFAULT_TIMEOUT, qualify
from tradebus.letrade.messages import Envelope, build, class_for_key
from tradebus.letrade.payloads import MarketData, Payload
from tradebus.letrade.stage import publish
from tradebus.letrade.subscriptions import compile_pattern
from tradebus.retries import SEED_POLICY, RetryPolicy

Handler = Callable[[str, dict[str, Any]], None]
__all__ = ["DEFAULT_TIMEOUT", "Handler", "LetradeBus", "qualify"]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Waiting:
    """A delivery whose handler failed, unacknowledged until its retry (at ``due``) or its dead letter."""

    due: float
    queue: str
    routing_key: str
    message: Message
    handler: Handler
    #: None when what failed is its admission (a JWT replay check Redis could not answer).
    parsed: Envelope | None
    retries: int


class LetradeBus:
    """A connection to the Letrade bus: publish, subscribe, request and health check."""

    def __init__(
        self,
        url: str | None = None,
        *,
        source: str = "client",
        app: TradebusCelery | None = None,
        retry_policy: RetryPolicy = SEED_POLICY,
    ) -> None:
        #: Whether this client built its app, and so closes its connections with it.
        self._owns_app = app is None
        if app is None:
            settings = current_settings()
            topology = letrade.build(TopologyOptions(queue_type=settings.queue_type))
            app = create_app(topology, settings.with_(broker_url=url or settings.broker_url))
        self.app = app
        self.url = url or app.settings.broker_url
        self.source = source
        self._connection: Connection | None = None
        self._consumers: list[Consumer] = []
        self.retry_policy = retry_policy
        #: Deliveries whose handler failed, waiting (unacknowledged) for their retry, soonest first.
        self._waiting: list[_Waiting] = []

    # --- connection ---------------------------------------------------------------------------------
    def connect(self) -> LetradeBus:
        """Open the connection subscriptions and replies are consumed on (publishes use the app's pool)."""
        if self._connection is None:
            # With the app's TLS options: amqps:// verifies with TRADEBUS_BROKER_CA_FILE, as Celery's does.
            self._connection = tls.broker_connection(self.app.settings, self.url, connect_timeout=5)
            self._connection.ensure_connection(max_retries=3)
        return self

    def close(self) -> None:
        """Cancel the subscriptions (their queues go with them) and close the connection."""
        for consumer in self._consumers:
            consumer.cancel()
        self._consumers.clear()
        if self._connection is not None:
            self._connection.release()
        self._connection = None
        if self._owns_app:
            self.app.close()  # the publishing pool

    def __enter__(self) -> LetradeBus:
        return self.connect()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    @property
    def connection(self) -> Connection:
        """The open connection."""
        self.connect()
        assert self._connection is not None
        return self._connection

    # --- publishing ---------------------------------------------------------------------------------
    def message(self, routing_key: str, payload: Payload | dict[str, Any], **envelope: Any) -> Envelope:
        """The validated message ``payload`` makes on ``routing_key``, from this client's source."""
        return build(class_for_key(routing_key), payload, self.source, **envelope)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Envelope | Payload | dict[str, Any],
        *,
        strategy_id: int | None = None,
    ) -> str:
        """Validate and publish; returns the message id. InvalidMessage (nothing sent) or PublishFailed."""
        message = client.outgoing(exchange, routing_key, payload, self.source)
        self.send(message, strategy_id=strategy_id)
        return message.message_id

    def publish_candles(
        self, candles: Iterable[MarketData | dict[str, Any]], *, batch_size: int = feed.DEFAULT_BATCH
    ) -> list[str]:
        """Publish market data batched: up to ``batch_size`` candles of one pair per message
        (tradebus/letrade/feed.py), every batch validated before any is sent, each confirmed. Returns the
        batches' message ids."""
        messages = feed.batches(candles, self.source, batch_size)
        for message in messages:
            self.send(message)
        return [m.message_id for m in messages]

    def send(self, message: Envelope, *, strategy_id: int | None = None) -> None:
        """Publish a validated message on its own route, with its priority, confirmed."""
        publish(message, strategy_id=strategy_id, app=self.app)

    # --- subscribing --------------------------------------------------------------------------------
    def subscribe(self, pattern: str, handler: Handler) -> str:
        """Call ``handler(topic, payload)`` for every message ``pattern`` matches; returns the queue name."""
        plan = compile_pattern(pattern)
        name = f"letrade.subscriber.{self.source}.{uuid.uuid4().hex[:8]}"
        queue = Queue(
            name,
            bindings=[
                binding(Exchange(e, type="topic", passive=True), routing_key=k) for e, k in plan.bindings
            ],
            exclusive=True,
            auto_delete=True,
            durable=False,
            queue_arguments={"x-dead-letter-exchange": letrade.DLX.name},
        )

        def deliver(message: Message) -> None:
            routing_key = message.delivery_info.get("routing_key", "")
            if not plan.accepts(routing_key, message.headers):
                message.ack()
                return
            self._handle(name, routing_key, message, handler)

        consumer = Consumer(self.connection.channel(), queues=[queue], on_message=deliver, no_ack=False)
        consumer.qos(prefetch_count=100)
        consumer.consume()
        self._consumers.append(consumer)
        return name

    def _admit(
        self, queue: str, routing_key: str, message: Message, *, may_retry: bool = False
    ) -> Envelope | None:
        """The delivery as the message its key names, its JWT checked when required; or None, once it is
        dead-lettered with the reason. A replay check Redis cannot answer is SignatureCheckUnavailable
        with ``may_retry`` (a subscription retries it), else dead-lettered as ``max_retries`` (a request's
        answer: replayable once Redis is back)."""
        properties = message.properties or {}
        try:
            return client.admit(
                self.app.settings,
                queue,
                routing_key,
                message.body,
                message.headers or {},
                content_type=message.content_type,
                message_id=properties.get("message_id") or "",
                redelivered=bool(message.delivery_info.get("redelivered")),
            )
        except InvalidMessage as exc:
            self._dead_letter(queue, routing_key, message, exc.reason, str(exc))
        except SignatureCheckUnavailable as exc:
            if may_retry:
                raise
            self._dead_letter(queue, routing_key, message, Reason.MAX_RETRIES, f"no retries here: {exc}")
        return None

    def _handle(
        self,
        queue: str,
        routing_key: str,
        message: Message,
        handler: Handler,
        parsed: Envelope | None = None,
        retries: int = 0,
    ) -> None:
        """Admit (once), drop a repeat, hand to the handler and acknowledge; a failure waits for its retry
        (``_waiting``, run by ``drain``) or, the policy spent, is dead-lettered."""
        properties = message.properties or {}
        repeat_id = client.repeat_id(properties.get("delivery_mode"), properties.get("message_id"))
        try:
            if parsed is None:
                if (parsed := self._admit(queue, routing_key, message, may_retry=True)) is None:
                    return
                # An event its publisher sent again after a crash repeats the first copy's id
                # (tradebus/outcomes.py): this subscription hands it to its handler once (tradebus/seen.py).
                if repeat_id is not None and seen.handled(queue, repeat_id):
                    logger.warning("%s: dropping %s, a repeat of a message already handled", queue, repeat_id)
                    message.ack()
                    return
            payload = parsed.payload
            trace = tracing.consuming(
                self.app.settings.tracing,
                self.app.topology,
                message.headers or {},
                queue=queue,
                exchange=message.delivery_info.get("exchange", ""),
                routing_key=routing_key,
                message_id=properties.get("message_id") or "",
            )
            with trace:  # the subscriber joins the trace its event carries (tradebus/tracing.py)
                handler(routing_key, revealed(payload, type(payload).sensitive))
            if repeat_id is not None:  # Redis down: retried like a failed handler, never left un-acked
                seen.note(queue, repeat_id)
        except Exception as exc:  # noqa: BLE001 - retried by the policy, then the dead letter's reason
            if retries < self.retry_policy.max_retries:
                logger.warning(
                    "%s: handler failed on %s (retries done: %d): %r", queue, routing_key, retries, exc
                )
                due = time.monotonic() + self.retry_policy.delay(retries)
                waiting = _Waiting(due, queue, routing_key, message, handler, parsed, retries + 1)
                self._waiting = sorted([*self._waiting, waiting], key=lambda w: w.due)
                return
            error = f"{type(exc).__name__}: {exc}"
            self._dead_letter(queue, routing_key, message, client.give_up_reason(exc), error, retries)
            return
        message.ack()

    def _retry_due(self) -> None:
        """Try again every waiting delivery whose delay is over, each on its own: one that fails outside
        its handler (an ack on a dead channel) waits again, or, its channel closed, is left to the broker's
        redelivery, and the others still run."""
        now = time.monotonic()
        due = [w for w in self._waiting if w.due <= now]
        self._waiting = [w for w in self._waiting if w.due > now]
        for w in due:
            try:
                self._handle(w.queue, w.routing_key, w.message, w.handler, w.parsed, w.retries)
            except Exception as exc:  # noqa: BLE001 - one delivery's fault must not strand the others
                if getattr(getattr(w.message, "channel", None), "is_open", False):
                    later = replace(w, due=time.monotonic() + self.retry_policy.delay(max(w.retries - 1, 0)))
                    self._waiting = sorted([*self._waiting, later], key=lambda x: x.due)
                logger.warning("%s: retry of %s failed: %r", w.queue, w.routing_key, exc)

    def _dead_letter(
        self, queue: str, routing_key: str, message: Message, reason: str, error: str, retries: int = 0
    ) -> None:
        """Dead-letter ``message`` to ``letrade.dlq`` with why, as a stage would (tradebus/deadletter.py);
        if even that fails, the queue's dead-letter exchange keeps it."""
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        try:
            dead_letter(
                self.app,
                body,
                queue=queue,
                reason=reason,
                error=error,
                delivery_info={
                    "exchange": message.delivery_info.get("exchange", ""),
                    "routing_key": routing_key,
                },
                message_id=(message.properties or {}).get("message_id", ""),
                retries=retries,
            )
        except PublishFailed:
            message.reject(requeue=False)
            return
        message.ack()

    def drain(self, timeout: float) -> int:
        """Deliver what arrives to the handlers for up to ``timeout`` seconds, and run the retries that
        fall due meanwhile; returns how many deliveries arrived."""
        delivered, deadline = 0, time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._retry_due()
            if self._waiting:
                left = min(left, max(self._waiting[0].due - time.monotonic(), 0.001))
            try:
                self.connection.drain_events(timeout=left)
            except TimeoutError:
                continue
            delivered += 1
        self._retry_due()
        return delivered

    # --- request / response -------------------------------------------------------------------------
    def request(
        self,
        routing_key: str,
        payload: Payload | dict[str, Any],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        message_id: str | None = None,
    ) -> Envelope:
        """Send a ``request.*`` message and wait for its ``response.*`` (matched by request id).

        The response key reaches every caller waiting on it; each keeps only the answer to its own
        request. RequestTimeout when none comes in ``timeout`` seconds.
        """
        made = client.request(routing_key, payload, self.source, message_id)
        message, request_id, response_key = made.message, made.request_id, made.response_key
        answers: list[Envelope] = []
        queue = Queue(
            f"letrade.reply.{self.source}.{uuid.uuid4().hex[:8]}",
            bindings=[
                binding(Exchange(letrade.REQUESTS.name, type="topic", passive=True), routing_key=response_key)
            ],
            exclusive=True,
            auto_delete=True,
            durable=False,
            queue_arguments={"x-dead-letter-exchange": letrade.DLX.name},
        )

        def take(delivery: Message) -> None:
            if (answer := self._admit(queue.name, response_key, delivery)) is None:
                return  # no answer, and kept with the reason
            delivery.ack()
            if getattr(answer.payload, "request_id", None) == request_id:
                answers.append(answer)

        channel = self.connection.channel()
        try:
            with Consumer(channel, queues=[queue], on_message=take):
                self.send(message)  # bound before sent: the answer cannot overtake the binding
                deadline = time.monotonic() + timeout
                while not answers and (left := deadline - time.monotonic()) > 0:
                    try:
                        self.connection.drain_events(timeout=left)
                    except TimeoutError:
                        break
        finally:
            channel.close()
        if not answers:
            raise RequestTimeout(f"no {response_key} for request {request_id} within {timeout:g}s")
        return answers[0]

    # --- health -------------------------------------------------------------------------------------
    def health_check(self) -> dict[str, object]:
        """The seed's health check: ``status`` and ``queue_depth`` (and what they are made of)."""
        return bus_health(
            self.connection,
            [q.name for q in self.app.topology.worker_queues],
            [q.name for q in self.app.topology.dead_letter_queues],
            [q.name for q in self.app.topology.unrouted_queues],
        )
