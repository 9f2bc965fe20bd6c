"""Where a traced delivery's CPU goes (tradebus/tracing.py), in one process, without a broker.

    PYTHONPATH=. python scripts/span_cost.py

Parts, each the best of 5 runs, in microseconds of this process's CPU (every thread's) per span:
reading the ``traceparent`` (tradebus's canonical read, and the SDK propagator's); the ``process`` span
made, current and ended (tradebus/spanmaker.py; queued for the batching processor, nothing exported);
encoding it for OTLP in a batch of 512 (tradebus/spanwire.py, and the SDK's encoder); an OTLP/HTTP
export's fixed cost, per POST. Then the whole, a span per delivery exported over OTLP/HTTP to a sink in
a child process (whose CPU is not counted), in a tight loop and between ~0.1 ms of other Python work per
delivery, as a handler's (the cache the span's code and data find cold; median of 8 paired bursts).
docs/performance.md ("Traces") quotes it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from routing import build
from tradebus import spanwire, tracing
from tradebus.settings import TracingSettings

SPANS = 2_000
TOPOLOGY = build("mastertrade")
ROUTE = {"queue": "ticker_updates", "exchange": "", "routing_key": "ticker_updates"}


def headers() -> dict[str, Any]:
    return {"traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01", "published_at": 1.0}


def best(run: Callable[[], object], per: int) -> float:
    """Microseconds per item of ``run``, the best of 5."""
    times = []
    for _ in range(5):
        began = time.process_time()
        run()
        times.append(time.process_time() - began)
    return min(times) * 1e6 / per


def deliver(settings: TracingSettings, carried: dict[str, Any], work: Callable[[], object]) -> None:
    with tracing.consuming(settings, TOPOLOGY, carried, message_id=os.urandom(16).hex(), stage="s", **ROUTE):
        work()


def sink() -> tuple[str, int]:
    """An OTLP/HTTP endpoint answering every export with success, in a child process."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    pid = os.fork()
    if pid == 0:
        server.serve_forever()
    server.server_close()
    return f"http://127.0.0.1:{server.server_address[1]}/v1/traces", pid


def parts() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    kept, exporter = InMemorySpanExporter(), tracing._exporter
    tracing._exporter = lambda settings: kept
    settings = TracingSettings(exporter="console")
    carriers = [headers() for _ in range(SPANS)]
    print(f"read the traceparent      {best(lambda: [tracing._remote(h) for h in carriers], SPANS):6.1f}")
    print(f"  (the SDK's propagator   {best(lambda: [tracing.parent_of(h) for h in carriers], SPANS):6.1f})")

    def spans() -> None:
        for carried in carriers:
            deliver(settings, carried, lambda: None)
        tracing.flush()

    print(f"the span, made and queued {best(spans, SPANS):6.1f}")
    batch = list(kept.get_finished_spans())[:512]
    encode = best(lambda: spanwire.encode(batch), len(batch))
    print(f"its OTLP encoding         {encode:6.1f}")
    sdk = best(lambda: encode_spans(batch).SerializePartialToString(), len(batch))
    print(f"  (the SDK's encoder      {sdk:6.1f})")
    tracing.shutdown()
    tracing._exporter = exporter
    url, pid = sink()
    try:
        otlp = spanwire.Exporter(endpoint=url)
        post = best(lambda: [otlp.export(batch[:1]) for _ in range(50)], 50) - encode
        print(f"an export's POST          {post:6.0f} ({post / 512:.1f} a span in a batch of 512)")
    finally:
        os.kill(pid, 9)


def whole() -> None:
    url, pid = sink()
    settings = TracingSettings(exporter="otlp", endpoint=url, service_name="span-cost")
    document = {"symbol": "BTCUSDT", "price": 45_000.0, "bid": 44_999.5, "x": list(range(50))}

    def handler() -> None:
        for _ in range(12):
            json.loads(json.dumps(document))

    try:
        for name, work in (("tight loop", lambda: None), ("between ~0.1 ms of work", handler)):
            bursts: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(9):  # the first round warms up
                for traced in (False, True):
                    carriers = [headers() if traced else {} for _ in range(500)]
                    began = time.process_time()
                    for carried in carriers:
                        deliver(settings, carried, work)
                    tracing.flush()
                    bursts[traced].append((time.process_time() - began) * 1e6 / len(carriers))
            costs = [t - u for u, t in list(zip(bursts[False], bursts[True], strict=True))[1:]]
            base = statistics.median(bursts[False][1:])
            print(f"a span, exported, {name:24s} {statistics.median(costs):6.1f} (untraced: {base:.0f})")
    finally:
        tracing.shutdown()
        os.kill(pid, 9)


if __name__ == "__main__":
    parts()
    whole()
