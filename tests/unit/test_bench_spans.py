"""The traces scenario's interleaved measure of a span's cost, without a broker: the probe the measured pool
loads (tradebus/ops/benchprobe.py), the file it writes (tradebus/ops/probefile.py) and the arithmetic and
sequencing over what it counted (tradebus/ops/bench_spans.py). The live quick bench
(tests/live/test_bench.py) runs them on real pools."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import ANY

import pytest

from tradebus.ops import bench_spans, benchprobe
from tradebus.ops.probefile import (
    EXPORTER_COMM,
    EXPORTER_THREAD,
    PRIMER,
    PROBE_DIR_ENV,
    Totals,
    path_for,
    read,
)


def test_a_span_is_its_task_what_the_next_task_pays_and_its_export() -> None:
    # 100 traced tasks of 60 us, 100 untraced after them of 25 us, 100 untraced after untraced of 20 us;
    # the exporter 10 us a span; the whole worker 1,000 us a message on average. A span: 40 + 5 + 10 =
    # 55 us; the traced messages added 100 * 55 us to 300 messages: an untraced one costs 1000 - 18.33.
    counted = Totals(100, 100 * 60_000, 100, 100 * 25_000, 100, 100 * 20_000)
    figures = bench_spans.figures(counted, cpu=300 * 1000e-6, export=100 * 10e-6)
    assert figures["task_cpu_us"] == {
        "traced": 60.0,
        "untraced after traced": 25.0,
        "untraced after untraced": 20.0,
    }
    assert (figures["export_cpu_us_per_span"], figures["span_cpu_us"]) == (10.0, 55.0)
    untraced = 1000 - 100 * 55 / 300
    assert figures["cpu"] == round((untraced + 55) / untraced, 3)


def test_unequal_counts_weigh_each_kind_by_its_own_count() -> None:
    counted = Totals(50, 50 * 60_000, 10, 10 * 30_000, 140, 140 * 20_000)
    figures = bench_spans.figures(counted, cpu=200 * 1000e-6, export=50 * 10e-6)
    untraced = 1000 - (50 * (40 + 10) + 10 * 10) / 200
    assert figures["span_cpu_us"] == 60.0
    assert figures["cpu"] == round((untraced + 60) / untraced, 3)


def test_no_figure_without_the_exporter_or_without_every_kind() -> None:
    # The exporter's thread not found: its share is unknown, so no ratio (never a flattering one).
    assert bench_spans.figures(Totals(10, 10, 10, 10, 10, 10), cpu=1.0, export=0.0)["cpu"] is None
    no_traced = bench_spans.figures(Totals(0, 0, 0, 0, 10, 10), cpu=1.0, export=0.1)
    assert no_traced["cpu"] is None and "probe" in no_traced["why"]


def test_totals_subtract_what_was_counted_before() -> None:
    assert Totals(5, 50, 7, 70, 9, 90) - Totals(2, 20, 3, 30, 4, 40) == Totals(3, 30, 4, 40, 5, 50)


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(PROBE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(benchprobe, "_probe", benchprobe._Probe())
    return path_for(tmp_path, os.getpid())


@pytest.fixture
def exporter() -> Iterator[threading.Thread]:
    """A thread named as the SDK names its span exporter, which spends some CPU."""
    stop = threading.Event()

    def export() -> None:
        sum(range(300_000))
        stop.wait()

    thread = threading.Thread(target=export, name=EXPORTER_THREAD, daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join()


def _task(headers: dict[str, str] | None) -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(headers=headers))


TRACED = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}


def _run(number: int, headers: dict[str, str] | None) -> None:
    task = _task(headers)
    benchprobe._before(task_id=str(number), task=task)
    sum(range(10_000))  # some CPU on this thread
    benchprobe._after(task_id=str(number), task=task)


def test_the_probe_sums_each_kind_apart_in_its_mapped_file(probe: Path) -> None:
    assert read(probe) == Totals()  # nothing before the first task
    for number, headers in enumerate([None, None, TRACED, {"x-other": "1"}, None, TRACED]):
        _run(number, headers)
    totals = read(probe)
    assert (totals.traced_tasks, totals.after_traced_tasks, totals.after_untraced_tasks) == (2, 1, 3)
    assert min(totals.traced_ns, totals.after_traced_ns, totals.after_untraced_ns) > 0
    benchprobe._after(task_id="never started", task=_task(None))  # a postrun without its prerun: ignored
    assert read(probe) == totals
    # A primer is not counted, and the untraced task after it counts as after an untraced one.
    _run(10, TRACED)
    _run(11, dict(PRIMER))
    _run(12, None)
    assert read(probe) - totals == Totals(1, ANY, 0, 0, 1, ANY)


def test_a_forked_pool_process_counts_in_a_file_of_its_own(
    probe: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _run(1, None)
    monkeypatch.setattr(os, "getpid", lambda: 4_000_000)  # what a forked child sees
    _run(2, TRACED)
    assert read(probe).after_untraced_tasks == 1 and read(probe).traced_tasks == 0
    assert read(path_for(tmp_path, 4_000_000))[:1] == (1,)  # the child's own, from zero


def test_the_probe_names_the_exporters_thread_for_the_bench(probe: Path, exporter: threading.Thread) -> None:
    _run(1, None)
    assert Path(f"/proc/self/task/{exporter.native_id}/comm").read_text().strip() == EXPORTER_COMM
    assert bench_spans.cpu_seconds(os.getpid(), EXPORTER_COMM) > 0.0
    assert bench_spans.cpu_seconds(os.getpid(), "no-such-thread") == 0.0


def test_interleaved_sends_untraced_untraced_traced_and_waits_for_each_chunk(
    probe: Path, exporter: threading.Thread, tmp_path: Path
) -> None:
    events: list[str] = []
    number = iter(range(1_000))
    _run(next(number), None)  # the probe names the exporter's thread, as the bursts' tasks did

    def send(headers: dict[str, str] | None, what: str) -> None:
        events.append(what)
        _run(next(number), headers)  # the pool process takes it at once

    figures = bench_spans.interleaved(
        untraced=lambda: send(None, "u"),
        traced=lambda: send(TRACED, "t"),
        primer=lambda: send(dict(PRIMER), "p"),
        triples=2,
        chunks=3,
        reset=lambda: events.append("reset"),
        drained=lambda count: events.append(f"drained {count}"),
        exported=lambda count: events.append(f"exported {count}"),
        pid=os.getpid(),
        probe_dir=tmp_path,
    )
    assert events == [*(["reset", "p", "u", "u", "t", "u", "u", "t", "drained 7"] * 3), "exported 6"]
    # Each chunk's first untraced message comes after its primer, which is not counted.
    assert figures["messages"] == {"traced": 6, "untraced after traced": 3, "untraced after untraced": 9}
    # The exporter's thread spent no CPU during the chunks here: no export share, so no ratio.
    assert figures["cpu"] is None


def test_interleaved_gives_no_figure_when_the_exporters_thread_changed(probe: Path, tmp_path: Path) -> None:
    figures = bench_spans.interleaved(
        untraced=lambda: None,
        traced=lambda: None,
        primer=lambda: None,
        triples=1,
        chunks=1,
        reset=lambda: None,
        drained=lambda count: None,
        exported=lambda count: None,
        pid=os.getpid(),
        probe_dir=tmp_path,
    )
    assert figures["cpu"] is None and "exporter" in figures["why"]
