"""``tradebus bench`` runs every scenario and reports its figures (a smoke test: figures are not judged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bus import Vhost

TRADEBUS = str(Path(sys.executable).with_name("tradebus"))


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.serial
def test_quick_bench_measures_the_baselines_the_fan_out_and_the_order_path(broker: Vhost) -> None:
    result = subprocess.run(
        [TRADEBUS, "bench", "--quick", "--json"],
        env={**os.environ, "TRADEBUS_BROKER_URL": broker.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures["hop"]) == {"raw kombu", "bare celery", "tradebus stage", "tradebus / bare celery"}
    for consumer in ("raw kombu", "bare celery", "tradebus stage"):
        assert figures["hop"][consumer]["per_second"] > 0
        assert figures["hop"][consumer]["rss_mb"] > 0
    assert set(figures["fanout"]) == {"1 per message", "100 per message"}
    assert all(f["ticks_per_second"] > 0 for f in figures["fanout"].values())
    single = figures["fanout"]["1 per message"]
    assert single["raw_kombu_ticks_per_second"] > 0 and single["tradebus / raw kombu"] > 0
    assert figures["hop"]["tradebus / bare celery"]["memory_per_pool_process"] > 0
    loads = figures["order_path"]["signal_to_fill_ms"]
    assert len(loads) == 3 and all(p["n"] == 6 for p in loads.values())
    lags = figures["order_path"]["price_lag_ms"]
    assert set(lags) == set(loads) and all(p["n"] == 6 for p in lags.values())
    assert set(figures["order_path"]["single ticks / idle"]) == {"p50", "p99"}
    assert figures["machine"]["cpus"] == os.cpu_count()
    letrade = figures["letrade_async"]
    assert set(letrade["candles_per_second"]) == {
        "bare aio-pika",
        "MessageBus.publish",
        "MessageBus.publish_many",
    }
    assert all(rate > 0 for rate in letrade["candles_per_second"].values())
    assert letrade["MessageBus / bare aio-pika"] > 0 and letrade["request_round_trip_ms"]["n"] == 5
    traces = figures["traces"]
    assert set(traces["traced / untraced"]) == {"cpu", "cpu, bursts", "p50", "p99", "throughput"}
    assert all(ratio > 0 for ratio in traces["traced / untraced"].values())
    # Every traced message's span reached the OTLP sink: the warm-up's, the paced half, the burst and the
    # interleaved half.
    assert traces["spans_exported"] == 10 + 20 + 200 + 66
    # The interleaved measure told the kinds' tasks apart and found the exporter's thread (its CPU counts).
    for hop, spans in ((traces, 66), (traces["order path hop"], 10)):
        measured = hop["interleaved"]
        assert measured["cpu"] is not None, measured
        assert measured["messages"]["traced"] == spans and min(measured["messages"].values()) > 0
        assert min(measured["task_cpu_us"].values()) > 0 and measured["export_cpu_us_per_span"] > 0
    # The risk stage, a hop of every signal's trace: one span per traced signal, its order carrying it.
    order_hop = traces["order path hop"]
    assert set(order_hop["traced / untraced"]) == {"cpu", "cpu, bursts", "p50", "p99", "throughput"}
    assert all(ratio > 0 for ratio in order_hop["traced / untraced"].values())
    assert order_hop["spans_exported"] == 5 + 4 + 40 + 10
    # The batched feed end to end (connector, strategy, market-data service), and command -> event.
    assert figures["letrade"]["candles_per_second"] > 0 and figures["letrade"]["feed"]["complete"]
    assert figures["letrade"]["command_to_event_ms"]["p50"] > 0
    assert figures["letrade"]["command_to_event_ms"]["n"] == 5
