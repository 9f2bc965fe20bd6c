"""The traces scenario's measure of what a span costs a hop, with traced and untraced messages interleaved
(tradebus/ops/bench_traces.py runs it after its bursts).

Bursts of each kind one after the other (the scenario's ``cpu, bursts``) compare two stretches of time, and
on a two-core machine shared with RabbitMQ, Redis and the bench's publisher one stretch's CPU per message
differs from the next by up to a tenth or more whichever kind it carries: more than the span costs.
Interleaved, untraced, untraced, traced, over and over, the kinds meet the same moments, and their CPU is
told apart in the pool process (the probe, tradebus/ops/benchprobe.py):

* each task's CPU time on the thread that ran it, summed for traced tasks, for untraced tasks straight after
  a traced one and for untraced tasks after an untraced one (the span is made, ended and queued for export
  inside its task; what it leaves behind, colder caches and garbage, the next task pays);
* the exporter thread's CPU time (encoding and posting the spans, off the tasks);
* the whole worker's CPU time over the same messages (its consumer process included).

A span costs ``span_cpu_us`` = (traced task - untraced task after an untraced one) + (untraced task after a
traced one - after an untraced one) + the export per span; the cost is (untraced + span) / untraced, an
untraced message being what the whole worker spent per message less the spans and the primers' wake-ups.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tradebus.ops.probefile import EXPORTER_COMM, Totals, path_for, read


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


def _threads(pid: int) -> dict[int, tuple[str, int]]:
    """Each thread of ``pid`` and its descendants: its name and its CPU nanoseconds so far."""
    found: dict[int, tuple[str, int]] = {}
    for current in descendants(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                comm = (task / "comm").read_text().strip()
                found[int(task.name)] = comm, int((task / "schedstat").read_text().split()[0])
    return found


def _cpu(threads: dict[int, tuple[str, int]], comm: str | None = None) -> float:
    """The CPU seconds of ``threads`` (only those named ``comm``, if given)."""
    return sum(ns for name, ns in threads.values() if comm is None or name == comm) / 1e9


def cpu_seconds(pid: int, comm: str | None = None) -> float:
    """CPU time of process ``pid`` and its descendants so far, every thread's (only the threads named
    ``comm``, if given), to the nanosecond (``/proc/.../schedstat``; ``stat``'s user and system times are
    in 10 ms ticks, a few of which are tens of microseconds a message of a burst)."""
    return _cpu(_threads(pid), comm)


def _totals(pid: int, probe_dir: Path) -> Totals:
    """The probe's totals over the pool processes under ``pid``."""
    parts = [read(path_for(probe_dir, p)) for p in descendants(pid)]
    return Totals(*(sum(column) for column in zip(*parts, strict=True)))


def interleaved(
    *,
    untraced: Callable[[], object],
    traced: Callable[[], object],
    primer: Callable[[], object],
    triples: int,
    chunks: int,
    reset: Callable[[], object],
    drained: Callable[[int], None],
    exported: Callable[[int], None],
    pid: int,
    probe_dir: Path,
) -> dict[str, Any]:
    """Send ``chunks`` times a ``primer`` (an untraced message the probe counts apart: the pool's first
    after the wait for the chunk before) and ``triples`` times untraced, untraced, traced (or, every other
    chunk, traced, untraced, untraced: a kind sits as late in a chunk on average as another, should a
    message cost more the later it comes); ``reset`` before each chunk, ``drained(n)`` waits until the
    stage took ``n`` more, ``exported(n)`` until ``n`` more spans reached the sink. Returns the figures
    (the module's docstring)."""
    before, threads = _totals(pid, probe_dir), _threads(pid)
    for chunk in range(chunks):
        reset()
        primer()
        for _ in range(triples):
            for send in (untraced, untraced, traced) if chunk % 2 == 0 else (traced, untraced, untraced):
                send()
        drained(1 + 3 * triples)
    # The whole worker until its last task; then only the exporter, until the last span is out (an idle
    # worker's wake-ups meanwhile are no message's).
    at_drain = _threads(pid)
    exported(chunks * triples)
    time.sleep(0.2)  # the exporter thread reads the sink's answer after the sink counted the spans
    after = _threads(pid)
    exporter = {tid for tid, (name, _) in threads.items() if name == EXPORTER_COMM}
    if not exporter or {tid for tid, (name, _) in after.items() if name == EXPORTER_COMM} != exporter:
        return {"cpu": None, "why": "the exporter's thread was not found, or not the same one throughout"}
    export = _cpu(after, EXPORTER_COMM) - _cpu(threads, EXPORTER_COMM)
    cpu = _cpu(at_drain) - _cpu(threads) + _cpu(after, EXPORTER_COMM) - _cpu(at_drain, EXPORTER_COMM)
    return figures(_totals(pid, probe_dir) - before, cpu=cpu, export=export)


def figures(counted: Totals, *, cpu: float, export: float) -> dict[str, Any]:
    """The cost of a span from what the probe ``counted`` over the interleaved messages, the whole worker's
    ``cpu`` seconds and the exporter thread's ``export`` seconds meanwhile (the module's docstring)."""
    tasks = {
        "traced": counted.traced_tasks,
        "untraced after traced": counted.after_traced_tasks,
        "untraced after untraced": counted.after_untraced_tasks,
        "primers": counted.primer_tasks,
    }
    if not all(tasks.values()):
        return {"messages": tasks, "cpu": None, "why": "the pool's probe counted no task of a kind"}
    task_us = {
        "traced": counted.traced_ns / 1000 / counted.traced_tasks,
        "untraced after traced": counted.after_traced_ns / 1000 / counted.after_traced_tasks,
        "untraced after untraced": counted.after_untraced_ns / 1000 / counted.after_untraced_tasks,
        "primers": counted.primer_ns / 1000 / counted.primer_tasks,
    }
    baseline = task_us["untraced after untraced"]
    own, left_behind = task_us["traced"] - baseline, task_us["untraced after traced"] - baseline
    export_us = export * 1e6 / counted.traced_tasks
    span_us = own + left_behind + export_us
    messages = sum(tasks.values())
    # What the traced messages added to the whole (their own, what the task after each paid, be it an
    # untraced one or a primer, the export), and the primers' wake-up beyond what an untraced task after a
    # traced one costs: neither is an untraced message's.
    added = counted.traced_tasks * span_us
    woken = counted.primer_tasks * max(0.0, task_us["primers"] - task_us["untraced after traced"])
    per_message = cpu * 1e6 / messages
    untraced_us = (cpu * 1e6 - added - woken) / messages  # every message, traced or not, costs this much
    return {
        "messages": tasks,
        "task_cpu_us": {kind: round(us, 1) for kind, us in task_us.items()},
        "export_cpu_us_per_span": round(export_us, 1),
        "cpu_us_per_message": round(per_message, 1),
        "span_cpu_us": round(span_us, 1),
        # No export counted (the exporter's thread not found): its share unknown, so is the cost.
        "cpu": round((untraced_us + span_us) / untraced_us, 3) if export_us > 0 else None,
    }
