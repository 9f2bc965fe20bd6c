"""The file through which the traces scenario's probe (tradebus/ops/benchprobe.py, loaded into a measured
pool) tells the bench (tradebus/ops/bench_spans.py) what each kind of task cost: eight 64-bit integers,
``Totals``, in a file named after the pool process, mapped in memory by the probe. Importing this module
does nothing (the probe's module connects Celery signals; only the measured pools load it).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

#: The directory the probe writes to (set by the bench in the pool's environment).
PROBE_DIR_ENV = "TRADEBUS_BENCH_PROBE_DIR"
#: The SDK's BatchSpanProcessor thread (opentelemetry.sdk._shared_internal).
EXPORTER_THREAD = "OtelBatchSpanRecordProcessor"
#: Its name in /proc/<pid>/task/<tid>/comm once the probe saw it (15 characters at most).
EXPORTER_COMM = "otel-exporter"
LAYOUT = struct.Struct("<8q")
#: The headers of a message the probe counts apart: the first of each interleaved chunk, which wakes a pool
#: that went idle while the bench waited for the chunk before (the next one is counted as after it).
PRIMER = {"x-tradebus-bench-primer": "1"}


class Totals(NamedTuple):
    """Tasks and their CPU nanoseconds since the pool process started: with trace context; without it,
    straight after a task with it; without it, after one without it; primers."""

    traced_tasks: int = 0
    traced_ns: int = 0
    after_traced_tasks: int = 0
    after_traced_ns: int = 0
    after_untraced_tasks: int = 0
    after_untraced_ns: int = 0
    primer_tasks: int = 0
    primer_ns: int = 0

    def __sub__(self, earlier: tuple[int, ...]) -> Totals:
        """What was counted since ``earlier``."""
        return Totals(*(now - then for now, then in zip(self, earlier, strict=True)))


def path_for(directory: str | Path, pid: int) -> Path:
    """Where pool process ``pid`` keeps its totals."""
    return Path(directory) / f"{pid}.probe"


def read(path: Path) -> Totals:
    """A pool process's totals (zeros before its first task)."""
    data = path.read_bytes() if path.exists() else b""
    return Totals(*LAYOUT.unpack(data)) if len(data) == LAYOUT.size else Totals()
