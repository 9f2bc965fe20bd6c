"""A Celery worker that takes its pool size and prefetch from the profile of the queues it consumes.

``celery -A tradebus worker -Q order_requests`` with no other flag starts 3 processes with a prefetch
multiplier of 1; an explicit ``-c`` or ``--prefetch-multiplier`` (or the matching argument when the worker is
built from Python) still wins, except that a worker consuming a shard queue refuses more than one process
(ShardConcurrency: a symbol's ticks are processed in order).

The pool type is the profile's too (``PoolProfile.pool``): ``-Q letrade.exchange_connector`` runs a
``threads`` pool of 2 threads, everything else ``prefork``; an explicit ``-P`` wins, and a worker of several
queues whose profiles differ runs ``prefork`` (workers/profiles.py ``pool_type``). A threads pool forks
nothing: what a prefork child sets up after its fork (tradebus/recorder.py's writer thread,
tradebus/tracing.py's provider) is set up once in the worker's own process, on first use, as in a child.

A worker of batched market-data pools only (every key of each queue batched, and a prefetch window of at
least 4, so it batches) runs at a lower CPU priority (``nice`` 5, and its session group's too when it leads
its session: workers/cpu.py), so signals, orders and fills run first when the machine is short of CPU.
``letrade.market_data`` is not niced: its ``market_data_request`` key is not batched, and a caller waits for
each answer.

It runs without mingle and gossip (as ``--without-mingle --without-gossip``) unless they are asked for:
mingle broadcasts ``hello`` to every worker at start, which a service's user may not (only operators may
command workers: tradebus/ops/remote_control.py), and gossip consumes every worker's events and acts on
``worker.elect`` events anyone who sends events could forge. tradebus uses neither.

With ``TRADEBUS_METRICS_PORT`` it serves its pool's Prometheus metrics (workers/exporter.py), set up in the
main process before the pool's processes (or threads) start.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click
from celery.apps.worker import Worker
from click.core import ParameterSource

from workers import cpu, exporter
from workers.profiles import (
    check_shard_concurrency,
    combined,
    pool_type,
    shares_a_critical_queue,
    yields_cpu,
)

logger = logging.getLogger(__name__)

#: How much lower the CPU priority of a worker of batched (market-data) pools only is (``nice``).
MARKET_DATA_NICENESS = 5
_DEFAULT_SOURCES = {ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None}


def _explicit(option: str, value: Any) -> bool:
    """Whether the user chose ``option``: on the command line if there is one, else by passing it."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and option in ctx.params:
        return ctx.get_parameter_source(option) not in _DEFAULT_SOURCES
    return value is not None


def _queue_names(queues: Any) -> list[str]:
    if not queues:
        return []
    if isinstance(queues, str):
        return [q.strip() for q in queues.split(",") if q.strip()]
    return [str(q) for q in queues]


class ProfiledWorker(Worker):  # type: ignore[misc]
    """Celery's worker program, sized by ``workers.profiles``, without mingle and gossip."""

    def prepare_args(self, **kwargs: Any) -> Any:
        for option in ("without_mingle", "without_gossip"):
            if not _explicit(option, kwargs.get(option)):
                kwargs[option] = True
        return super().prepare_args(**kwargs)

    def on_init_blueprint(self) -> None:
        super().on_init_blueprint()
        # Before the pool forks: its processes inherit the multiprocess mode and the signal receivers.
        self.metrics_exporter = exporter.start(self.app.settings.metrics, self.hostname)

    def setup_defaults(
        self,
        concurrency: Any = None,
        prefetch_multiplier: Any = None,
        queues: Any = None,
        pool: Any = None,
        pool_cls: Any = None,
        **kwargs: Any,
    ) -> Any:
        names = _queue_names(queues)
        profile = combined(self.app.topology, names)
        for queue in shares_a_critical_queue(self.app.topology, names):
            logger.warning(
                "%s shares this worker's prefetch window with %d other queue(s); run it alone "
                "(tradebus worker %s) to keep its documented prefetch",
                queue,
                len(names) - 1,
                queue,
            )
        if profile is not None:
            if not _explicit("concurrency", concurrency):
                concurrency = profile[0]
            if not _explicit("prefetch_multiplier", prefetch_multiplier):
                prefetch_multiplier = profile[1]
            # ``-P`` is the ``pool`` option (default: prefork); from Python, ``pool`` or ``pool_cls``.
            if not (_explicit("pool", pool) or _explicit("pool_cls", pool_cls)):
                pool, pool_cls = pool_type(self.app.topology, names), None
        # No -Q: Celery consumes every queue, the shards too; no -c: one process per CPU.
        consumed = names or [q.name for q in self.app.topology.worker_queues]
        check_shard_concurrency(self.app.topology, consumed, int(concurrency or os.cpu_count() or 1))
        window = int(concurrency or 1) * int(prefetch_multiplier or 1)
        if yields_cpu(self.app.topology, names, window):
            # Batched market data yields the CPU to the order path when the machine is short of it; the
            # pool processes inherit the niceness (docs/performance.md).
            cpu.lower_priority(MARKET_DATA_NICENESS)
        return super().setup_defaults(
            concurrency=concurrency,
            prefetch_multiplier=prefetch_multiplier,
            queues=queues,
            pool=pool,
            pool_cls=pool_cls,
            **kwargs,
        )
