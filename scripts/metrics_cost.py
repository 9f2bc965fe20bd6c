"""What the stage metrics cost one delivery: Celery's task_prerun and task_postrun sent as its tracer sends
them (only when something listens), with tradebus's receivers counting, against nothing listening.

    PYTHONPATH=. python scripts/metrics_cost.py            # in-process and multiprocess (prefork) mode

Each mode runs in a process of its own (prometheus_client picks its mode at import); the figure is the best
of 5 runs of 50,000 deliveries, in microseconds. docs/performance.md quotes it against a hop's latency.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

DELIVERIES = 50_000


def measure(mode: str) -> float:
    """Microseconds per delivery in ``mode``: ``off``, ``in-process`` or ``multiprocess``."""
    if mode == "multiprocess":
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tradebus-metrics-cost-")
    from celery.signals import task_postrun, task_prerun

    from tradebus import metrics
    from tradebus.headers import PUBLISHED_AT

    class Stage:  # hashable, as Celery's signal cache needs a sender to be
        queue_name, name = "ticker_updates", "tradebus.monitoring.on_ticker"
        request = SimpleNamespace(delivery_info={}, headers={PUBLISHED_AT: time.time()}, retries=0)

    task = Stage()
    if mode != "off":
        metrics.enable()

    def run() -> float:
        began = time.perf_counter()
        for _ in range(DELIVERIES):
            if task_prerun.receivers:  # what Celery's tracer checks before sending
                task_prerun.send(sender=task, task_id="x", task=task, args=(), kwargs={})
            if task_postrun.receivers:
                task_postrun.send(
                    sender=task, task_id="x", task=task, args=(), kwargs={}, retval=None, state="SUCCESS"
                )
        return (time.perf_counter() - began) / DELIVERIES * 1e6

    return min(run() for _ in range(5))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(f"{measure(sys.argv[1]):.1f}")
    else:
        for mode in ("off", "in-process", "multiprocess"):
            out = subprocess.run([sys.executable, __file__, mode], capture_output=True, text=True, check=True)
            print(f"{mode:>13}: {out.stdout.strip()} us per delivery")
