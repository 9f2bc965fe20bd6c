"""Where a traced delivery's CPU goes in a real stage pool: each thread's, untraced against traced.

    PYTHONPATH=. python scripts/span_cost_pool.py      # ~40 s; RabbitMQ, Redis and the OTLP extra

Starts a ``ticker_updates`` pool (``-c 1 --prefetch-multiplier 1``, traces on, exporting every second to
a sink in this process) on a vhost of its own, as ``tradebus bench --scenario traces`` does, and sends it
bursts of 500 ticks without and with a ``traceparent``, alternately, seven rounds (the first warms up).
Prints each thread's CPU per message (``/proc/.../schedstat``, the median of the six rounds, in µs): the
Celery worker process, and the pool process's handler thread, its recorder's and the span exporter's.
docs/performance.md ("Traces") quotes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import tempfile
from collections import defaultdict
from functools import partial
from pathlib import Path

from kombu import Connection

from tradebus import app as default_app
from tradebus.mastertrade.messages import Ticker
from tradebus.ops.bench_traces import QUEUE, _exported, _parent, _sink
from tradebus.ops.benchkit import bench_vhost, pool_env, stage_count, wait
from tradebus.publisher import send
from workers.launch import start_pool, wait_for_consumers

BURST = 500


def threads(pid: int) -> dict[str, int]:
    """CPU nanoseconds so far of each thread of ``pid`` and of its children, by role and thread id."""
    found: dict[str, int] = {}
    pids = [(pid, "worker")]
    while pids:
        current, role = pids.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                found[f"{role} thread {task.name}"] = int((task / "schedstat").read_text().split()[0])
                pids += [(int(child), "pool process") for child in (task / "children").read_text().split()]
    return found


def handled(count: int) -> bool:
    return stage_count(QUEUE) >= count


def main() -> None:
    body = Ticker(symbol="BTCUSDT", price=45_000.0, bid=44_999.5, ask=45_000.5).model_dump_json().encode()
    with bench_vhost(default_app, print) as app, _sink() as sink:
        settings = app.settings
        env = {
            **pool_env(app),
            "TRADEBUS_TRACES": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": sink.url,
            "OTEL_BSP_SCHEDULE_DELAY": "1000",
            "TRADEBUS_DECLARE_TOPOLOGY": "0",
        }
        argv = ["--loglevel", "WARNING", "-c", "1", "--prefetch-multiplier", "1"]
        pool = start_pool(QUEUE, Path(tempfile.mkdtemp()), argv, env)
        try:
            with Connection(settings.broker_url) as conn:
                if wait_for_consumers(conn, [QUEUE], 90.0, [pool]):
                    raise RuntimeError(f"no consumer on {QUEUE}")
            spans = 0
            per: dict[str, dict[bool, list[float]]] = defaultdict(lambda: {False: [], True: []})
            for round_ in range(7):
                for traced in (True, False) if round_ % 2 else (False, True):
                    cpu, before = threads(pool.process.pid), stage_count(QUEUE)
                    for _ in range(BURST):
                        send(app, body, exchange="", routing_key=QUEUE, headers=_parent() if traced else None)
                    wait(partial(handled, before + BURST), 120, "the burst")
                    if traced:
                        spans += BURST
                        _exported(sink, spans)
                    if round_:  # the first round warms up
                        for thread, ns in threads(pool.process.pid).items():
                            per[thread][traced].append((ns - cpu.get(thread, 0)) / BURST / 1000)
        finally:
            os.killpg(pool.process.pid, signal.SIGKILL)
            pool.process.wait()
    for thread, kinds in sorted(per.items()):
        plain, spanned = statistics.median(kinds[False]), statistics.median(kinds[True])
        if max(plain, spanned) >= 1:
            print(f"{thread:28s} untraced {plain:6.1f}  traced {spanned:6.1f}  span {spanned - plain:+6.1f}")


if __name__ == "__main__":
    main()
