"""What ``tradebus bench``'s traces scenario loads into the pool it measures (``celery worker -I``), and
nowhere else: the CPU time each task took on the thread that ran it, summed apart for deliveries with and
without trace context; and the OpenTelemetry exporter's thread renamed ``EXPORTER_COMM`` for the
operating system, so that the bench reads that thread's CPU time apart (/proc/<pid>/task/<tid>).

The sums are four 64-bit integers (``Totals``) in a file of ``PROBE_DIR_ENV``'s directory named after the
pool process, mapped in memory: no system call per task, none of the probe's own work inside the window it
measures. With them the bench compares traced and untraced messages interleaved one by one, at the same
moments of the machine (tradebus/ops/bench_spans.py).
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from celery.signals import task_postrun, task_prerun

#: The directory the probe writes to (set by the bench in the pool's environment).
PROBE_DIR_ENV = "TRADEBUS_BENCH_PROBE_DIR"
#: The SDK's BatchSpanProcessor thread (opentelemetry.sdk._shared_internal).
EXPORTER_THREAD = "OtelBatchSpanRecordProcessor"
#: Its name in /proc/<pid>/task/<tid>/comm once the probe saw it (15 characters at most).
EXPORTER_COMM = "otel-exporter"
_LAYOUT = struct.Struct("<4q")


class Totals(NamedTuple):
    """Tasks and their CPU nanoseconds, with and without trace context, since the pool process started."""

    traced_tasks: int
    traced_ns: int
    untraced_tasks: int
    untraced_ns: int

    def __sub__(self, earlier: tuple[int, ...]) -> Totals:
        """What was counted since ``earlier``."""
        return Totals(*(now - then for now, then in zip(self, earlier, strict=True)))


def path_for(directory: str | Path, pid: int) -> Path:
    """Where pool process ``pid`` keeps its totals."""
    return Path(directory) / f"{pid}.probe"


def read(path: Path) -> Totals:
    """A pool process's totals (zeros before its first task)."""
    data = path.read_bytes() if path.exists() else b""
    return Totals(*_LAYOUT.unpack(data)) if len(data) == _LAYOUT.size else Totals(0, 0, 0, 0)


class _Probe:
    def __init__(self) -> None:
        self.started: dict[str, int] = {}
        self.totals = [0, 0, 0, 0]
        self.view: mmap.mmap | None = None
        self.pid = 0
        self.named = False

    def open(self) -> mmap.mmap | None:
        """This process's mapped file (a forked pool process opens its own)."""
        if self.pid != os.getpid():
            self.pid, self.totals, self.named, self.view = os.getpid(), [0, 0, 0, 0], False, None
            if directory := os.environ.get(PROBE_DIR_ENV):
                with path_for(directory, self.pid).open("w+b") as file:
                    file.write(bytes(_LAYOUT.size))
                    file.flush()
                    self.view = mmap.mmap(file.fileno(), _LAYOUT.size)
        return self.view

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
    if begun is None:
        return
    spent = time.thread_time_ns() - begun
    view = _probe.open()
    at = 0 if "traceparent" in (task.request.headers or {}) else 2
    _probe.totals[at] += 1
    _probe.totals[at + 1] += spent
    if view is not None:
        _LAYOUT.pack_into(view, 0, *_probe.totals)
    if not _probe.named:
        _probe.name_exporter()
