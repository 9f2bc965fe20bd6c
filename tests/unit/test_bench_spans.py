"""The traces scenario's interleaved measure of a span's cost, without a broker: the probe the measured pool
loads (tradebus/ops/benchprobe.py) and the arithmetic over what it counted (tradebus/ops/bench_spans.py).
The live quick bench (tests/live/test_bench.py) runs both on real pools."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tradebus.ops import bench_spans, benchprobe
from tradebus.ops.benchprobe import Totals


def test_the_cost_is_the_span_over_the_untraced_message() -> None:
    # 100 of each kind: traced tasks 60 us, untraced 20 us, the exporter 10 us a span, 1,000 us a message
    # for the whole worker on average; so a span costs 50 us and an untraced message 975 us.
    counted = Totals(100, 100 * 60_000, 100, 100 * 20_000)
    figures = bench_spans.figures(counted, cpu=200 * 1000e-6, export=100 * 10e-6)
    assert figures["task_cpu_us"] == {"traced": 60.0, "untraced": 20.0}
    assert figures["export_cpu_us_per_span"] == 10.0
    assert figures["span_cpu_us"] == 50.0
    assert figures["cpu_us_per_message"] == 1000.0
    assert figures["cpu"] == round(1025 / 975, 3)


def test_no_figure_without_the_exporter_or_without_both_kinds() -> None:
    # The exporter's thread not found: its share is unknown, so no ratio (never a flattering one).
    assert bench_spans.figures(Totals(10, 10, 10, 10), cpu=1.0, export=0.0)["cpu"] is None
    only_untraced = bench_spans.figures(Totals(0, 0, 10, 10), cpu=1.0, export=0.1)
    assert only_untraced["cpu"] is None and "probe" in only_untraced["why"]


def test_totals_subtract_what_was_counted_before() -> None:
    assert Totals(5, 50, 7, 70) - Totals(2, 20, 3, 30) == Totals(3, 30, 4, 40)


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(benchprobe.PROBE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(benchprobe, "_probe", benchprobe._Probe())
    return benchprobe.path_for(tmp_path, os.getpid())


def _task(headers: dict[str, str] | None) -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(headers=headers))


def test_the_probe_sums_each_kind_apart_in_its_mapped_file(probe: Path) -> None:
    assert benchprobe.read(probe) == Totals(0, 0, 0, 0)  # nothing before the first task
    kinds = [{"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, None, {"x-other": "1"}]
    for number, headers in enumerate(kinds):
        task = _task(headers)
        benchprobe._before(task_id=str(number), task=task)
        sum(range(10_000))  # some CPU on this thread
        benchprobe._after(task_id=str(number), task=task)
    totals = benchprobe.read(probe)
    assert (totals.traced_tasks, totals.untraced_tasks) == (1, 2)
    assert totals.traced_ns > 0 and totals.untraced_ns > 0
    benchprobe._after(task_id="never started", task=_task(None))  # a postrun without its prerun: ignored
    assert benchprobe.read(probe) == totals


def test_the_probe_names_the_exporters_thread_for_the_bench(probe: Path) -> None:
    stop = threading.Event()

    def export() -> None:
        sum(range(300_000))  # CPU time the bench reads off this thread alone
        stop.wait()

    exporter = threading.Thread(target=export, name=benchprobe.EXPORTER_THREAD, daemon=True)
    exporter.start()
    try:
        task = _task(None)
        benchprobe._before(task_id="1", task=task)
        benchprobe._after(task_id="1", task=task)
        comm = Path(f"/proc/self/task/{exporter.native_id}/comm").read_text().strip()
        assert comm == benchprobe.EXPORTER_COMM
        assert bench_spans.cpu_seconds(os.getpid(), benchprobe.EXPORTER_COMM) > 0.0
        assert bench_spans.cpu_seconds(os.getpid(), "no-such-thread") == 0.0
    finally:
        stop.set()
        exporter.join()
