"""What ``tradebus bench`` runs on: its plan, the machine it measures, its vhost, and small helpers."""

from __future__ import annotations

import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import celery
import kombu
from kombu import Connection

from tradebus import nodes, recorder, store
from tradebus.application import TradebusCelery, create_app, using
from tradebus.management import Management
from tradebus.mastertrade.messages import Ticker
from tradebus.mastertrade.samples import ticker_batch
from tradebus.mastertrade.wire import publish
from tradebus.topology import check_and_declare


@dataclass(frozen=True)
class Plan:
    """How much each scenario does."""

    hop_messages: int = 500
    hop_rate: float = 100.0
    burst_messages: int = 3000
    fanout_seconds: float = 8.0
    #: Single ticks in the backlog the fan-out's consumers drain (tradebus/ops/bench_fanout.py).
    fanout_ticks: int = 20_000
    batch_sizes: tuple[int, ...] = (1, 100, 500)
    round_trips: int = 100
    background_ticks: float = 500.0
    #: Letrade's asyncio client (tradebus/ops/bench_letrade.py): candles per publishing run, confirms in
    #: flight, request/response round trips.
    letrade_candles: int = 10_000
    letrade_in_flight: int = 500
    letrade_round_trips: int = 200

    @classmethod
    def quick(cls) -> Plan:
        """A short run that exercises every scenario (a smoke test, not figures to quote)."""
        return cls(
            hop_messages=40,
            burst_messages=200,
            fanout_seconds=2.0,
            fanout_ticks=2_000,
            batch_sizes=(1, 100),
            round_trips=6,
            # A smoke test on a busy machine: load the order path without saturating its one market pool.
            background_ticks=100.0,
            letrade_candles=300,
            letrade_round_trips=5,
        )


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "platform": platform.platform(),
    }


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``check()``; a scenario that times out has no figures to give, so it fails."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.002)


def recorded_count(key: str) -> int:
    return int(store.client().hget(f"{key}:count", "n") or 0)


def stage_count(queue: str) -> int:
    return recorder.counts().get(queue, 0)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` and its children (a worker and its pool), in MB."""
    total_kb = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        status = Path(f"/proc/{current}/status")
        if status.exists():
            line = next((x for x in status.read_text().splitlines() if x.startswith("VmRSS:")), "VmRSS: 0 kB")
            total_kb += int(line.split()[1])
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            pids += [int(child) for child in children.read_text().split()]
    return round(total_kb / 1024, 1)


def rss_per_process_mb(pid: int) -> float:
    """Resident memory of one pool process of worker ``pid`` (its first child), in MB; the process's own
    when it has no children (a raw consumer)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = children.read_text().split() if children.exists() else []
    return rss_mb(int(kids[0])) if kids else rss_mb(pid)


def latencies(key: str) -> list[float]:
    return [float(v) for v in store.client().lrange(key, 0, -1)]


def background_ticks(rate: float, batch: int, stop: threading.Event) -> None:
    """Publish ``rate`` ticks per second on three symbols, ``batch`` ticks per message, until ``stop``."""
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    i = 0
    begun = time.monotonic()
    while rate > 0 and not stop.is_set():
        symbol = symbols[i % 3]
        publish(
            Ticker(symbol=symbol, price=100.0 + i % 7) if batch == 1 else ticker_batch(symbol, batch, 100.0)
        )
        i += 1
        delay = i * batch / rate - (time.monotonic() - begun)
        if delay < -0.1:  # paused (tradebus/ops/bench_order.py) or starved: on at the rate, never a burst
            begun, i, delay = time.monotonic(), 0, 0.0  # (the rate the stages had is reported, not assumed)
        stop.wait(max(0.0, delay))


def pool_env(app: TradebusCelery) -> dict[str, str]:
    """The environment a pool process (or any helper process) of ``app``'s bus needs: its topology, broker,
    Redis and prefix (the run's vhost and prefix), management APIs and queue type."""
    settings = app.settings
    return {
        "TRADEBUS_TOPOLOGY": app.topology.name,
        "TRADEBUS_BROKER_URL": settings.broker_url,
        "TRADEBUS_REDIS_URL": settings.redis_url,
        "TRADEBUS_REDIS_PREFIX": settings.redis_prefix,
        # A cluster's pools: its management APIs and quorum queues (tradebus/ops/bench_cluster.py).
        "TRADEBUS_MANAGEMENT_URL": settings.management_url or "",
        "TRADEBUS_QUEUE_TYPE": settings.queue_type,
    }


@contextmanager
def bench_vhost(app: TradebusCelery, echo: Callable[[str], None]) -> Iterator[TradebusCelery]:
    """An app of ``app``'s bus on a vhost and a Redis prefix of the run's own, removed at the end; it is
    Celery's current and default app meanwhile, so the publishing threads use it too."""
    settings = app.settings
    name = f"tradebus-bench-{uuid.uuid4().hex[:8]}"
    admin = Management(replace(settings.management, vhost="/"))
    admin.create_vhost(name)
    url = nodes.on_vhost(settings.broker_url, name)  # every node of a cluster, on the run's vhost
    bench = create_app(app.topology, settings.with_(broker_url=url, redis_prefix=name))
    with using(bench):  # the run's prefix is what store.clear() removes at the end, nothing else
        try:
            with Connection(url) as conn:
                check_and_declare(bench.topology, conn, Management(bench.settings.management))
            echo(f"benchmark vhost {name}")
            yield bench
        finally:
            admin.delete_vhost(name)
            store.clear()
