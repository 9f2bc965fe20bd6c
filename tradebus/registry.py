"""Which app runs which stage: stages and tasks register on the apps of the bus their module belongs to.

``stage(name, queue=..., accepts=..., base=...)`` makes ``fn(message)`` a stage task (tradebus/stage.py) of
every app whose topology lists ``fn``'s module in its ``stage_modules``, now or when such an app finalizes:
Celery's own ``shared_task`` mechanism, limited to one bus, so a process may hold both buses' apps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery
from celery._state import _get_active_apps, connect_on_app_finalize
from celery.local import Proxy

from tradebus.application import current
from tradebus.batching import BATCH_TASK, BatchRequest, run_batch
from tradebus.stage import StageTask

R = TypeVar("R")


def _attach(module: str, register: Callable[[Celery], Any]) -> None:
    """Run ``register(app)`` for every app whose topology lists ``module``, now and when one finalizes.

    Celery's own ``shared_task`` mechanism, limited to the apps of the bus the module belongs to: one
    process may hold both buses' apps, and a MasterTrade stage has no place on Letrade's.
    """

    def attach(app: Celery) -> None:
        topology = getattr(app, "topology", None)
        if topology is not None and module in topology.stage_modules:
            register(app)

    connect_on_app_finalize(attach)
    for app in _get_active_apps():
        if app.finalized:
            with app._finalize_mutex:
                attach(app)


def _batch_task(app: Celery) -> None:
    """Every tradebus app runs batches of its batched pools (tradebus/batching.py): a task redelivered
    whole when the process running it dies."""
    if getattr(app, "topology", None) is not None and BATCH_TASK not in app.tasks:
        app._task_from_fun(
            run_batch,
            name=BATCH_TASK,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            typing=False,
            Request=BatchRequest,
        )


connect_on_app_finalize(_batch_task)


def task(name: str, **options: Any) -> Callable[[Callable[..., R]], Any]:
    """A plain Celery task ``name`` (beat's periodic report), on the apps whose topology lists its module."""

    def decorate(fn: Callable[..., R]) -> Any:
        _attach(fn.__module__, lambda app: app._task_from_fun(fn, name=name, **options))
        return Proxy(lambda: current().tasks[name])

    return decorate


def stage(
    name: str,
    *,
    queue: str,
    accepts: type[Any] | tuple[type[Any], ...],
    base: type[StageTask],
    keys: tuple[str, ...] = (),
    batch_handler: Callable[[list[Any]], Any] | None = None,
    **options: Any,
) -> Callable[[Callable[[Any], R]], Any]:
    """Make ``fn(message)`` the stage task ``name`` of ``queue``; ``options`` go to Celery's task.

    The task is registered on every app whose topology lists ``fn``'s module (its ``stage_modules``); the
    value returned stands for it on the current tradebus app (``tradebus.application.current``), like
    ``shared_task``'s on Celery's current app. Stages that share a queue
    (a Letrade service's inbox) each take the routing keys matching ``keys``. A stage of one of the
    topology's critical queues is redelivered when the pool process running it dies. The stage of a
    sharded queue (``Topology.shards``) is registered once per shard, ``name`` on shard 0 and
    ``name.<i>`` on shard i (``shard_task_name``): every per-queue thing (retries, dead letters, counts)
    then belongs to the shard the message is on. ``batch_handler``,
    when given, takes a batch's valid messages at once (tradebus/batching.py) instead of ``fn`` one by one.
    """
    accepted = accepts if isinstance(accepts, tuple) else (accepts,)

    def decorate(fn: Callable[[Any], R]) -> Any:
        def run(self: StageTask, payload: Any) -> Any:
            return self.run_stage(payload)

        run.__name__ = fn.__name__
        run.__qualname__ = fn.__qualname__
        run.__doc__ = fn.__doc__
        run.__module__ = fn.__module__

        def register_on(app: Celery, task_name: str, queue_name: str) -> StageTask:
            critical = {"reject_on_worker_lost": True} if queue_name in app.topology.critical_queues else {}
            registered: StageTask = app._task_from_fun(
                run,
                bind=True,
                base=base,
                name=task_name,
                queue_name=queue_name,
                keys=keys,
                accepts=accepted,
                handler=staticmethod(fn),
                batch_handler=staticmethod(batch_handler) if batch_handler else None,
                **(critical | options),
            )
            return registered

        def register(app: Celery) -> StageTask:
            topology = app.topology
            if queue in topology.sharded:
                shards = topology.sharded[queue].queues
                tasks = [register_on(app, shard_task_name(name, i), q) for i, q in enumerate(shards)]
                return tasks[0]
            if queue not in topology.queues_by_name:
                raise KeyError(f"stage {name}: no queue {queue!r} in the {topology.name} topology")
            return register_on(app, name, queue)

        _attach(fn.__module__, register)
        return Proxy(lambda: current().tasks[name])

    return decorate


def shard_task_name(name: str, index: int) -> str:
    """The name of stage ``name`` on shard ``index`` of its queue: ``name`` itself on shard 0, so that
    ``stage.delay(message)`` works whether the queue is sharded or not (the broker picks the shard)."""
    return name if index == 0 else f"{name}.{index}"


def stages_of_queues(celery_app: Celery) -> dict[str, list[StageTask]]:
    """The app's stage tasks, by the queue they consume (several when they share it, by key)."""
    celery_app.loader.import_default_modules()
    stages: dict[str, list[StageTask]] = {}
    for registered in celery_app.tasks.values():
        if isinstance(registered, StageTask):
            stages.setdefault(registered.queue_name, []).append(registered)
    return stages


def stage_tasks(celery_app: Celery) -> dict[str, StageTask]:
    """The first registered stage task of every queue (MasterTrade has one stage per queue)."""
    return {queue: tasks[0] for queue, tasks in stages_of_queues(celery_app).items()}
