"""Worker pools as users start them: ``celery -A tradebus worker -Q <queue>`` sized by its profile.

Each worker runs as its own process in a vhost of its own; what RabbitMQ reports (the prefetch of the
channel consuming the queue) and what the worker reports (its pool processes) are checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.support.bus import MASTERTRADE, Vhost

pytestmark = [pytest.mark.broker, pytest.mark.slow]

#: The pools of the bus the workers run (TRADEBUS_TOPOLOGY=mastertrade).
POOLS = MASTERTRADE.pools

#: Generous: the all-pools test starts 22 workers at once on two cores.
STARTUP_TIMEOUT = 180.0


class RunningWorker:
    """A worker subprocess and what the broker and the worker itself say about it."""

    def __init__(
        self, argv: Sequence[str], vhost: Vhost, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.vhost = vhost
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TRADEBUS_BROKER_URL": vhost.url, **(env or {})},
                start_new_session=True,
            )

    def children(self) -> list[int]:
        """The worker's child processes (a prefork pool's; none for a threads pool)."""
        pid = self.process.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def consumer(self, queue: str) -> dict[str, Any]:
        """Wait for the worker's consumer on ``queue`` to appear in the management API."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            # A consumer may be listed a moment before its channel's details are (``channel_details: []``).
            found = [
                c
                for c in self.vhost.management.consumers()
                if c["queue"]["name"] == queue and isinstance(c.get("channel_details"), dict)
            ]
            if found:
                return found[0]
            time.sleep(0.25)
        pytest.fail(f"no consumer on {queue} after {STARTUP_TIMEOUT}s:\n{self.log.read_text()[-3000:]}")

    def channel_prefetch(self, queue: str) -> int:
        """The prefetch RabbitMQ enforces for the channel that consumes ``queue``.

        Celery starts consuming a moment before it sets the channel's QoS, so wait for a non-zero value.
        """
        consumer = self.consumer(queue)
        path = "channels/" + _quote(consumer["channel_details"]["name"])
        deadline = time.monotonic() + 60  # channel statistics refresh every 5 s, later under load
        prefetch = 0
        while not prefetch and time.monotonic() < deadline:
            channel = self.vhost.management.get(path)
            # A new channel is listed before its first statistics (the prefetch counts) arrive.
            prefetch = max(
                int(channel.get("global_prefetch_count", 0)), int(channel.get("prefetch_count", 0))
            )
            time.sleep(0.1)
        return prefetch

    def pool_stats(self) -> dict[str, Any]:
        """The worker's own report of its pool (``celery inspect stats``)."""
        app = Celery("inspector", broker=self.vhost.url)
        app.conf.accept_content = ["json"]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            stats = app.control.inspect(timeout=2.0).stats() or {}
            if stats:
                (node,) = stats.values()
                pool: dict[str, Any] = node["pool"]
                return pool
        pytest.fail("worker never answered inspect stats")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


@pytest.fixture
def start_worker(fresh_vhost: Vhost, tmp_path: Path) -> Iterator[Any]:
    """Start a worker command in a fresh vhost; stopped at the end of the test."""
    started: list[RunningWorker] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RunningWorker:
        worker = RunningWorker(args, fresh_vhost, tmp_path / f"worker-{len(started)}.log", env)
        started.append(worker)
        return worker

    yield start
    for worker in started:  # all asked to stop first, so they shut down together
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in started:
        worker.stop()


CELERY = (sys.executable, "-m", "celery", "-A", "tradebus")
SEED_TABLE = [
    ("strategy_market_data", 5, 10),
    ("sentiment_data", 2, 5),
    ("order_requests", 3, 1),
    ("trading_signals", 3, 5),
    ("order_updates", 2, 10),
]


@pytest.mark.parametrize(("queue", "consumers", "prefetch"), SEED_TABLE, ids=[row[0] for row in SEED_TABLE])
def test_worker_on_a_seed_queue_alone_starts_the_documented_pool_and_prefetch(
    start_worker: Any, queue: str, consumers: int, prefetch: int
) -> None:
    worker = start_worker(*CELERY, "worker", "-Q", queue)
    assert worker.channel_prefetch(queue) == consumers * prefetch
    pool = worker.pool_stats()
    assert pool["max-concurrency"] == consumers
    assert len(pool["processes"]) == consumers


def test_explicit_concurrency_and_prefetch_flags_win_over_the_profile(start_worker: Any) -> None:
    worker = start_worker(*CELERY, "worker", "-Q", "order_requests", "-c", "1", "--prefetch-multiplier", "4")
    assert worker.channel_prefetch("order_requests") == 4
    assert worker.pool_stats()["max-concurrency"] == 1


