"""``MessageBus``: the seed's asyncio client of the Letrade bus, on aio-pika, as Letrade's services use it.

    bus = MessageBus()                                   # settings from the environment (TRADEBUS_*)
    await bus.connect()
    await bus.publish("letrade.commands", "execute_trade", {...})      # the seed's short key works too
    await bus.publish_candles(candles)                   # market data, up to 500 candles per message
    await bus.subscribe("events.trade_*", handle)        # async def handle(topic, message) (or a plain def)
    answer = await bus.request("request.capital.allocation", {...}, timeout=5.0)
    print((await bus.health_check())["status"])
    await bus.close()                                    # or: async with MessageBus() as bus: ...

The contract is the synchronous ``LetradeBus``'s (tradebus/letrade/bus.py), made by the same functions
(tradebus/letrade/client.py, stage.py's ``wire``, publisher.py's ``outgoing``, deadletter.py's ``letter``):
validated envelope and payload, 128 KB, priority and persistence of the route, sealed sensitive fields, HMAC
signature and JWT when this service has keys; every publish returns once RabbitMQ confirmed it, and is
published again after a lost connection (``connect_robust`` reconnects, to another node of a cluster's
URL list, tradebus/letrade/failover.py; a repeat keeps its message id).
Subscriptions are tradebus/letrade/subscriber.py: each its own queue, consumer and task, handlers retried
with the seed's policy before their message is dead-lettered to ``letrade.dlq``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import Redis as AsyncRedis

from routing import TopologyOptions, letrade
from tradebus import store, tls
from tradebus.deadletter import DeadLetter
from tradebus.errors import InvalidMessage, RequestTimeout
from tradebus.health import QueueStats, summary
from tradebus.letrade import client, failover, feed
from tradebus.letrade.client import DEFAULT_TIMEOUT
from tradebus.letrade.confirms import CONNECTION_LOST, ConfirmedPublisher
from tradebus.letrade.messages import Envelope
from tradebus.letrade.payloads import MarketData, Payload
from tradebus.letrade.stage import wire
from tradebus.letrade.subscriber import Handler, Subscription
from tradebus.publisher import outgoing
from tradebus.replication import async_client
from tradebus.retries import SEED_POLICY, RetryPolicy
from tradebus.settings import Settings

logger = logging.getLogger(__name__)
#: Seconds between two reconnection attempts (aio-pika's ``reconnect_interval``).
RECONNECT_INTERVAL = 1.0
#: Unacknowledged deliveries each subscription holds (retries waiting included).
PREFETCH = 100


class MessageBus:
    """A robust connection to the Letrade bus: publish, subscribe, request and health check, awaited."""

    def __init__(
        self,
        url: str | None = None,
        *,
        source: str = "client",
        settings: Settings | None = None,
        retry_policy: RetryPolicy = SEED_POLICY,
        prefetch: int = PREFETCH,
    ) -> None:
        settings = settings or Settings.from_env()
        self.settings = settings.with_(broker_url=url) if url else settings
        self.url = self.settings.broker_url
        self.source = source
        self.topology = letrade.build(TopologyOptions(queue_type=self.settings.queue_type))
        self.retry_policy = retry_policy
        self.prefetch = prefetch
        #: The name RabbitMQ lists this client's connection under (management API: ``client_properties``).
        self.connection_name = f"tradebus.letrade.{source}.{uuid.uuid4().hex[:8]}"
        self._connection: AbstractRobustConnection | None = None
        self._publisher: ConfirmedPublisher | None = None
        self.subscriptions: list[Subscription] = []
        self._replies: dict[str, asyncio.Future[Envelope]] = {}
        self._reply_keys: set[str] = set()
        self._reply_lock = asyncio.Lock()
        self._redis: AsyncRedis | None = None

    # --- connection ---------------------------------------------------------------------------------
    async def connect(self) -> MessageBus:
        """Connect (robustly: aio-pika reconnects and restores channels, queues and consumers)."""
        if self._connection is None:
            use_ssl = tls.broker_use_ssl(self.settings) is not None
            ssl_context = tls.client_context(self.settings.tls) if use_ssl else None
            # aio-pika's connect_robust, over every node of a cluster's URL list (failover.py).
            self._connection = await failover.connect_robust(
                self.url,
                timeout=5,
                reconnect_interval=RECONNECT_INTERVAL,
                ssl_context=ssl_context,
                client_properties={"connection_name": self.connection_name},
            )
            channel = await self._connection.channel(publisher_confirms=True)
            self._publisher = ConfirmedPublisher(self._connection, channel)
        return self

    @property
    def connection(self) -> AbstractRobustConnection:
        """The open connection (RuntimeError before ``connect``)."""
        if self._connection is None:
            raise RuntimeError("MessageBus is not connected: await bus.connect() first")
        return self._connection

    @property
    def redis(self) -> AsyncRedis:
        """This client's asyncio Redis connection (subscriptions' record of handled ids, tradebus/seen.py):
        a delivery's repeat check is awaited on the loop, not run in a thread (a thread's wake-up cost a
        subscriber milliseconds per delivery on a busy machine)."""
        if self._redis is None:
            self._redis = async_client(  # through the sentinels when TRADEBUS_REDIS_SENTINELS names them
                self.settings.redis_url,
                self.settings.redis,
                connect_timeout=store.CONNECT_TIMEOUT,
                socket_timeout=store.SOCKET_TIMEOUT,
            )
        return self._redis

    async def close(self) -> None:
        """Stop the subscriptions (their queues go with them), then close the connection."""
        for subscription in self.subscriptions:
            await subscription.stop()
        self.subscriptions.clear()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._connection is not None:
            await self._connection.close()
        self._connection, self._publisher = None, None
        self._reply_keys.clear()

    async def __aenter__(self) -> MessageBus:
        return await self.connect()

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    # --- publishing ---------------------------------------------------------------------------------
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Envelope | Payload | dict[str, Any],
        *,
        strategy_id: int | None = None,
    ) -> str:
        """Validate and publish, confirmed; returns the message id. InvalidMessage (nothing sent) or
        PublishFailed."""
        message = client.outgoing(exchange, routing_key, payload, self.source)
        await self.send(message, strategy_id=strategy_id, routing_key=client.qualify(exchange, routing_key))
        return message.message_id

    async def publish_many(
        self, exchange: str, routing_key: str, payloads: Iterable[Envelope | Payload | dict[str, Any]]
    ) -> list[str]:
        """Validate every payload first (nothing sent if one is invalid), then publish them all with their
        confirms in flight together: the batched path of a market-data feed. Returns the message ids."""
        messages = [client.outgoing(exchange, routing_key, p, self.source) for p in payloads]
        await self.send_many(messages)
        return [m.message_id for m in messages]

    async def publish_candles(
        self, candles: Iterable[MarketData | dict[str, Any]], *, batch_size: int = feed.DEFAULT_BATCH
    ) -> list[str]:
        """Publish market data batched: up to ``batch_size`` candles of one pair per message
        (tradebus/letrade/feed.py), every batch validated before any is sent, their confirms in flight
        together. A feed's path to the seed's 10,000 candles/s. Returns the batches' message ids."""
        messages = feed.batches(candles, self.source, batch_size)
        await self.send_many(messages)
        return [m.message_id for m in messages]

    async def send(
        self,
        message: Envelope,
        *,
        strategy_id: int | None = None,
        headers: Mapping[str, Any] | None = None,
        routing_key: str | None = None,
    ) -> None:
        """Publish a validated message on its own route (``routing_key``: its key, already computed),
        with its priority, confirmed."""
        body, extra = wire(message, self.settings, strategy_id=strategy_id, headers=headers)
        await self.publish_raw(
            body,
            outgoing(
                self.topology,
                self.settings.signing,
                body,
                exchange=message.exchange,
                routing_key=routing_key or message.routing_key,
                message_id=message.message_id,
                headers=extra,
                persistent=message.route.persistent,
                priority=message.route.priority,
                trace=self.settings.tracing,
            ),
        )

    async def send_many(self, messages: Iterable[Envelope]) -> None:
        """Publish validated messages, each on its route, their confirms in flight together."""
        await asyncio.gather(*(self.send(m) for m in messages))

    async def dead_letter(self, dead: DeadLetter) -> None:
        """Publish a dead letter (tradebus/deadletter.py's ``letter``), persistent, confirmed."""
        await self.publish_raw(
            dead.body,
            outgoing(
                self.topology,
                self.settings.signing,
                dead.body,
                exchange=dead.exchange,
                routing_key=dead.routing_key,
                headers=dead.headers,
                persistent=True,
                content_encoding=dead.content_encoding,
            ),
        )

    async def publish_raw(self, body: bytes, properties: Mapping[str, Any]) -> None:
        """Publish ``body`` with ``properties`` (publisher.py's ``outgoing``), confirmed: again over a lost
        connection (never after a nack), PublishFailed when it cannot be (tradebus/letrade/confirms.py)."""
        if self._publisher is None:
            await self.connect()
        assert self._publisher is not None
        await self._publisher.publish(body, properties)

    # --- subscribing --------------------------------------------------------------------------------
    async def subscribe(self, pattern: str, handler: Handler | None = None) -> Subscription:
        """Call ``handler(topic, message)`` (sync or async) for every message ``pattern`` matches, on a
        queue, consumer and task of its own. Without a handler, iterate the subscription:
        ``async for topic, message in subscription``."""
        subscription = Subscription(self, pattern, handler, self.retry_policy, self.prefetch)
        await subscription.start()
        self.subscriptions.append(subscription)
        return subscription

    # --- request / response -------------------------------------------------------------------------
    async def request(
        self,
        routing_key: str,
        payload: Payload | dict[str, Any],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        message_id: str | None = None,
    ) -> Envelope:
        """Send a ``request.*`` message and await its ``response.*`` (matched by request id).

        Responses come on a queue of this client per response key, bound before the first request is
        sent. RequestTimeout when none comes in ``timeout`` seconds.
        """
        made = client.request(routing_key, payload, self.source, message_id)
        await self._reply_queue(made.response_key)
        answer: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._replies[made.request_id] = answer
        try:
            await self.send(made.message)
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError as exc:
            raise RequestTimeout(
                f"no {made.response_key} for request {made.request_id} within {timeout:g}s"
            ) from exc
        finally:
            self._replies.pop(made.request_id, None)

    async def _reply_queue(self, response_key: str) -> None:
        async with self._reply_lock:
            if response_key in self._reply_keys:
                return
            channel = await self.connection.channel()
            queue = await channel.declare_queue(
                exclusive=True, auto_delete=True, arguments={"x-dead-letter-exchange": letrade.DLX.name}
            )
            await queue.bind(letrade.REQUESTS.name, routing_key=response_key)

            async def take(delivery: aio_pika.abc.AbstractIncomingMessage) -> None:
                try:
                    answer = await self.admit(queue.name, response_key, delivery)
                except InvalidMessage as exc:
                    logger.warning("%s: dropping an invalid %s: %s", queue.name, response_key, exc)
                    await delivery.reject(requeue=False)  # the queue's dead-letter exchange keeps it
                    return
                await delivery.ack()
                waiting = self._replies.get(str(getattr(answer.payload, "request_id", "")))
                if waiting is not None and not waiting.done():
                    waiting.set_result(answer)

            await queue.consume(take)
            self._reply_keys.add(response_key)

    async def admit(
        self, queue: str, routing_key: str, delivery: aio_pika.abc.AbstractIncomingMessage
    ) -> Envelope:
        """A delivery as its message (client.py's ``admit``; in a thread when a JWT check asks Redis)."""
        admit = functools.partial(
            client.admit,
            self.settings,
            queue,
            routing_key,
            delivery.body,
            dict(delivery.headers or {}),
            content_type=delivery.content_type,
            message_id=delivery.message_id or "",
            redelivered=bool(delivery.redelivered),
        )
        return await asyncio.to_thread(admit) if self.settings.jwt.required else admit()

    # --- health -------------------------------------------------------------------------------------
    async def health_check(self) -> dict[str, object]:
        """The seed's health check: ``status`` (``healthy``, ``degraded``, ``unhealthy``) and
        ``queue_depth``, with what they are made of (tradebus/health.py); unhealthy when unreachable."""
        topology = self.topology
        workers = [q.name for q in topology.worker_queues]
        dead = [q.name for q in topology.dead_letter_queues]
        unrouted = [q.name for q in topology.unrouted_queues]
        stats: dict[str, QueueStats] = {}
        try:
            channel = await self.connection.channel()
            for name in [*workers, *dead, *unrouted]:
                try:
                    declared = await channel.declare_queue(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    stats[name] = QueueStats(None, None)
                    channel = await self.connection.channel()  # a missing queue closes the channel
                    continue
                result = declared.declaration_result
                stats[name] = QueueStats(result.message_count, result.consumer_count)
            await channel.close()
        except (*CONNECTION_LOST, RuntimeError) as exc:
            return {"status": "unhealthy", "queue_depth": None, "error": f"{type(exc).__name__}: {exc}"}
        return summary(stats, workers, dead, unrouted)
