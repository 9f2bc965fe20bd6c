"""The traces scenario's measure of what a span costs a hop, with traced and untraced messages interleaved
one by one (tradebus/ops/bench_traces.py runs it after its bursts).

Bursts of each kind one after the other (the scenario's ``cpu, bursts``) compare two stretches of time, and
on a two-core machine shared with RabbitMQ, Redis and the bench's publisher one stretch's CPU per message
differs from the next by up to a tenth whichever kind it carries: more than the span costs. Interleaved,
both kinds meet the same moments; their CPU is told apart in the pool process
(tradebus/ops/benchprobe.py):

* each task's CPU time on the thread that ran it, summed by kind (the span is made, ended and queued for
  export inside the task);
* the exporter thread's CPU time (encoding and posting the spans, off the task), per span;
* the whole worker's CPU time over the same messages (its consumer process included), per message.

``span_cpu_us`` = traced task - untraced task + export per span; the cost is
(untraced + span) / untraced, where untraced is the whole worker's CPU per message less half a span.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tradebus.ops import benchprobe


def descendants(pid: int) -> list[int]:
    """``pid`` and every process under it (a worker and its pool processes)."""
    found, pids = [], [pid]
    while pids:
        current = pids.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int, comm: str | None = None) -> float:
    """CPU time of process ``pid`` and its descendants so far, every thread's (only the threads named
    ``comm``, if given), to the nanosecond (``/proc/.../schedstat``; ``stat``'s user and system times are
    in 10 ms ticks, a few of which are tens of microseconds a message of a burst)."""
    nanoseconds = 0
    for current in descendants(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                if comm is None or (task / "comm").read_text().strip() == comm:
                    nanoseconds += int((task / "schedstat").read_text().split()[0])
    return nanoseconds / 1e9


def _totals(pid: int, probe_dir: Path) -> benchprobe.Totals:
    """The probe's totals over the pool processes under ``pid``."""
    parts = [benchprobe.read(benchprobe.path_for(probe_dir, p)) for p in descendants(pid)]
    return benchprobe.Totals(*(sum(column) for column in zip(*parts, strict=True)))


def interleaved(
    *,
    untraced: Callable[[], object],
    traced: Callable[[], object],
    pairs: int,
    chunks: int,
    reset: Callable[[], object],
    drained: Callable[[int], None],
    exported: Callable[[int], None],
    pid: int,
    probe_dir: Path,
) -> dict[str, Any]:
    """Send ``chunks`` times ``pairs`` untraced and traced messages alternately (``reset`` before each
    chunk, ``drained(n)`` waits until the stage took ``n`` more, ``exported(n)`` until ``n`` more spans
    reached the sink); returns the figures (the module's docstring)."""
    exporter = benchprobe.EXPORTER_COMM
    before, cpu, export = _totals(pid, probe_dir), cpu_seconds(pid), cpu_seconds(pid, exporter)
    for _ in range(chunks):
        reset()
        for _ in range(pairs):
            untraced()
            traced()
        drained(2 * pairs)
    exported(chunks * pairs)
    time.sleep(0.2)  # the exporter thread reads the sink's answer after the sink counted the spans
    return figures(
        _totals(pid, probe_dir) - before,
        cpu=cpu_seconds(pid) - cpu,
        export=cpu_seconds(pid, exporter) - export,
    )


def figures(counted: benchprobe.Totals, *, cpu: float, export: float) -> dict[str, Any]:
    """The cost of a span from what the probe ``counted`` over the interleaved messages, the whole worker's
    ``cpu`` seconds and the exporter thread's ``export`` seconds meanwhile (the module's docstring)."""
    tasks = {"traced": counted.traced_tasks, "untraced": counted.untraced_tasks}
    if not counted.traced_tasks or not counted.untraced_tasks:
        return {"messages": tasks, "cpu": None, "why": "the pool's probe counted no task of a kind"}
    task_us = {
        "traced": counted.traced_ns / 1000 / counted.traced_tasks,
        "untraced": counted.untraced_ns / 1000 / counted.untraced_tasks,
    }
    export_us = export * 1e6 / counted.traced_tasks
    span_us = task_us["traced"] - task_us["untraced"] + export_us
    messages = counted.traced_tasks + counted.untraced_tasks
    per_message = cpu * 1e6 / messages
    untraced_us = per_message - span_us * counted.traced_tasks / messages
    return {
        "messages": tasks,
        "task_cpu_us": {kind: round(us, 1) for kind, us in task_us.items()},
        "export_cpu_us_per_span": round(export_us, 1),
        "cpu_us_per_message": round(per_message, 1),
        "span_cpu_us": round(span_us, 1),
        # No exporter thread found (the SDK renamed it): its share unknown, so is the cost.
        "cpu": round((untraced_us + span_us) / untraced_us, 3) if export_us > 0 else None,
    }
