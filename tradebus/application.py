"""The Celery app factory: ``create_app(topology, settings)`` builds the app of one bus.

The app carries its :class:`~routing.Topology` and :class:`~tradebus.settings.Settings`; the consumer, the
stages, the publisher and the worker read them from the app they run under, so one process can hold the
apps of both buses. ``celery -A tradebus`` finds the default app (``tradebus.application``), built from the
environment on first use (``TRADEBUS_TOPOLOGY``, ``TRADEBUS_QUEUE_TYPE``, ``TRADEBUS_*``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from copy import copy
from functools import cache
from typing import Any

from celery import Celery
from celery._state import get_current_app, get_current_task
from kombu.utils.objects import cached_property

import tradebus.memory  # noqa: F401 - memory:// deliveries name their consumer tag, as RabbitMQ's do
from routing import Topology, build
from tradebus import tls
from tradebus.replication import celery_backend
from tradebus.settings import Settings

#: The environment variable naming the default app's topology (``mastertrade`` or ``letrade``).
TOPOLOGY_ENV = "TRADEBUS_TOPOLOGY"


class TradebusCelery(Celery):  # type: ignore[misc]
    """Celery, with the bus's topology and settings, and a worker sized from the topology's pools."""

    topology: Topology
    settings: Settings

    @cached_property  # type: ignore[untyped-decorator]
    def Worker(self) -> Any:  # noqa: N802 - Celery's own attribute name
        return self.subclass_with_self("workers.profiled:ProfiledWorker")


def celery_config(topology: Topology, settings: Settings) -> dict[str, Any]:
    """What ``celeryconfig`` leaves to the bus: broker, results, queues, stage modules, beat, routes."""
    # Celery fills in a default exchange on the queues it is given; hand it copies so the topology's data
    # stays as declared.
    task_queues = [copy(queue) for queue in topology.worker_queues]
    if not settings.declare_topology:
        # A least-privilege worker (TRADEBUS_DECLARE_TOPOLOGY=0) may not declare: it consumes what the
        # topology service declared, and its retries do not redeclare their queue (docs/security.md).
        for queue in task_queues:
            queue.no_declare = True
    # With sentinels, Celery's own sentinel:// backend (tradebus/replication.py): it finds the master anew
    # after a failover, as the state store does.
    backend, backend_options = celery_backend(settings.redis_url, settings.redis)
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": backend,
        "task_queues": task_queues,
        "include": list(topology.stage_modules),
        "beat_schedule": {name: dict(entry) for name, entry in topology.beat_schedule.items()},
        "task_routes": {name: dict(route) for name, route in topology.task_routes.items()},
    }
    if backend_options:
        config["result_backend_transport_options"] = backend_options
    # amqps:// with the CA and client certificate from TRADEBUS_BROKER_*_FILE (tradebus/tls.py).
    if (broker_ssl := tls.broker_use_ssl(settings)) is not None:
        config["broker_use_ssl"] = broker_ssl
    if (redis_ssl := tls.redis_backend_use_ssl(settings)) is not None:
        config["redis_backend_use_ssl"] = redis_ssl
    return config


def topology_for(name: str, settings: Settings) -> Topology:
    """Profile ``name``'s topology with the options the settings give (``TRADEBUS_MARKET_DATA_SHARDS``,
    ``TRADEBUS_QUEUE_TYPE``); ValueError for an unknown profile or an option it does not build."""
    return build(name, market_data_shards=settings.market_data_shards, queue_type=settings.queue_type)


def create_app(topology: Topology, settings: Settings, *, main: str = "tradebus") -> TradebusCelery:
    """A Celery app of ``topology``'s bus with ``settings``, its stage modules imported (their stages
    register on it, tradebus/registry.py)."""
    app = TradebusCelery(main, set_as_current=False)
    app.topology = topology
    app.settings = settings
    app.config_from_object("celeryconfig")
    app.conf.update(celery_config(topology, settings))
    app.loader.import_default_modules()
    return app


@cache
def default_app() -> TradebusCelery:
    """The app ``celery -A tradebus`` runs: topology and settings from the environment, read once."""
    import os

    settings = Settings.from_env()
    app = create_app(topology_for(os.environ.get(TOPOLOGY_ENV) or "mastertrade", settings), settings)
    app.set_current()
    app.set_default()
    return app


#: The app of the stage this thread is running (``running``): the cheapest answer to ``current()``, which
#: stages ask several times per message (every Redis key).
_running = threading.local()


@contextmanager
def running(app: TradebusCelery) -> Iterator[None]:
    """Mark ``app`` as the app this thread runs a stage of, for the stage's duration (tradebus/stage.py)."""
    previous = getattr(_running, "app", None)
    _running.app = app
    try:
        yield
    finally:
        _running.app = previous


def current() -> TradebusCelery:
    """The app this code runs under: the running stage's or task's, else Celery's current app when it is a
    tradebus app, else the default app (another Celery app of the process, an inspector, never stands in)."""
    app = getattr(_running, "app", None)
    if app is not None:
        return app  # type: ignore[no-any-return]
    task = get_current_task()
    if task is not None and isinstance(task.app, TradebusCelery):
        return task.app
    app = get_current_app()
    return app if isinstance(app, TradebusCelery) else default_app()


@contextmanager
def using(app: TradebusCelery) -> Iterator[TradebusCelery]:
    """Make ``app`` Celery's current and default app for a while (a command, a demo, a benchmark run),
    then give both back: code that finds its app through Celery, in any thread, finds this one."""
    from celery import _state

    current, default = _state._tls.current_app, _state.default_app
    app.set_current()
    app.set_default()
    try:
        yield app
    finally:
        _state._tls.current_app = current
        _state.default_app = default


def current_settings() -> Settings:
    """The settings of the app this code runs under (:func:`current`)."""
    return current().settings
