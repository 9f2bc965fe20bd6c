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
    # 100 traced tasks of 60 us, 100 untraced after them of 25 us, 100 untraced after untraced of 20 us,
    # 10 primers of 30 us (5 us of waking beyond an untraced task after a traced one); the exporter 10 us a
    # span; the whole worker 1,000 us a message on average. A span: 40 + 5 + 10 = 55 us.
    counted = Totals(100, 100 * 60_000, 100, 100 * 25_000, 100, 100 * 20_000, 10, 10 * 30_000)
    figures = bench_spans.figures(counted, cpu=310 * 1000e-6, export=100 * 10e-6)
    assert figures["task_cpu_us"] == {
        "traced": 60.0,
        "untraced after traced": 25.0,
        "untraced after untraced": 20.0,
        "primers": 30.0,
    }
    assert (figures["export_cpu_us_per_span"], figures["span_cpu_us"]) == (10.0, 55.0)
    assert figures["cpu_us_per_message"] == 1000.0
    # An untraced message: the whole less the spans and the primers' waking, over every message.
    untraced = (310 * 1000 - 100 * 55 - 10 * 5) / 310
    assert figures["cpu"] == round((untraced + 55) / untraced, 3)


def test_unequal_counts_weigh_each_kind_by_its_own_count() -> None:
    counted = Totals(50, 50 * 60_000, 10, 10 * 30_000, 140, 140 * 20_000, 5, 5 * 20_000)
    figures = bench_spans.figures(counted, cpu=205 * 1000e-6, export=50 * 10e-6)
    assert figures["span_cpu_us"] == 40 + 10 + 10
    untraced = (205 * 1000 - 50 * 60) / 205  # primers cheaper than after a traced one: no waking counted
    assert figures["cpu"] == round((untraced + 60) / untraced, 3)


def test_no_figure_without_the_exporter_or_without_every_kind() -> None:
    # The exporter's thread not found: its share is unknown, so no ratio (never a flattering one).
    assert bench_spans.figures(Totals(*[10] * 8), cpu=1.0, export=0.0)["cpu"] is None
    no_traced = bench_spans.figures(Totals(0, 0, 0, 0, 10, 10, 1, 1), cpu=1.0, export=0.1)
    assert no_traced["cpu"] is None and "probe" in no_traced["why"]


def test_totals_subtract_what_was_counted_before() -> None:
    assert Totals(*range(10, 18)) - Totals(*range(8)) == Totals(*[10] * 8)


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
    # A primer is counted apart, and the untraced task after it counts as after an untraced one.
    _run(10, TRACED)
    _run(11, dict(PRIMER))
    _run(12, None)
    assert read(probe) - totals == Totals(1, ANY, 0, 0, 1, ANY, 1, ANY)


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


def test_interleaved_alternates_the_order_of_its_triples_and_waits_for_each_chunk(
    probe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    number = iter(range(1_000))
    _run(next(number), None)
    # The worker's threads as /proc would show them: at the start, at the last drain, after the export.
    snapshots = iter(
        [
            {1: ("celery", 1_000_000), 2: (EXPORTER_COMM, 100_000)},
            {1: ("celery", 1_700_000), 2: (EXPORTER_COMM, 150_000)},
            {1: ("celery", 1_700_500), 2: (EXPORTER_COMM, 190_000)},
        ]
    )
    monkeypatch.setattr(bench_spans, "_threads", lambda pid: next(snapshots))

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
    one_way, other_way = ["u", "u", "t"] * 2, ["t", "u", "u"] * 2
    chunks = [["reset", "p", *order, "drained 7"] for order in (one_way, other_way, one_way)]
    assert events == [*chunks[0], *chunks[1], *chunks[2], "exported 6"]
    assert figures["messages"] == {
        "traced": 6,
        "untraced after traced": 4,
        "untraced after untraced": 8,
        "primers": 3,
    }
    # The whole worker until the drain (700 + 50 us), the exporter alone after it (40 us; the 0.5 us of
    # the idle worker's other threads meanwhile is no message's); the export: 90 us for 6 spans.
    assert figures["cpu_us_per_message"] == round(790 / 21, 1)
    assert figures["export_cpu_us_per_span"] == 15.0


def test_interleaved_gives_no_figure_when_the_exporters_thread_changed(
    probe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = iter(
        [
            {1: ("celery", 0), 2: (EXPORTER_COMM, 0)},
            {1: ("celery", 10), 2: (EXPORTER_COMM, 10)},
            {1: ("celery", 10), 3: (EXPORTER_COMM, 5)},  # the provider was rebuilt: another thread
        ]
    )
    monkeypatch.setattr(bench_spans, "_threads", lambda pid: next(snapshots))
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
