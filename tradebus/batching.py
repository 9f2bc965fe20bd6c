"""Consumer-side batching: a market-data pool's worker hands a pool process many deliveries at once.

The seed's scaling section asks consumers to take up to 100 messages or 1 s and process them as one batch.
A queue's pool profile says so (``PoolProfile.batch_size``, ``batch_ms``, ``batch_keys``;
routing/mastertrade/pools.py). The worker's main process (tradebus/consumer.py) then keeps each plain
delivery of that queue in a :class:`Batcher` instead of making it a Celery task message, and hands the
stage one Celery task, ``tradebus.batch``, carrying every buffered delivery:

* at once when a pool process is free and the delivery is not part of a stream (deliveries have been
  arriving ``STREAM_GAP_SECONDS`` apart or more, on a moving average: an isolated tick waits for nothing);
* in a stream, as soon as a pool process is free and the last batch left at least ``LINGER_SECONDS`` ago
  (a stream is gathered 25 ms at a time, which is what frees the CPU: the cost of a Celery task is paid
  once per batch), shared among the free processes, in parts of at least ``MIN_PART``, when the pool has
  several (a burst keeps them busy);
* at once when ``batch_size`` deliveries are waiting (at most half the prefetch window, so the next batch
  gathers while one runs: tradebus/consumer.py ``batch_limit``);
* at the latest ``batch_ms`` after the oldest of them arrived, whatever the pool is doing.

The pool process validates and runs each delivery on its own (``run_batch``): an invalid one is
dead-lettered alone with its reason, a transient failure retried alone, and the rest of the batch runs.
Each runs as Celery's current task (``delivery_id()`` is its own id, not the batch's). Every delivery of
a batch is acknowledged when the batch task returns (:class:`BatchMessage`), but one the stage could not
even dead-letter, requeued alone (:class:`BatchRequest`); all are rejected back to their queue when the
pool process dies running it, so the whole batch is redelivered (the batch task has
``reject_on_worker_lost``; the market-data stages are idempotent: the latest price per symbol, candles by
their open time), and a redelivery is never batched again (tradebus/consumer.py). Why not celery-batches:
docs/performance.md.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery._state import pop_current_task, push_current_task
from celery.exceptions import Ignore, Retry
from celery.utils.log import get_task_logger
from celery.worker.request import Request
from kombu.message import Message

from tradebus import handling, metrics, store
from tradebus.errors import DeliveriesFailed

logger = get_task_logger(__name__)
#: The Celery task that runs one batch of a stage's deliveries in a pool process.
BATCH_TASK = "tradebus.batch"
#: How long a stream of deliveries is gathered, at least, before the next batch goes to a free process.
LINGER_SECONDS = 0.025
#: The fewest deliveries a batch is split to when several pool processes are free.
MIN_PART = 10
#: Deliveries arriving closer than this apart, on a moving average, are a stream (gathered, LINGER_SECONDS);
#: further apart, each goes to a free pool process at once.
STREAM_GAP_SECONDS = 0.005
#: The weight of the newest gap in that moving average.
GAP_WEIGHT = 0.2
#: The embed part of a protocol-2 body: no callbacks, no chain, no chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Delivery properties a stage reads (JSON-safe: py-amqp gives ``timestamp`` as a datetime).
_PROPERTIES = ("message_id", "delivery_mode", "priority", "correlation_id", "reply_to", "app_id", "type")


def item(message: Message, text: str, task_id: str, headers: dict[str, Any]) -> dict[str, Any]:
    """One delivery of a batch: its body, id, own headers, the properties and route a stage reads."""
    properties = message.properties or {}
    delivery = message.delivery_info or {}
    return {
        "body": text,
        "id": task_id,
        "headers": headers,
        "properties": {k: properties[k] for k in _PROPERTIES if properties.get(k) is not None},
        "delivery_info": {
            "exchange": delivery.get("exchange"),
            "routing_key": delivery.get("routing_key"),
            "redelivered": bool(delivery.get("redelivered")),
            "priority": properties.get("priority"),
        },
    }


class BatchMessage(Message):  # type: ignore[misc]
    """The deliveries of one batch as one Kombu message: acknowledging or rejecting it does so to each."""

    def __init__(
        self, deliveries: list[Message], stage: str, items: list[dict[str, Any]], done: Callable[[], None]
    ):
        first = deliveries[0]
        batch_id = f"batch-{uuid.uuid4().hex}"
        headers = {
            "lang": "py",
            "task": BATCH_TASK,
            "id": batch_id,
            "root_id": batch_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "argsrepr": f"<{len(items)} deliveries for {stage}>",
            "kwargsrepr": "{}",
        }
        super().__init__(
            body=json.dumps([[stage, items], {}, _EMBED]),
            delivery_tag=first.delivery_tag,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_info=first.delivery_info,
            properties={},
            headers=headers,
            accept=first.accept,
            channel=first.channel,
        )
        self.deliveries = deliveries
        self._done = done

    def ack(self, multiple: bool = False) -> None:
        """Acknowledge every delivery of the batch."""
        if self.acknowledged:
            return
        self._state = "ACK"
        try:
            for delivery in self.deliveries:
                delivery.ack()
        finally:
            self._done()

    def reject(self, requeue: bool = False) -> None:
        """Reject every delivery of the batch (back to its queue when ``requeue``)."""
        if self.acknowledged:
            return
        self._state = "REQUEUED" if requeue else "REJECTED"
        try:
            for delivery in self.deliveries:
                delivery.reject(requeue=requeue)
        finally:
            self._done()

    def requeue(self) -> None:
        """Every delivery of the batch back to its queue."""
        self.reject(requeue=True)

    def settle(self, failed: list[int]) -> None:
        """Acknowledge the batch's deliveries but those at positions ``failed``: back to their queue."""
        if self.acknowledged:
            return
        self._state = "ACK"
        try:
            for position, delivery in enumerate(self.deliveries):
                if position in failed:
                    delivery.reject(requeue=True)
                else:
                    delivery.ack()
        finally:
            self._done()


