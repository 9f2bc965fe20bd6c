"""Prometheus metrics of the stages: what each stage of each queue did with its deliveries, and how fast.

Every stage delivery is counted by Celery's own task signals (``task_prerun`` and ``task_postrun``, sent
by the worker around each task whether or not tradebus listens), plus one call where a stage dead-letters
(tradebus/stage.py), so nothing is added inside the stage's own code path. A batched pool's deliveries
(tradebus/batching.py) run inside one ``tradebus.batch`` task, without signals of their own: each is
counted by :func:`batched_delivery` as the signals would count a task of its own, and one its stage only
collected for a ``batch_handler`` when that has returned (the batch task's ``task_postrun``). Nothing is
counted until :func:`enable` connects the receivers: a worker with ``TRADEBUS_METRICS_PORT`` does it at start
(workers/exporter.py, which also serves ``/metrics`` and sets up prometheus_client's multiprocess mode for
the prefork pool).

Labels are ``queue`` (the stage's queue), ``stage`` (its task name), ``outcome`` (:class:`Outcome`),
``reason`` (:class:`tradebus.errors.Reason`, a dead letter's) and ``kind`` (a shard delivery's,
tradebus/sharding.py): fixed sets, so the series stay few.
prometheus_client is imported only by :func:`enable`, after the exporter has chosen its mode.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any

from celery import states
from celery.exceptions import Ignore, Retry
from celery.signals import task_postrun, task_prerun

from tradebus.headers import PUBLISHED_AT

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class Outcome(StrEnum):
    """What became of one delivery to a stage (the ``outcome`` label)."""

    #: The stage handled it.
    SUCCESS = "success"
    #: It went to the stage's DLQ (``tradebus_dead_letters_total`` says why).
    DEAD_LETTERED = "dead_lettered"
    #: A transient failure: a retry is scheduled.
    RETRIED = "retried"
    #: A repeat of a message the stage had handled: dropped.
    DUPLICATE = "duplicate"
    #: The task raised (a dead letter the broker did not confirm): RabbitMQ's dead-lettering keeps it.
    FAILED = "failed"


@dataclass(frozen=True)
class Metric:
    """One metric family tradebus exports: its name as scraped, type, labels and one-line help."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str

    @property
    def samples(self) -> tuple[str, ...]:
        """The sample names a scrape shows for it (a histogram's buckets, count and sum)."""
        if self.kind == "histogram":
            return tuple(f"{self.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        return (self.name,)


_STAGE = ("queue", "stage")
PROCESSED = Metric(
    "tradebus_messages_processed_total",
    "counter",
    (*_STAGE, "outcome"),
    "Deliveries a stage finished, by outcome (each attempt of a retried message counts).",
)
PROCESSING = Metric(
    "tradebus_processing_seconds",
    "histogram",
    _STAGE,
    "Time a stage spent on one delivery, from the task starting to its end (every outcome).",
)
PUBLISH_TO_START = Metric(
    "tradebus_publish_to_start_seconds",
    "histogram",
    _STAGE,
    "Time from a message's publication (x-tradebus-published-at) to its stage starting; first attempts.",
)
DEAD_LETTERS = Metric(
    "tradebus_dead_letters_total",
    "counter",
    (*_STAGE, "reason"),
    "Messages a stage sent to its dead-letter queue, by reason (x-tradebus-reason).",
)
RETRIES = Metric(
    "tradebus_retries_total", "counter", _STAGE, "Retries a stage scheduled after a transient failure."
)
REDELIVERIES = Metric(
    "tradebus_redeliveries_total",
    "counter",
    _STAGE,
    "Deliveries RabbitMQ marked redelivered (a worker died or lost its channel holding them).",
)
SHARD_DELIVERIES = Metric(
    "tradebus_shard_deliveries_total",
    "counter",
    (*_STAGE, "kind"),
    "Deliveries on a shard without the symbol header (no_symbol) or that hash to another shard "
    "(misplaced: the consistent-hash ring is out of order); tradebus/sharding.py.",
)
METRICS = (PROCESSED, PROCESSING, PUBLISH_TO_START, DEAD_LETTERS, RETRIES, REDELIVERIES, SHARD_DELIVERIES)

#: Latency buckets, seconds: sub-millisecond hops up to a message that waited out a 5-minute TTL.
BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
_STATE_OUTCOME = {
    states.SUCCESS: Outcome.SUCCESS,
    states.RETRY: Outcome.RETRIED,
    states.IGNORED: Outcome.DUPLICATE,
}
#: Attributes kept on the running delivery's Celery request between the two signals.
_STARTED = "tradebus_metrics_started"
_OUTCOME = "tradebus_metrics_outcome"
_ENTRY = "tradebus_metrics_batch_entry"
_ALONE = "tradebus_metrics_alone"


class _Stage:
    """The label children of one stage, looked up once (``labels()`` takes a lock and builds a key)."""

    def __init__(self, families: _Families, queue: str, stage: str) -> None:
        self.processed = {o: families.processed.labels(queue, stage, o.value) for o in Outcome}
        self.processing = families.processing.labels(queue, stage)
        self.publish_to_start = families.publish_to_start.labels(queue, stage)
        self.retries = families.retries.labels(queue, stage)
        self.redeliveries = families.redeliveries.labels(queue, stage)


class _Families:
    """The metric objects, registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        def counter(metric: Metric) -> Any:
            return Counter(metric.name, metric.help, metric.labels, registry=registry)

        def histogram(metric: Metric) -> Any:
            return Histogram(metric.name, metric.help, metric.labels, registry=registry, buckets=BUCKETS)

        self.registry = registry
        self.processed = counter(PROCESSED)
        self.processing = histogram(PROCESSING)
        self.publish_to_start = histogram(PUBLISH_TO_START)
        self.dead_letters = counter(DEAD_LETTERS)
        self.retries = counter(RETRIES)
        self.redeliveries = counter(REDELIVERIES)
        self.shard_deliveries = counter(SHARD_DELIVERIES)
        self.stages: dict[tuple[str, str], _Stage] = {}

    def stage(self, queue: str, name: str) -> _Stage:
        found = self.stages.get((queue, name))
        if found is None:
            found = self.stages[(queue, name)] = _Stage(self, queue, name)
        return found


_families: _Families | None = None


def enable(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Count every stage delivery of this process from now on, in ``registry`` (a new one by default);
    returns it. A worker's pool processes forked after this count too."""
    global _families
    if _families is None:
        from prometheus_client import CollectorRegistry

        _families = _Families(registry or CollectorRegistry(auto_describe=True))
        task_prerun.connect(_on_prerun, weak=False, dispatch_uid="tradebus.metrics.prerun")
        task_postrun.connect(_on_postrun, weak=False, dispatch_uid="tradebus.metrics.postrun")
    return _families.registry


def disable() -> None:
    """Stop counting (the receivers are disconnected; a later :func:`enable` starts from zero)."""
    global _families
    task_prerun.disconnect(dispatch_uid="tradebus.metrics.prerun")
    task_postrun.disconnect(dispatch_uid="tradebus.metrics.postrun")
    _batch.held = {}
    _families = None


def enabled() -> bool:
    """Whether this process counts stage deliveries."""
    return _families is not None


def dead_lettered(queue: str, stage: str, reason: str, request: Any = None) -> None:
    """Count a dead letter of ``stage`` with ``reason``; ``request``, the delivery the stage is running,
    then ends with the outcome ``dead_lettered``."""
    if _families is None:
        return
    _families.dead_letters.labels(queue, stage, str(reason)).inc()
    if request is not None:
        setattr(request, _OUTCOME, Outcome.DEAD_LETTERED)


def shard_delivery(queue: str, stage: str, kind: str) -> None:
    """Count a delivery on shard ``queue`` that is not where tradebus computes it (``kind``: no_symbol,
    misplaced)."""
    if _families is not None:
        _families.shard_deliveries.labels(queue, stage, kind).inc()


def delivery_started(task: Any) -> None:
    """The current delivery of stage ``task`` (its ``request``) starts: Celery's ``task_prerun`` for a task
    of its own, tradebus/batching.py for each delivery of a batch. A task that is no stage (no
    ``queue_name``: a periodic task, the batch task itself) is not counted."""
    families = _families
    queue = getattr(task, "queue_name", None)
    if families is None or queue is None:
        return
    request = task.request
    setattr(request, _OUTCOME, None)
    held = _held_for(request)
    setattr(request, _ALONE, held is not None)
    if held is not None:  # run again alone after its batch's handler failed: one delivery, counted once
        setattr(request, _STARTED, held.started)
        return
    setattr(request, _STARTED, time.perf_counter())
    children = families.stage(queue, task.name)
    if (request.delivery_info or {}).get("redelivered"):
        children.redeliveries.inc()
    if not request.retries:
        published = (request.headers or {}).get(PUBLISHED_AT)
        if published:
            # A header that is no number is not measured; the stage still runs.
            with contextlib.suppress(TypeError, ValueError):
                children.publish_to_start.observe(max(0.0, time.time() - float(published)))


def delivery_finished(task: Any, state: str | None) -> None:
    """The current delivery of stage ``task`` ended in Celery ``state`` (SUCCESS, RETRY, IGNORED, anything
    else: failed) unless the stage dead-lettered it (:func:`dead_lettered`): count it."""
    families = _families
    request = getattr(task, "request", None)
    started = getattr(request, _STARTED, None)
    if families is None or started is None:
        return
    setattr(request, _STARTED, None)
    children = families.stage(task.queue_name, task.name)
    outcome = getattr(request, _OUTCOME, None) or _STATE_OUTCOME.get(state or "", Outcome.FAILED)
    _count(children, outcome, time.perf_counter() - started)


def _count(children: _Stage, outcome: Outcome, seconds: float) -> None:
    children.processing.observe(seconds)
    children.processed[outcome].inc()
    if outcome is Outcome.RETRIED:
        children.retries.inc()


class _Held:
    """A batched delivery its stage validated and handed to the stage's ``batch_handler``: counted when
    that returns (the batch task ends), or run again alone if it failed."""

    __slots__ = ("children", "entry", "started")

    def __init__(self, entry: Any, children: _Stage, started: float) -> None:
        self.entry, self.children, self.started = entry, children, started


#: The held deliveries of the batch this thread runs (a threads pool runs one task per thread at a time),
#: by the identity of the batch's item (the same object when it runs again alone).
_batch = threading.local()


def _held() -> dict[int, _Held]:
    held: dict[int, _Held] | None = getattr(_batch, "held", None)
    if held is None:
        held = _batch.held = {}
    return held


def _held_for(request: Any) -> _Held | None:
    entry = getattr(request, _ENTRY, None)
    if entry is None:
        return None
    return _held().pop(id(entry), None)


class _BatchedDelivery:
    """Counts one delivery of a batch (tradebus/batching.py ``_run_one``), which runs without Celery's
    signals: Retry is retried, Ignore a duplicate, another exception failed, else success; a delivery a
    stage with a ``batch_handler`` only collected is held until the batch task ends (``task_postrun``)."""

    __slots__ = ("entry", "task")

    def __init__(self, task: Any, entry: Any) -> None:
        self.task, self.entry = task, entry

    def __enter__(self) -> None:
        setattr(self.task.request, _ENTRY, self.entry)
        delivery_started(self.task)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, request = self.task, self.task.request
        if exc is None:
            state = states.SUCCESS
        elif isinstance(exc, Retry):
            state = states.RETRY
        elif isinstance(exc, Ignore):
            state = states.IGNORED
        else:
            state = states.FAILURE
        started, families = getattr(request, _STARTED, None), _families
        if (
            state == states.SUCCESS
            and task.batch_handler is not None
            and getattr(request, _OUTCOME, None) is None
            and started is not None
            and families is not None
            and not getattr(request, _ALONE, False)
        ):
            # Collected for the batch's handler: its outcome is known once that has returned.
            setattr(request, _STARTED, None)
            children = families.stage(task.queue_name, task.name)
            _held()[id(self.entry)] = _Held(self.entry, children, started)
            return
        delivery_finished(task, state)


_OFF = contextlib.nullcontext()


def batched_delivery(task: Any, entry: Any) -> contextlib.AbstractContextManager[None]:
    """Count the delivery of a batch, ``entry`` (the batch's item), that stage ``task`` runs in the block
    (with the delivery's request pushed); nothing when metrics are off."""
    if _families is None:
        return _OFF
    return _BatchedDelivery(task, entry)


def _on_prerun(sender: Any = None, task: Any = None, **_: Any) -> None:
    delivery_started(task)


def _on_postrun(sender: Any = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    held = getattr(_batch, "held", None)
    if held:  # the batch task ended: its handler took every delivery still held
        _batch.held = {}
        now = time.perf_counter()
        for one in held.values():
            _count(one.children, Outcome.SUCCESS, now - one.started)
    delivery_finished(task, state)
