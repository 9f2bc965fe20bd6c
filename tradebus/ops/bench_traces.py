"""``tradebus bench``'s traces scenario: what a span costs one hop (tradebus/tracing.py).

One tradebus stage (``ticker_updates``, one process, prefetch 1) runs with traces on, exporting over
OTLP/HTTP to a sink in this process that accepts and counts them. Ticks reach it without trace context
(the path of ``TRADEBUS_TRACES=off``: no span, no header written; on top of it only a settings lookup and
a header check) and with a ``traceparent`` (a ``process`` span per message, batched and exported): paced
and interleaved one by one (latency), then in bursts of each kind, alternately (throughput, and the
pool's CPU time per message, what a busy machine disturbs least). The ratios traced / untraced are the
cost; target at most 1.05 (docs/performance.md). A burst is at most ``BURST`` messages, so that neither
kind's outlives ``ticker_updates``'s TTL on a busy machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kombu import Connection

from tradebus import recorder
from tradebus.application import TradebusCelery
from tradebus.mastertrade.messages import Ticker
from tradebus.ops.benchkit import Plan, stage_count, wait
from tradebus.ops.harness import percentiles
from tradebus.publisher import send
from workers.launch import start_pool, wait_for_consumers

#: Alternate runs of each kind (the quick plan runs one); the best of each is kept.
ROUNDS = 3
QUEUE = "ticker_updates"
#: Messages of the flat-out part: what the slower kind drains well within the queue's 10 s TTL.
BURST = 1000
#: Messages of each kind sent first, unmeasured: the pool process's first messages warm it up.
WARM_UP = 50


class _Sink:
    """An OTLP/HTTP endpoint that answers every export with success and keeps the bodies; their spans are
    counted afterwards (``spans``), not while the bench's publisher shares this process."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def spans(self) -> int:
        """How many spans were exported to it."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        requests = [ExportTraceServiceRequest.FromString(body) for body in self.bodies]
        return sum(
            len(s.spans) for request in requests for r in request.resource_spans for s in r.scope_spans
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def _sink() -> Iterator[_Sink]:
    sink = _Sink()
    try:
        yield sink
    finally:
        sink.close()


def traces(app: TradebusCelery, plan: Plan, echo: Callable[[str], None], log_dir: Path) -> dict[str, Any]:
    """Run the scenario on ``app``'s bench vhost (tradebus/ops/bench.py); returns the figures."""
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401 - what the traced pool exports with
    except ImportError:
        return {"skipped": "the OTLP exporter is not installed: pip install 'tradebus[otlp]'"}
    settings = app.settings
    body = Ticker(symbol="BTCUSDT", price=45_000.0, bid=44_999.5, ask=45_000.5).model_dump_json().encode()
    with _sink() as sink:
        env = {
            "TRADEBUS_TOPOLOGY": app.topology.name,
            "TRADEBUS_BROKER_URL": settings.broker_url,
            "TRADEBUS_REDIS_URL": settings.redis_url,
            "TRADEBUS_REDIS_PREFIX": settings.redis_prefix,
            "TRADEBUS_TRACES": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": sink.url,
            "OTEL_SERVICE_NAME": "bench",
            "TRADEBUS_DECLARE_TOPOLOGY": "0",  # the bench declared it: the pool starts sooner
        }
        if plan.hop_messages < 100:
            # A smoke test waits for its spans 200 ms at a time, not the SDK's 5 s (the figures use 5 s).
            env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
        argv = ["--loglevel", "WARNING", "-c", "1", "--prefetch-multiplier", "1"]
        pool = start_pool(QUEUE, log_dir, argv, env)
        try:
            with Connection(settings.broker_url) as conn:
                if wait_for_consumers(conn, [QUEUE], 90.0, [pool]):
                    raise RuntimeError(f"no consumer on {QUEUE}; logs in {log_dir}")
            figures = _alternate(app, plan, body, sink, pool.process.pid)
        finally:
            # The figures and spans are in: the pool (its own process group) goes at once, not through a
            # shutdown of seconds.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pool.process.pid, signal.SIGKILL)
            pool.process.wait()
        figures["spans_exported"] = sink.spans
    untraced, traced = figures["untraced"], figures["traced"]
    figures["traced / untraced"] = {
        "cpu": round(traced["cpu_ms_per_message"] / untraced["cpu_ms_per_message"], 3),
        "p50": round(traced["latency_ms"]["p50"] / untraced["latency_ms"]["p50"], 3),
        "p99": round(traced["latency_ms"]["p99"] / untraced["latency_ms"]["p99"], 3),
        "throughput": round(traced["per_second"] / untraced["per_second"], 3),
    }
    echo(f"  traces: {figures}")
    return figures


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` and its descendants so far (a worker and its pool)."""
    ticks, pids = 0, [pid]
    while pids:
        current = pids.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
    return ticks / os.sysconf("SC_CLK_TCK")


def _alternate(app: TradebusCelery, plan: Plan, body: bytes, sink: _Sink, pid: int) -> dict[str, Any]:
    """Latency: one paced series, untraced and traced messages alternating one by one (both see the same
    moments of a busy machine); the one pool process takes them in order, so the recorded latencies
    alternate too. Throughput and CPU per message: bursts of each kind, alternately, ``ROUNDS`` times,
    the best of each kind kept; a traced burst's CPU counts until its last span reached the sink (the
    export runs on the pool's own background thread)."""

    def untraced() -> None:
        send(app, body, exchange="", routing_key=QUEUE)

    def traced() -> None:
        # A traced upstream's context: the stage makes a child span of it for every message.
        parent = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
        send(app, body, exchange="", routing_key=QUEUE, headers={"traceparent": parent})

    def drained(before: int, count: int, what: str) -> None:
        wait(lambda: stage_count(QUEUE) >= before + count, 120, what)

    before, warm_up = stage_count(QUEUE), WARM_UP if plan.hop_messages >= 100 else WARM_UP // 5
    for _ in range(warm_up):
        untraced()
        traced()
    drained(before, 2 * warm_up, "the warm-up")
    spans = warm_up
    _exported(sink, spans)

    pairs = plan.hop_messages // 2
    before, paced_from = stage_count(QUEUE), time.monotonic()
    for i in range(2 * pairs):
        time.sleep(max(0.0, i / plan.hop_rate - (time.monotonic() - paced_from)))
        (traced if i % 2 else untraced)()
    drained(before, 2 * pairs, "the paced messages")
    spans += pairs
    oldest_first = recorder.latencies(QUEUE)[: 2 * pairs][::-1]
    figures: dict[str, dict[str, Any]] = {
        "untraced": {"latency_ms": percentiles(oldest_first[0::2])},
        "traced": {"latency_ms": percentiles(oldest_first[1::2])},
    }
    _exported(sink, spans)

    burst = min(plan.burst_messages, BURST)
    for _ in range(1 if plan.hop_messages < 100 else ROUNDS):  # the quick plan: one of each
        for name, sender in (("untraced", untraced), ("traced", traced)):
            cpu, before, begun = _cpu_seconds(pid), stage_count(QUEUE), time.monotonic()
            for _ in range(burst):
                sender()
            drained(before, burst, "the burst")
            rate = burst / (time.monotonic() - begun)
            if sender is traced:
                spans += burst
                _exported(sink, spans)
            cpu_ms = (_cpu_seconds(pid) - cpu) * 1000 / burst
            kept = figures[name]
            kept["per_second"] = round(max(kept.get("per_second", 0.0), rate), 1)
            kept["cpu_ms_per_message"] = round(min(kept.get("cpu_ms_per_message", cpu_ms), cpu_ms), 4)
    return figures


def _exported(sink: _Sink, spans: int, timeout: float = 60.0) -> None:
    """Wait until the sink has ``spans`` spans (the pool exports every ``OTEL_BSP_SCHEDULE_DELAY``)."""
    deadline = time.monotonic() + timeout
    while sink.spans < spans:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the traced pool exported {sink.spans} spans of {spans} in {timeout:.0f}s")
        time.sleep(0.1)
