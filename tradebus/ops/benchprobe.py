"""What ``tradebus bench``'s traces scenario loads into the pool it measures (``celery worker -I``), and
nowhere else: the CPU time each task took on the thread that ran it, summed by kind (with trace context;
without, straight after a task with it; without, after one without; primers), and the OpenTelemetry
exporter's thread renamed for the operating system, so that the bench reads that thread's CPU time apart
(/proc/<pid>/task/<tid>).

The sums go to a memory-mapped file (tradebus/ops/probefile.py): no system call per task. What the probe
does per task beyond reading the thread's CPU clock twice (a dictionary entry, the sums) is the same for
every kind. With it the bench compares traced and untraced messages interleaved, at the same moments of
the machine (tradebus/ops/bench_spans.py).
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import task_postrun, task_prerun

from tradebus.ops.probefile import EXPORTER_COMM, EXPORTER_THREAD, LAYOUT, PRIMER, PROBE_DIR_ENV, path_for

#: Where a kind's two sums start in the totals.
TRACED, AFTER_TRACED, AFTER_UNTRACED, PRIMED = 0, 2, 4, 6


class _Probe:
    def __init__(self) -> None:
        self.started: dict[str, int] = {}
        self.totals = [0] * 8
        self.view: mmap.mmap | None = None
        self.pid = 0
        self.last_traced = False
        self.named = False

    def open(self) -> mmap.mmap | None:
        """This process's mapped file (a forked pool process opens its own and starts from zero)."""
        if self.pid != os.getpid():
            self.pid, self.totals, self.view, self.named = os.getpid(), [0] * 8, None, False
            self.last_traced = False
            if directory := os.environ.get(PROBE_DIR_ENV):
                with path_for(directory, self.pid).open("w+b") as file:
                    file.write(bytes(LAYOUT.size))
                    file.flush()
                    self.view = mmap.mmap(file.fileno(), LAYOUT.size)
        return self.view

    def add(self, headers: dict[str, Any], spent: int) -> None:
        """Count a task of ``spent`` CPU nanoseconds by its kind (a primer apart from all three)."""
        view = self.open()
        primer, traced = bool(PRIMER.keys() & headers.keys()), "traceparent" in headers
        at = PRIMED if primer else TRACED if traced else AFTER_TRACED if self.last_traced else AFTER_UNTRACED
        self.last_traced = traced
        self.totals[at] += 1
        self.totals[at + 1] += spent
        if view is not None:
            LAYOUT.pack_into(view, 0, *self.totals)
        if not self.named:
            self.name_exporter()

    def name_exporter(self) -> None:
        """Give the exporter's thread its own name in /proc (a thread may rename another of its process)."""
        for thread in threading.enumerate():
            if thread.name == EXPORTER_THREAD and thread.native_id is not None:
                Path(f"/proc/self/task/{thread.native_id}/comm").write_text(EXPORTER_COMM)
                self.named = True


_probe = _Probe()


@task_prerun.connect  # type: ignore[untyped-decorator]
def _before(task_id: str, **_: Any) -> None:
    _probe.started[task_id] = time.thread_time_ns()


@task_postrun.connect  # type: ignore[untyped-decorator]
def _after(task_id: str, task: Any, **_: Any) -> None:
    begun = _probe.started.pop(task_id, None)
    if begun is not None:
        spent = time.thread_time_ns() - begun
        _probe.add(task.request.headers or {}, spent)
