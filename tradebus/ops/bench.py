"""``tradebus bench``: tradebus's paths against raw Kombu and bare Celery, in one run on one broker.

* hop: one message through one queue to one consumer process, paced so nothing queues (latency) and as
  fast as possible (throughput), for a raw Kombu consumer, a bare Celery task and a tradebus stage;
* fan-out: ticks through ``ticker.*`` to both of its stages (ticker_updates, executor_market_data), one
  tick per message and batched (TickerBatch), as fast as both stages keep up;
* order path: signal -> risk -> order -> paper fill latency, under background market load;
* Letrade's asyncio client against bare aio-pika, and its request round trip (tradebus/ops/bench_letrade.py);
* traces: one hop with and without a span, traces exported over OTLP (tradebus/ops/bench_traces.py).

Each run gets a vhost and a Redis prefix of its own; the figures are ratios against the baselines run
here, on this machine (docs/performance.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kombu import Connection, Queue

from tradebus import recorder
from tradebus.application import TradebusCelery
from tradebus.mastertrade.messages import Ticker
from tradebus.mastertrade.samples import ticker_batch
from tradebus.mastertrade.wire import publish
from tradebus.ops import bench_fanout, bench_letrade, bench_order, bench_traces, benchapp
from tradebus.ops.benchkit import (
    Plan,
    latencies,
    machine,
    pool_env,
    recorded_count,
    rss_mb,
    rss_per_process_mb,
    stage_count,
    wait,
)
from tradebus.ops.harness import percentiles
from tradebus.publisher import send
from workers.launch import PoolProcess, start_pool, stop_all, wait_for_consumers

#: Seconds of publishing before the fan-out's rates are sampled.
WARM_UP_SECONDS = 2.0


class Bench:
    """One benchmark run: its vhost, its processes, its results."""

    def __init__(self, app: TradebusCelery, plan: Plan, echo: Callable[[str], None]) -> None:
        self.app, self.plan, self.echo = app, plan, echo
        self.log_dir = Path(tempfile.mkdtemp(prefix="tradebus-bench-"))
        self.results: dict[str, Any] = {"machine": machine(), "plan": plan.__dict__}
        self.processes: list[subprocess.Popen[bytes]] = []
        #: Each round trip's signal is a minute after the last, from yesterday (the risk manager refuses
        #: signals over two days old).
        self.signals_from = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)
        self.pools: list[PoolProcess] = []

    @property
    def url(self) -> str:
        return self.app.settings.broker_url

    @property
    def env(self) -> dict[str, str]:
        return pool_env(self.app)

    def spawn(self, argv: list[str], name: str) -> None:
        log = (self.log_dir / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                argv,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def pool(self, name: str, *extra: str) -> None:
        self.pools.append(start_pool(name, self.log_dir, ["--loglevel", "WARNING", *extra], self.env))

    def wait_consumers(self, *queues: str) -> None:
        with Connection(self.url) as conn:
            missing = wait_for_consumers(conn, queues, 90.0, self.pools)
        if missing:
            raise RuntimeError(f"no consumer on {', '.join(missing)}; logs in {self.log_dir}")

    def stop(self) -> None:
        stop_all(self.pools)
        self.pools = []
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(20)
        self.processes = []

    # --- hop -------------------------------------------------------------------------------------
    def hop(self) -> None:
        """One queue, one consumer process: raw Kombu, bare Celery, a tradebus stage."""
        body = Ticker(symbol="BTCUSDT", price=45_000.0, bid=44_999.5, ask=45_000.5).model_dump_json()
        prefix = self.app.settings.redis_prefix
        raw_key = f"{prefix}:bench:raw"
        bare_key = f"{prefix}:{benchapp.BARE_KEY_SUFFIX}"
        with Connection(self.url) as conn:
            for name in (benchapp.RAW_QUEUE, benchapp.BARE_QUEUE):
                Queue(name, durable=True)(conn.default_channel).declare()
        self.spawn([sys.executable, "-m", "tradebus.ops.benchapp", benchapp.RAW_QUEUE, raw_key], "raw")
        self.spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tradebus.ops.benchapp",
                "worker",
                "-Q",
                benchapp.BARE_QUEUE,
                "-c",
                "1",
                "--prefetch-multiplier",
                "1",
                "--loglevel",
                "WARNING",
            ],
            "bare",
        )
        self.pool("ticker_updates", "-c", "1", "--prefetch-multiplier", "1")
        self.wait_consumers(benchapp.RAW_QUEUE, benchapp.BARE_QUEUE, "ticker_updates")
        benchapp.app.conf.update(broker_url=self.url, broker_transport_options={"confirm_publish": True})

        def raw() -> None:
            send(self.app, body.encode(), exchange="", routing_key=benchapp.RAW_QUEUE)

        def bare() -> None:
            benchapp.hop.apply_async((time.time(), body), queue=benchapp.BARE_QUEUE)

        def stage() -> None:
            send(self.app, body.encode(), exchange="", routing_key="ticker_updates")

        kinds: list[tuple[str, Callable[[], None], Callable[[], int], Callable[[], list[float]]]] = [
            ("raw kombu", raw, lambda: recorded_count(raw_key), lambda: latencies(raw_key)),
            ("bare celery", bare, lambda: recorded_count(bare_key), lambda: latencies(bare_key)),
            (
                "tradebus stage",
                stage,
                lambda: stage_count("ticker_updates"),
                lambda: recorder.latencies("ticker_updates"),
            ),
        ]
        hop: dict[str, Any] = {}
        for name, sender, count, samples in kinds:
            hop[name] = self._hop(sender, count, samples)
            self.echo(f"  hop {name}: {hop[name]}")
        trees = {
            "raw kombu": self.processes[0].pid,
            "bare celery": self.processes[1].pid,
            "tradebus stage": self.pools[-1].process.pid,
        }
        for name, pid in trees.items():
            hop[name]["rss_mb"] = rss_mb(pid)
            hop[name]["rss_mb_per_process"] = rss_per_process_mb(pid)
        base = hop["bare celery"]
        hop["tradebus / bare celery"] = {
            "p50": round(hop["tradebus stage"]["latency_ms"]["p50"] / base["latency_ms"]["p50"], 2),
            "p99": round(hop["tradebus stage"]["latency_ms"]["p99"] / base["latency_ms"]["p99"], 2),
            "throughput": round(hop["tradebus stage"]["per_second"] / base["per_second"], 2),
            "memory": round(hop["tradebus stage"]["rss_mb"] / base["rss_mb"], 2),
            "memory_per_pool_process": round(
                hop["tradebus stage"]["rss_mb_per_process"] / base["rss_mb_per_process"], 2
            ),
        }
        self.results["hop"] = hop
        self.stop()

    def _hop(
        self, sender: Callable[[], None], count: Callable[[], int], samples: Callable[[], list[float]]
    ) -> dict[str, Any]:
        plan = self.plan
        start = count()
        paced_from = time.monotonic()
        for i in range(plan.hop_messages):  # paced: nothing waits in the queue
            time.sleep(max(0.0, i / plan.hop_rate - (time.monotonic() - paced_from)))
            sender()
        wait(lambda: count() >= start + plan.hop_messages, 60, "the paced messages")
        latency = percentiles(samples()[: plan.hop_messages])
        begun = time.monotonic()
        before = count()
        for _ in range(plan.burst_messages):
            sender()
        # Until all arrived, or nothing more does (a slow stage's queue expires what it cannot take).
        done, at = bench_fanout.drained(count, before + plan.burst_messages, 120)
        return {"latency_ms": latency, "per_second": round((done - before) / (at - begun), 1)}

    # --- fan-out ---------------------------------------------------------------------------------
    def fanout(self) -> None:
        """Ticks through ticker.* to both of its stage pools (at their profiles), flat out.

        The publisher runs as fast as it can while the two stages' counts are sampled over a window after a
        warm-up: the slower stage's rate is what the fan-out sustains (what it cannot take piles up and
        expires into the DLQ, as it would in production).
        """
        stages = ("ticker_updates", "executor_market_data")
        prefetch = self.app.topology.pools["ticker_updates"].prefetch_count
        raw = bench_fanout.raw_kombu(self, self.plan.fanout_ticks, prefetch)
        self.echo(f"  fan-out baseline, raw Kombu, 1 tick per message: {raw}")
        for name in stages:
            self.pool(name)
        self.wait_consumers(*stages)
        results: dict[str, Any] = {}
        for size in self.plan.batch_sizes:
            if size == 1:  # a backlog of single ticks drained, against raw Kombu (bench_fanout.py)
                single = bench_fanout.stages(self, self.plan.fanout_ticks)
                single["pool_rss_mb"] = {pool.name: rss_mb(pool.process.pid) for pool in self.pools}
                single["raw_kombu_ticks_per_second"] = raw["ticks_per_second"]
                single["raw_kombu_offered_ticks_per_second"] = raw["offered_ticks_per_second"]
                single["tradebus / raw kombu"] = round(
                    single["ticks_per_second"] / raw["ticks_per_second"], 2
                )
                results["1 per message"] = single
                self.echo(f"  fan-out, 1 tick per message (backlog): {single}")
                self._purge(stages)
                continue
            message = Ticker(symbol="BTCUSDT", price=45_000.0) if size == 1 else ticker_batch("BTCUSDT", size)
            stop = threading.Event()
            sent = [0]

            def flood(message: Any = message, stop: threading.Event = stop, sent: list[int] = sent) -> None:
                while not stop.is_set():
                    publish(message)
                    sent[0] += 1

            publisher = threading.Thread(target=flood, daemon=True)
            begun = time.monotonic()
            publisher.start()
            time.sleep(WARM_UP_SECONDS)
            first, t1 = {q: stage_count(q) for q in stages}, time.monotonic()
            time.sleep(self.plan.fanout_seconds)
            last, t2 = {q: stage_count(q) for q in stages}, time.monotonic()
            stop.set()
            publisher.join()
            offered = sent[0] / (time.monotonic() - begun)
            rates = {q: (last[q] - first[q]) / (t2 - t1) for q in stages}
            results[f"{size} per message"] = {
                "pool_rss_mb": {pool.name: rss_mb(pool.process.pid) for pool in self.pools},
                "ticks_per_second": round(min(rates.values()) * size),
                "offered_ticks_per_second": round(offered * size),
                "messages_per_second": {q: round(r, 1) for q, r in rates.items()},
            }
            self.echo(f"  fan-out, {size} tick(s) per message: {results[f'{size} per message']}")
            self._purge(stages)
        self.results["fanout"] = results
        self.stop()

    def _purge(self, queues: Sequence[str]) -> None:
        """Empty ``queues`` (what the stages could not take), so the next figure starts level."""
        with Connection(self.url) as conn:
            for queue in queues:
                conn.default_channel.queue_purge(queue)
        time.sleep(1.0)

    # --- order path ------------------------------------------------------------------------------
    def order_path(self) -> None:
        """Signal -> risk -> order -> fill, idle and under background ticks (tradebus/ops/bench_order.py)."""
        self.results["order_path"] = bench_order.order_path(self)
        self.stop()

    # --- Letrade's asyncio client -------------------------------------------------------------------
    def letrade_async(self) -> None:
        """MessageBus against bare aio-pika, its request round trip, and the batched feed end to end
        (tradebus/ops/bench_letrade.py)."""
        self.results.update(bench_letrade.letrade_async(self.app, self.plan, self.echo, self.log_dir))

    # --- traces --------------------------------------------------------------------------------------
    def traces(self) -> None:
        """One hop with a span per message against the same hop without (tradebus/ops/bench_traces.py)."""
        self.results["traces"] = bench_traces.traces(self.app, self.plan, self.echo, self.log_dir)
