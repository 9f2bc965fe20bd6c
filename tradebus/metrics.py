"""Prometheus metrics of the stages: what each stage of each queue did with its deliveries, and how fast.

Every stage delivery is counted by Celery's own task signals (``task_prerun`` and ``task_postrun``, sent
by the worker around each task whether or not tradebus listens), plus one call where a stage dead-letters
(tradebus/stage.py), so nothing is added inside the stage's own code path. Nothing is counted until
:func:`enable` connects the receivers: a worker with ``TRADEBUS_METRICS_PORT`` does it at start
(workers/exporter.py, which also serves ``/metrics`` and sets up prometheus_client's multiprocess mode for
the prefork pool).

Labels are ``queue`` (the stage's queue), ``stage`` (its task name), ``outcome`` (:class:`Outcome`) and
``reason`` (:class:`tradebus.errors.Reason`): fixed sets, so the series stay few.
prometheus_client is imported only by :func:`enable`, after the exporter has chosen its mode.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from celery import states
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
METRICS = (PROCESSED, PROCESSING, PUBLISH_TO_START, DEAD_LETTERS, RETRIES, REDELIVERIES)

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


def _on_prerun(sender: Any = None, task: Any = None, **_: Any) -> None:
    families = _families
    queue = getattr(task, "queue_name", None)
    if families is None or queue is None:  # not a stage (a periodic task, Celery's own)
        return
    request = task.request
    setattr(request, _STARTED, time.perf_counter())
    setattr(request, _OUTCOME, None)
    children = families.stage(queue, task.name)
    if (request.delivery_info or {}).get("redelivered"):
        children.redeliveries.inc()
    if not request.retries:
        published = (request.headers or {}).get(PUBLISHED_AT)
        if published:
            # A header that is no number is not measured; the stage still runs.
            with contextlib.suppress(TypeError, ValueError):
                children.publish_to_start.observe(max(0.0, time.time() - float(published)))


def _on_postrun(sender: Any = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    families = _families
    request = getattr(task, "request", None)
    started = getattr(request, _STARTED, None)
    if families is None or started is None:
        return
    children = families.stage(task.queue_name, task.name)
    children.processing.observe(time.perf_counter() - started)
    outcome = getattr(request, _OUTCOME, None) or _STATE_OUTCOME.get(state or "", Outcome.FAILED)
    children.processed[outcome].inc()
    if outcome is Outcome.RETRIED:
        children.retries.inc()
    setattr(request, _STARTED, None)