CONNECTOR, CAPITAL = "letrade.exchange_connector", "letrade.capital_manager"
POOL_TYPES = [
    # Letrade's exchange connector is I/O-bound: 2 threads in the worker's process (routing/letrade.py).
    ((CONNECTOR,), (), "celery.concurrency.thread:TaskPool", 2),
    # -P wins over the profile.
    ((CONNECTOR,), ("-P", "prefork"), "celery.concurrency.prefork:TaskPool", 2),
    # Queues whose profiles differ: prefork, their processes added up.
    ((CONNECTOR, CAPITAL), (), "celery.concurrency.prefork:TaskPool", 3),
]


@pytest.mark.parametrize(
    ("queues", "flags", "implementation", "concurrency"), POOL_TYPES, ids=["threads", "-P prefork", "mixed"]
)
def test_a_worker_runs_its_profiles_pool_type_unless_p_says_otherwise(
    start_worker: Any, queues: tuple[str, ...], flags: tuple[str, ...], implementation: str, concurrency: int
) -> None:
    worker = start_worker(
        *CELERY, "worker", "-Q", ",".join(queues), *flags, env={"TRADEBUS_TOPOLOGY": "letrade"}
    )
    assert worker.channel_prefetch(queues[0]) == concurrency  # prefetch multiplier 1 for each
    pool = worker.pool_stats()
    assert (pool["implementation"], pool["max-concurrency"]) == (implementation, concurrency)
    threads = implementation.endswith("thread:TaskPool")
    assert len(worker.children()) == (0 if threads else concurrency)


def test_tradebus_worker_starts_a_pool_by_name_with_its_profile(start_worker: Any) -> None:
    tradebus = Path(sys.executable).with_name("tradebus")
    worker = start_worker(str(tradebus), "worker", "risk_checks")
    profile = POOLS["risk_checks"]
    assert worker.channel_prefetch("risk_checks") == profile.prefetch_count
    assert worker.pool_stats()["max-concurrency"] == profile.concurrency


def test_tradebus_worker_runs_the_connector_on_its_profiles_threads(start_worker: Any) -> None:
    tradebus = Path(sys.executable).with_name("tradebus")
    worker = start_worker(str(tradebus), "worker", CONNECTOR, env={"TRADEBUS_TOPOLOGY": "letrade"})
    pool = worker.pool_stats()
    assert (pool["implementation"], pool["max-concurrency"]) == ("celery.concurrency.thread:TaskPool", 2)
    assert not worker.children()


def test_a_starting_worker_declares_the_whole_topology_not_just_its_queue(
    start_worker: Any, fresh_vhost: Vhost
) -> None:
    worker = start_worker(*CELERY, "worker", "-Q", "order_requests")
    worker.consumer("order_requests")
    live = {q["name"] for q in fresh_vhost.management.queues()}
    assert {q.name for q in MASTERTRADE.queues} <= live
    assert {e.name for e in MASTERTRADE.exchanges} <= {e["name"] for e in fresh_vhost.management.exchanges()}
    ours = {q.name for q in MASTERTRADE.queues}
    bindings = {
        (b["source"], b["routing_key"], b["destination"])
        for b in fresh_vhost.management.bindings()
        if b["destination"] in ours and b["source"]  # "" is the default exchange every queue has
    }
    declared = {(b.exchange.name, b.routing_key, q.name) for q in MASTERTRADE.queues for b in q.bindings}
    assert bindings == declared


def test_every_pool_started_by_name_gets_its_profiled_processes_and_prefetch(
    start_worker: Any, fresh_vhost: Vhost
) -> None:
    tradebus = Path(sys.executable).with_name("tradebus")
    workers = {name: start_worker(str(tradebus), "worker", name) for name in POOLS}
    for name, worker in workers.items():
        assert worker.channel_prefetch(name) == POOLS[name].prefetch_count, name
    app = Celery("inspector", broker=fresh_vhost.url)
    app.conf.accept_content = ["json"]
    deadline = time.monotonic() + STARTUP_TIMEOUT
    stats: dict[str, Any] = {}
    while len(stats) < len(POOLS) and time.monotonic() < deadline:
        stats |= app.control.inspect(timeout=3.0).stats() or {}
    concurrency = {node.split("@")[0]: s["pool"]["max-concurrency"] for node, s in stats.items()}
    assert concurrency == {name: profile.concurrency for name, profile in POOLS.items()}