class BatchRequest(Request):  # type: ignore[misc]
    """Celery's request of a ``tradebus.batch`` task: a batch failed by some of its deliveries
    (DeliveriesFailed) acknowledges the others and requeues only those; any other failure is Celery's."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = exc_info.exception
        exc = exc.exc if isinstance(exc, ExceptionWithTraceback) else exc
        if isinstance(exc, DeliveriesFailed) and isinstance(self.message, BatchMessage):
            self.message.settle(exc.positions)
            self.acknowledged = True  # Celery's own acknowledgement or rejection of it does nothing more
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class Batcher:
    """The deliveries of one stage waiting for a pool process, and when they go (see the module's doc)."""

    def __init__(
        self,
        stage: str,
        limit: int,
        max_wait: float,
        processes: int,
        hub: Any,
        handle: Callable[[Message], Any],
    ) -> None:
        self.stage, self.limit, self.max_wait, self.processes = stage, limit, max_wait, processes
        self.hub, self.handle = hub, handle
        self.deliveries: list[Message] = []
        self.items: list[dict[str, Any]] = []
        self.in_flight = 0
        # Created on the first delivery: what is already queued (a backlog at start) is gathered first.
        self.last_flush = self.last_arrival = time.monotonic()
        #: The moving average of the gaps between deliveries: 0 at first, a stream (a backlog at start).
        self.gap = 0.0
        self.first_at = 0.0
        self._soon: Any = None
        self._deadline: Any = None

    def add(self, message: Message, entry: dict[str, Any]) -> None:
        """Buffer one delivery; send the batch if it is full or a process is free."""
        now = time.monotonic()
        self.gap += GAP_WEIGHT * (now - self.last_arrival - self.gap)
        self.last_arrival = now
        if not self.deliveries:
            self.first_at = now
            self._deadline = self.hub.call_later(self.max_wait, self.flush)
        self.deliveries.append(message)
        self.items.append(entry)
        if len(self.deliveries) >= self.limit:
            self.flush()
        else:
            self._maybe_flush(at_once=self.gap >= STREAM_GAP_SECONDS)

    def _maybe_flush(self, at_once: bool = False) -> None:
        """Flush now if a process is free and the delivery is alone (``at_once``) or the last batch is old
        enough; else when it will be."""
        if (
            not self.deliveries
            or self.in_flight >= self.processes
            or (self._soon is not None and not at_once)
        ):
            return
        wait = 0.0 if at_once else self.last_flush + LINGER_SECONDS - time.monotonic()
        if wait <= 0:
            self.flush()
        else:
            self._soon = self.hub.call_later(wait, self._linger_done)

    def _linger_done(self) -> None:
        self._soon = None
        self._maybe_flush()

    def _finished(self) -> None:
        """A batch was acknowledged or rejected: its process is free for the next (at once for what is not
        part of a stream)."""
        self.in_flight -= 1
        self._maybe_flush(at_once=self.gap >= STREAM_GAP_SECONDS)

    def flush(self) -> None:
        """Hand every buffered delivery to a pool process as one batch task."""
        for entry in (self._soon, self._deadline):
            if entry is not None:
                entry.cancel()
        self._soon = self._deadline = None
        if not self.deliveries:
            return
        deliveries, items = self.deliveries, self.items
        self.deliveries, self.items = [], []
        self.last_flush = time.monotonic()
        # Shared among the free processes, a part each of at least MIN_PART deliveries: a burst keeps the
        # pool's processes busy, but a few deliveries are not split into batches of one, each paying a
        # task's cost (on a machine with fewer cores than processes, that cost is all a split buys).
        parts = max(1, min(self.processes - self.in_flight, len(deliveries) // MIN_PART))
        size, longer = divmod(len(deliveries), parts)  # even parts: the first ``longer`` one more
        start = 0
        for index in range(parts):
            end = start + size + (1 if index < longer else 0)
            self.in_flight += 1
            self.handle(BatchMessage(deliveries[start:end], self.stage, items[start:end], self._finished))
            start = end


def run_batch(task: Any, stage: str, items: list[dict[str, Any]]) -> int:
    """The ``tradebus.batch`` task, in a pool process: ``stage`` runs each delivery as if it came alone.

    Each gets its own request (id, headers, route, properties), its own validation, dead letter or retry.
    A stage with a ``batch_handler`` (the latest price per symbol) then handles the valid ones at once, and
    only then are they noted as handled (tradebus/seen.py); if it fails, each runs alone through the stage's
    own handler (validated and recorded once, in the first pass). Returns how many ran. Deliveries the stage
    could not even dead-letter fail the batch once every other delivery has run (DeliveriesFailed): only they
    are rejected back to their queue (:class:`BatchRequest`), the others are acknowledged.
    """
    runner = task.app.tasks[stage]
    collected: list[tuple[int, Any, str | None]] = []
    position = [0]
    own = runner.__dict__.get("handler")  # the stage's handler is a class attribute unless patched
    if runner.batch_handler is not None:  # valid messages are collected, then handled at once

        def collect(message: Any) -> object:
            collected.append((position[0], message, runner.publisher_id()))
            return handling.COLLECTED  # not handled yet: nothing noted as handled

        runner.handler = collect
    failed: list[int] = []
    try:
        for index, entry in enumerate(items):
            position[0] = index
            if _run_one(runner, entry) is not None:
                failed.append(index)
    finally:
        runner.__dict__.pop("handler", None)
        if own is not None:
            runner.handler = own
    if collected:
        _handle_collected(runner, items, collected, failed)
    _count(runner.queue_name, len(items))
    if failed:
        raise DeliveriesFailed(sorted(failed))
    return len(items)


def _handle_collected(
    runner: Any, items: list[dict[str, Any]], collected: list[tuple[int, Any, str | None]], failed: list[int]
) -> None:
    """The stage's batch handler on the collected messages; if it fails, its own handler on each."""
    try:
        runner.batch_handler([message for _, message, _ in collected])
    except Exception as exc:  # noqa: BLE001 - each message then runs alone, to retry or dead-letter alone
        logger.warning("%s: a batch's handler failed (%s); running its messages one by one", runner.name, exc)
        for index, message, message_id in collected:
            if _handle_alone(runner, items[index], message, message_id) is not None:
                failed.append(index)
        return
    for index, _, message_id in collected:
        with _delivery(runner, items[index]):
            handling.note(runner, message_id)


@contextmanager
def _delivery(runner: Any, entry: dict[str, Any]) -> Iterator[None]:
    """``runner`` running ``entry`` under its own request, as Celery's current task (what
    ``tradebus.stage.delivery_id`` and every ``current_task`` reader see, not the batch task)."""
    properties = entry["properties"]
    runner.push_request(
        id=entry["id"],
        root_id=entry["id"],
        args=[entry["body"]],
        kwargs={},
        headers=entry["headers"],
        properties=properties,
        delivery_info=entry["delivery_info"],
        reply_to=properties.get("reply_to"),
        correlation_id=properties.get("correlation_id"),
        retries=0,
        called_directly=False,
        is_eager=False,
    )
    push_current_task(runner)
    try:
        yield
    finally:
        pop_current_task()
        runner.pop_request()


def _handle_alone(runner: Any, entry: dict[str, Any], message: Any, message_id: str | None) -> Any:
    """The stage's own handler on one collected message (validated and recorded already); the exception
    it failed with, if any."""
    with _delivery(runner, entry):
        try:
            # Counted once, as it ran alone (metrics held it while its batch's handler had it).
            with metrics.batched_delivery(runner, entry):
                if handling.handle(runner, entry["body"], message)[0]:
                    handling.note(runner, message_id)
        except (Retry, Ignore):  # a retry already sent: acknowledged with the batch
            return None
        except Exception as exc:  # a dead letter not confirmed: back to its queue alone
            logger.exception("%s: delivery %s of a batch failed", runner.queue_name, entry["id"])
            return exc
    return None


def _run_one(runner: Any, entry: dict[str, Any]) -> BaseException | None:
    """Run one delivery of a batch under its own request; the exception it failed the stage with, if any."""
    with _delivery(runner, entry):
        try:
            with metrics.batched_delivery(
                runner, entry
            ):  # no Celery signals here: counted as a task would be
                runner.run_stage(entry["body"])
        except (Retry, Ignore):  # a retry already sent, a repeat dropped: acknowledged with the batch
            return None
        except Exception as exc:  # the rest of the batch runs first
            logger.exception("%s: delivery %s of a batch failed", runner.queue_name, entry["id"])
            return exc
    return None


def _count(queue: str, deliveries: int) -> None:
    """Count the batch and its deliveries (``tradebus`` metrics ``batches:<queue>``, ``batched:<queue>``).

    Written at once, not with the recorder's buffer: a pool process killed mid-batch would lose the
    buffered counts of the batches it finished, and the counts would no longer add up."""
    try:
        pipe = store.client().pipeline(transaction=False)
        pipe.hincrby(store.key("metrics"), f"batches:{queue}", 1)
        pipe.hincrby(store.key("metrics"), f"batched:{queue}", deliveries)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001 - observability must never cost a message
        logger.warning("%s: could not count a batch: %s", queue, exc)
