"""``tradebus bench``'s traces scenario: what a span costs one hop (tradebus/tracing.py).

One tradebus stage (``ticker_updates``, one process, prefetch 1) runs with traces on, exporting over
OTLP/HTTP to a sink in this process that accepts and counts them. Ticks are sent to it alternately
without trace context (the path of ``TRADEBUS_TRACES=off``: no span, no header written; on top of it only
a settings lookup and a header check) and with a ``traceparent`` (a ``process`` span per message, batched
and exported), paced (latency) then flat out (throughput), ``ROUNDS`` times each, the best kept; the
ratio traced / untraced is the cost. Target: at most 1.05 (docs/performance.md). The burst is at most
``BURST`` messages, so that neither kind's outlives ``ticker_updates``'s TTL on a busy machine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kombu import Connection

from tradebus import recorder
from tradebus.application import TradebusCelery
from tradebus.mastertrade.messages import Ticker
from tradebus.ops.benchkit import Plan, stage_count, wait
from tradebus.publisher import send
from workers.launch import start_pool, stop_all, wait_for_consumers

#: Alternate runs of each kind (the quick plan runs one); the best of each is kept.
ROUNDS = 3
QUEUE = "ticker_updates"
#: Messages of the flat-out part: what the slower kind drains well within the queue's 10 s TTL.
BURST = 1000
#: Messages of each kind sent first, unmeasured: the pool process's first messages warm it up.
WARM_UP = 50


class _Sink:
    """An OTLP/HTTP endpoint that answers every export with success and counts its spans."""

    def __init__(self) -> None:
        self.spans = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.spans += _count_spans(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _count_spans(body: bytes) -> int:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest.FromString(body)
    return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)


@contextmanager
def _sink() -> Iterator[_Sink]:
    sink = _Sink()
    try:
        yield sink
    finally:
        sink.close()


def traces(
    app: TradebusCelery,
    plan: Plan,
    echo: Callable[[str], None],
    log_dir: Path,
    measure: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """Run the scenario on ``app``'s bench vhost; ``measure(sender, count, samples)`` is the hop's own
    paced-then-burst measurement (tradebus/ops/bench.py). Returns the figures."""
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
        }
        argv = ["--loglevel", "WARNING", "-c", "1", "--prefetch-multiplier", "1"]
        pool = start_pool(QUEUE, log_dir, argv, env)
        try:
            with Connection(settings.broker_url) as conn:
                if wait_for_consumers(conn, [QUEUE], 90.0, [pool]):
                    raise RuntimeError(f"no consumer on {QUEUE}; logs in {log_dir}")
            figures = _alternate(app, plan, body, measure)
        finally:
            stop_all([pool])
        figures["spans_exported"] = sink.spans
    untraced, traced = figures["untraced"], figures["traced"]
    figures["traced / untraced"] = {
        "p50": round(traced["latency_ms"]["p50"] / untraced["latency_ms"]["p50"], 3),
        "p99": round(traced["latency_ms"]["p99"] / untraced["latency_ms"]["p99"], 3),
        "throughput": round(traced["per_second"] / untraced["per_second"], 3),
    }
    echo(f"  traces: {figures}")
    return figures


def _alternate(
    app: TradebusCelery, plan: Plan, body: bytes, measure: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """Untraced and traced runs, alternately; each kind's best latency and best throughput."""

    def untraced() -> None:
        send(app, body, exchange="", routing_key=QUEUE)

    def traced() -> None:
        # A traced upstream's context: the stage makes a child span of it for every message.
        parent = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
        send(app, body, exchange="", routing_key=QUEUE, headers={"traceparent": parent})

    start = stage_count(QUEUE)
    for _ in range(WARM_UP):
        untraced()
        traced()
    wait(lambda: stage_count(QUEUE) >= start + 2 * WARM_UP, 60, "the warm-up")
    runs = replace(plan, burst_messages=min(plan.burst_messages, BURST))
    best: dict[str, dict[str, Any]] = {}
    for _ in range(1 if plan.hop_messages < 100 else ROUNDS):
        for name, sender in (("untraced", untraced), ("traced", traced)):
            run = measure(sender, lambda: stage_count(QUEUE), lambda: recorder.latencies(QUEUE), runs)
            if name not in best:
                best[name] = run
                continue
            kept = best[name]
            if run["latency_ms"]["p50"] < kept["latency_ms"]["p50"]:
                kept["latency_ms"] = run["latency_ms"]
            kept["per_second"] = max(kept["per_second"], run["per_second"])
    return dict(best)
