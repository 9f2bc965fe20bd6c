"""A subscription of the asyncio ``MessageBus`` (tradebus/letrade/aio.py): one pattern, one queue, one
consumer, one task, so a slow handler holds up only its own subscription.

* The queue: ``letrade.subscriber.<source>.<id>``, bound as tradebus/letrade/subscriptions.py compiles the
  pattern, not exclusive but expiring (``x-expires``) once no consumer has used it for ``EXPIRES_MS``: it
  outlives a dropped connection, so what arrives while aio-pika reconnects waits for the restored
  consumer instead of being lost, and it is deleted when the subscription stops.
* A delivery is admitted as the sync client admits it (client.py: JWT, envelope, payload; what is invalid
  is dead-lettered at once, with its reason), dropped when it repeats a message this queue already
  handled (tradebus/seen.py), then handed to the handler: awaited when it is a coroutine function, else
  run in a thread (``asyncio.to_thread``), so neither kind blocks the event loop; the handler runs in a
  ``process <queue>`` span, a child of the trace the delivery's headers carry (tradebus/tracing.py).
* A handler that raises is retried with the seed's policy (3 retries after 5, 10 and 20 s): the delivery
  stays unacknowledged while it waits (in a task of its own: the subscription goes on with the next
  messages), so a process that dies mid-delay loses nothing: RabbitMQ delivers it again. After the last
  retry it goes to ``letrade.dlq`` on its key plus ``.dead``, reason ``handler_error`` and
  ``x-tradebus-retries: 3``; a JWT replay check Redis cannot answer is retried alike and ends as
  ``max_retries``. Only once the dead letter is confirmed is the delivery acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from redis.asyncio import Redis as AsyncRedis

from routing import Topology, letrade
from tradebus import seen, tracing
from tradebus.deadletter import DeadLetter, letter
from tradebus.encryption import revealed
from tradebus.errors import InvalidMessage, PublishFailed, SignatureCheckUnavailable
from tradebus.letrade import client
from tradebus.letrade.messages import Envelope
from tradebus.letrade.subscriptions import compile_pattern
from tradebus.letrade.writes import Writes
from tradebus.retries import RetryPolicy
from tradebus.settings import Settings

#: ``handler(topic, message)``: a coroutine function, or a plain function (run in a thread).
Handler = Callable[[str, dict[str, Any]], Awaitable[None] | None]
#: An unused subscription queue is deleted this long after its consumer went away (milliseconds).
EXPIRES_MS = 60_000
logger = logging.getLogger(__name__)
#: What acknowledging a delivery of a channel that has gone away raises (RabbitMQ delivers it again).
_GONE = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError)


class Bus(Protocol):
    """What a subscription uses of its ``MessageBus`` (tradebus/letrade/aio.py)."""

    source: str
    topology: Topology
    settings: Settings

    @property
    def connection(self) -> AbstractRobustConnection: ...

    @property
    def redis(self) -> AsyncRedis: ...

    async def admit(self, queue: str, routing_key: str, delivery: AbstractIncomingMessage) -> Envelope: ...

    async def dead_letter(self, dead: DeadLetter) -> None: ...


class Subscription:
    """One pattern's queue, consumer and delivery task; without a handler: ``async for topic, message``."""

    def __init__(
        self, bus: Bus, pattern: str, handler: Handler | None, policy: RetryPolicy, prefetch: int
    ) -> None:
        self.bus, self.pattern, self.policy, self.prefetch = bus, pattern, policy, prefetch
        self.plan = compile_pattern(pattern)  # BadSubscription before anything is declared
        self.name = f"letrade.subscriber.{bus.source}.{uuid.uuid4().hex[:8]}"
        self._received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=prefetch)
        self.handler: Handler = handler or self._keep
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._task: asyncio.Task[None] | None = None
        self._retrying: set[asyncio.Task[None]] = set()
        self._writes = Writes()

    async def start(self) -> None:
        """Declare and bind the queue, start consuming and delivering."""
        self._channel = await self.bus.connection.channel()
        await self._channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await self._channel.declare_queue(
            self.name,
            durable=False,
            arguments={"x-dead-letter-exchange": letrade.DLX.name, "x-expires": EXPIRES_MS},
        )
        for exchange, key in self.plan.bindings:
            await self._queue.bind(exchange, routing_key=key)
        self._task = asyncio.create_task(self._deliver_all(), name=f"subscription {self.pattern}")
        await self._queue.consume(self._arrived)

    async def stop(self) -> None:
        """Stop delivering and delete the queue (what it holds unacknowledged goes with it)."""
        for task in [*self._retrying, *([self._task] if self._task else [])]:
            task.cancel()
        if self._queue is not None:
            with contextlib.suppress(*_GONE):
                await self._queue.delete(if_unused=False, if_empty=False)
        if self._channel is not None:
            with contextlib.suppress(*_GONE):
                await self._channel.close()

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        while True:
            yield await self._received.get()

    async def _keep(self, topic: str, message: dict[str, Any]) -> None:
        await self._received.put((topic, message))

    async def _arrived(self, delivery: AbstractIncomingMessage) -> None:
        await self._inbox.put(delivery)

    async def _deliver_all(self) -> None:
        while True:
            delivery = await self._inbox.get()
            try:
                await self._deliver(delivery)
            except Exception:  # the subscription goes on; RabbitMQ delivers an unacknowledged one again
                logger.exception("%s: delivery failed", self.name)

    async def _deliver(self, delivery: AbstractIncomingMessage) -> None:
        if _stale(delivery):
            return
        topic = delivery.routing_key or ""
        if not self.plan.accepts(topic, dict(delivery.headers or {})):
            await self._ack(delivery)
            return
        message, failure = await self._attempt(delivery, None, 0)
        if failure is not None:
            task = asyncio.create_task(self._retry(delivery, message, failure))
            self._retrying.add(task)
            task.add_done_callback(self._retrying.discard)

    async def _attempt(
        self, delivery: AbstractIncomingMessage, message: Envelope | None, retries: int
    ) -> tuple[Envelope | None, BaseException | None]:
        """Admit (once), drop a repeat, hand to the handler, acknowledge: (message, failure to retry)."""
        topic = delivery.routing_key or ""
        if message is None:
            try:
                message = await self.bus.admit(self.name, topic, delivery)
            except InvalidMessage as exc:
                await self._dead_letter(delivery, exc.reason, str(exc), retries)
                return None, None
            except SignatureCheckUnavailable as exc:
                return None, exc
            repeat = client.repeat_id(delivery.delivery_mode, delivery.message_id)
            if repeat is not None and await seen.handled_async(self.bus.redis, self.name, repeat):
                logger.warning("%s: dropping %s, a repeat of a message already handled", self.name, repeat)
                await self._ack(delivery)
                return message, None
        payload = message.payload
        trace = tracing.consuming(
            self.bus.settings.tracing,
            self.bus.topology,
            delivery.headers or {},
            queue=self.name,
            exchange=delivery.exchange or "",
            routing_key=topic,
            message_id=delivery.message_id or "",
        )
        try:
            with trace:  # the handler joins the trace its event carries, as in the sync client
                await self._call(topic, revealed(payload, type(payload).sensitive))
        except Exception as exc:  # noqa: BLE001 - the handler's failure is retried, then dead-lettered
            logger.warning("%s: handler failed on %s (retries done: %d): %r", self.name, topic, retries, exc)
            return message, exc
        repeat = client.repeat_id(delivery.delivery_mode, delivery.message_id)
        if repeat is not None:
            await seen.note_async(self.bus.redis, self.name, repeat)
        await self._ack(delivery)
        return message, None

    async def _call(self, topic: str, payload: dict[str, Any]) -> None:
        if inspect.iscoroutinefunction(self.handler):
            await self.handler(topic, payload)
            return
        result = await asyncio.to_thread(self.handler, topic, payload)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            await result

    async def _retry(
        self, delivery: AbstractIncomingMessage, message: Envelope | None, failure: BaseException
    ) -> None:
        for done in range(self.policy.max_retries):
            await asyncio.sleep(self.policy.delay(done))
            if _stale(delivery):
                return
            message, failure_or_none = await self._attempt(delivery, message, done + 1)
            if failure_or_none is None:
                return
            failure = failure_or_none
        reason = client.give_up_reason(failure)
        error = f"{type(failure).__name__}: {failure}"
        await self._dead_letter(delivery, reason, error, self.policy.max_retries)

    async def _dead_letter(
        self, delivery: AbstractIncomingMessage, reason: str, error: str, retries: int
    ) -> None:
        """To ``letrade.dlq`` with why, confirmed, then acknowledged; if even that fails, rejected (the
        queue's dead-letter exchange keeps it)."""
        topic = delivery.routing_key or ""
        dead = letter(
            self.bus.topology,
            delivery.body,
            queue=self.name,
            reason=reason,
            error=error,
            delivery_info={"exchange": delivery.exchange or "", "routing_key": topic},
            message_id=delivery.message_id or "",
            retries=retries,
        )
        try:
            await self.bus.dead_letter(dead)
        except PublishFailed:
            with contextlib.suppress(*_GONE):
                await self._writes.run(delivery.channel.connection, delivery.reject(requeue=False))
            return
        await self._ack(delivery)

    async def _ack(self, delivery: AbstractIncomingMessage) -> None:
        # A delivery of a channel lost since is delivered again: there is nothing left to acknowledge, and
        # an acknowledgement waiting on a connection that closed is given up (writes.py).
        with contextlib.suppress(*_GONE):
            await self._writes.run(delivery.channel.connection, delivery.ack())


def _stale(delivery: AbstractIncomingMessage) -> bool:
    """Whether the channel ``delivery`` came on has closed since (a lost connection): RabbitMQ has put it
    back in the queue and delivers it again to the restored consumer, so this copy is left alone."""
    try:
        return bool(delivery.channel.is_closed)
    except aiormq.exceptions.ChannelInvalidStateError:  # what aio-pika says of a closed channel
        return True
