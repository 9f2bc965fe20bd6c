"""``tradebus bench``'s traces scenario: what a span costs one hop (tradebus/tracing.py).

Two tradebus stages, each one process with prefetch 1, run with traces on, exporting over OTLP/HTTP to a
sink in this process that accepts and counts them:

* ``ticker_updates``, the cheapest hop there is (market data is never traced in production: the floor);
* the risk stage on ``trading_signals`` ("order path hop"), a hop every signal's trace takes: it decides
  each signal in Redis and publishes its order request, which carries the span on.

Messages reach each stage on the default exchange without trace context (the path of
``TRADEBUS_TRACES=off``: no span, no header written; on top of it only a settings lookup and a header
check) and with a ``traceparent`` (a ``process`` span per message, batched and exported): paced and
interleaved one by one (latency), then in bursts of each kind, alternately (throughput, and the pool's
CPU time per message: ``cpu, bursts``), then interleaved again, each kind's CPU told apart inside the pool
(tradebus/ops/bench_spans.py: the headline ``cpu``). The ratios traced / untraced are the cost; target at
most 1.05 (docs/performance.md). A ticker burst is at most ``BURST`` messages, so that neither
kind's outlives ``ticker_updates``'s TTL on a busy machine; before each signal burst the paper account
is reset, so every signal is approved against the same small book (each open reservation costs the
decisions after it its reading).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import median
from typing import Any

from kombu import Connection

from tradebus import recorder
from tradebus.application import TradebusCelery
from tradebus.mastertrade import account
from tradebus.mastertrade.messages import Ticker, TradingSignal
from tradebus.ops import bench_spans, benchprobe, probefile
from tradebus.ops.benchkit import Plan, pool_env, stage_count, wait
from tradebus.ops.harness import percentiles
from tradebus.publisher import send
from workers.launch import PoolProcess, start_pool, wait_for_consumers

#: Rounds of one burst of each kind, untraced first in every other round (the quick plan runs one); the
#: medians are kept. The bursts are the whole-process check; the interleaved measure is the cost.
ROUNDS = 4
QUEUE = "ticker_updates"
#: Messages of a burst: what the slower kind drains well within the queue's 10 s TTL.
BURST = 500
#: Messages of each kind sent first, unmeasured: the pool process's first messages warm it up.
WARM_UP = 50
#: The order path hop: its queue, its rounds and signals per burst (two fifths in the quick plan), and how
#: much slower than ``Plan.hop_rate`` its paced signals go (a decision costs a few ms of CPU).
SIGNALS = "trading_signals"
SIGNAL_ROUNDS = 4
SIGNAL_BURST = 100
SIGNAL_PACE = 4
#: How often the pools export (``OTEL_BSP_SCHEDULE_DELAY``, ms): the SDK's default, which tradebus keeps in
#: production. An export's fixed cost (about 1.3 ms of CPU a POST) is shared by the spans of a batch (512
#: at most), so a shorter interval would make a slow hop's span dearer than it is in production.
EXPORT_EVERY_MS = "5000"
#: Triples (untraced, untraced, traced) of the interleaved measure: its traced messages, about a kind's
#: bursts (one burst in the quick plan); the ticks in four chunks, the signals in chunks of five.
TICKER_TRIPLES, TICKER_CHUNKS, SIGNAL_TRIPLES, SIGNAL_CHUNK = 1_000, 4, 200, 5


class _Sink:
    """An OTLP/HTTP endpoint that answers every export with success and keeps the bodies; their spans are
    counted afterwards (``spans``), not while the bench's publisher shares this process."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.counted, self.total = 0, 0
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
        """How many spans were exported to it (the bodies not counted yet are parsed now)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        bodies = self.bodies[self.counted :]  # a body appended meanwhile is counted next time
        self.counted += len(bodies)
        requests = [ExportTraceServiceRequest.FromString(body) for body in bodies]
        self.total += sum(
            len(s.spans) for request in requests for r in request.resource_spans for s in r.scope_spans
        )
        return self.total

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


@dataclass(frozen=True)
class _Hop:
    """One stage to measure: how to send it a message without and with trace context."""

    queue: str
    untraced: Callable[[], object]
    traced: Callable[[], object]
    warm_up: int
    pairs: int
    burst: int
    rounds: int
    #: The interleaved measure (tradebus/ops/bench_spans.py): its chunks, each a ``reset``, a ``primer``
    #: (the message the probe counts apart) and ``between_resets`` triples (untraced, untraced, traced).
    chunks: int
    between_resets: int
    primer: Callable[[], object]
    #: Paced messages per second.
    rate: float
    #: Before the warm-up, the paced series and each burst.
    reset: Callable[[], object] = lambda: None


def traces(app: TradebusCelery, plan: Plan, echo: Callable[[str], None], log_dir: Path) -> dict[str, Any]:
    """Run the scenario on ``app``'s bench vhost (tradebus/ops/bench.py); returns the figures."""
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401 - what the traced pool exports with
    except ImportError:
        return {"skipped": "the OTLP exporter is not installed: pip install 'tradebus[otlp]'"}
    settings = app.settings
    quick = plan.hop_messages < 100
    with _sink() as sink, tempfile.TemporaryDirectory(prefix="tradebus-probe-") as probe_dir:
        env = {
            probefile.PROBE_DIR_ENV: probe_dir,
            **pool_env(app),
            "TRADEBUS_TRACES": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": sink.url,
            "OTEL_SERVICE_NAME": "bench",
            "TRADEBUS_DECLARE_TOPOLOGY": "0",  # the bench declared it: the pool starts sooner
            # A smoke test waits for its spans 200 ms at a time.
            "OTEL_BSP_SCHEDULE_DELAY": "200" if quick else EXPORT_EVERY_MS,
        }
        # The probe (tradebus/ops/benchprobe.py) tells traced and untraced tasks' CPU apart.
        argv = ["--loglevel", "WARNING", "-c", "1", "--prefetch-multiplier", "1", "-I", benchprobe.__name__]
        pools: list[PoolProcess] = []
        try:
            for queue in (QUEUE, SIGNALS):
                pools.append(start_pool(queue, log_dir, argv, env))
            with Connection(settings.broker_url) as conn:
                if wait_for_consumers(conn, [QUEUE, SIGNALS], 90.0, pools):
                    raise RuntimeError(f"no consumer on {QUEUE} or {SIGNALS}; logs in {log_dir}")
            probes = Path(probe_dir)
            figures = _measure(_ticker_hop(app, plan), plan, sink, pools[0], probes)
            figures["order path hop"] = _measure(_signal_hop(app, plan), plan, sink, pools[1], probes)
        finally:
            # The figures and spans are in: the pools (each its own process group) go at once, not
            # through a shutdown of seconds.
            for pool in pools:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pool.process.pid, signal.SIGKILL)
                pool.process.wait()
    echo(f"  traces: {figures}")
    return figures


def _parent() -> dict[str, str]:
    """A traced upstream's context: the stage makes a child span of it for every message."""
    return {"traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"}


def _ticker_hop(app: TradebusCelery, plan: Plan) -> _Hop:
    body = Ticker(symbol="BTCUSDT", price=45_000.0, bid=44_999.5, ask=45_000.5).model_dump_json().encode()
    quick = plan.hop_messages < 100
    return _Hop(
        QUEUE,
        untraced=lambda: send(app, body, exchange="", routing_key=QUEUE),
        traced=lambda: send(app, body, exchange="", routing_key=QUEUE, headers=_parent()),
        warm_up=WARM_UP // 5 if quick else WARM_UP,
        pairs=plan.hop_messages // 2,
        burst=min(plan.burst_messages, BURST),
        rounds=ROUNDS,
        chunks=1 if quick else TICKER_CHUNKS,
        between_resets=min(plan.burst_messages, BURST) // 3 if quick else TICKER_TRIPLES // TICKER_CHUNKS,
        primer=lambda: send(app, body, exchange="", routing_key=QUEUE, headers=dict(probefile.PRIMER)),
        rate=plan.hop_rate,
    )


def _signal_hop(app: TradebusCelery, plan: Plan) -> _Hop:
    """Signals straight to the risk stage's queue (a signal published on its route would begin a trace
    whatever its headers): each a new BUY of $100 (0.1% of the book) on one of five symbols, so each is
    approved and its order request published, and a burst stays within every limit."""
    quick = plan.hop_messages < 100
    count = itertools.count()
    since = datetime.now(UTC) - timedelta(hours=1)

    def body() -> bytes:
        n = next(count)
        return (
            TradingSignal(
                strategy_id="bench",
                symbol=f"TRACE{n % 5}USDT",
                action="BUY",
                confidence=0.9,
                entry_price=100.0,
                position_size_pct=0.001,
                timestamp=since + timedelta(milliseconds=n),  # a new signal, a new decision
            )
            .model_dump_json()
            .encode()
        )

    return _Hop(
        SIGNALS,
        untraced=lambda: send(app, body(), exchange="", routing_key=SIGNALS),
        traced=lambda: send(app, body(), exchange="", routing_key=SIGNALS, headers=_parent()),
        warm_up=WARM_UP // 10 if quick else WARM_UP // 2,
        pairs=plan.hop_messages // 10,
        burst=SIGNAL_BURST * 2 // 5 if quick else SIGNAL_BURST,
        rounds=SIGNAL_ROUNDS,
        chunks=2 if quick else SIGNAL_TRIPLES // SIGNAL_CHUNK,
        # Each approved signal holds a reservation until its fill, and no executor runs here: a reset every
        # sixteen signals (a primer, five triples) keeps the book the risk stage reads about as small as on
        # the order path (a burst's hundred reservations would double the hop's CPU, the span's share
        # halved with it).
        between_resets=SIGNAL_CHUNK,
        primer=lambda: send(app, body(), exchange="", routing_key=SIGNALS, headers=dict(probefile.PRIMER)),
        rate=plan.hop_rate / SIGNAL_PACE,
        reset=account.reset,
    )


def _measure(hop: _Hop, plan: Plan, sink: _Sink, pool: PoolProcess, probe_dir: Path) -> dict[str, Any]:
    """One hop's figures (``_alternate``, then the interleaved measure of tradebus/ops/bench_spans.py,
    whose ratio is the headline ``cpu``) and the spans its pool exported."""
    exported_before = sink.spans
    figures = _alternate(hop, plan, sink, pool.process.pid)
    queue, spans = hop.queue, sink.spans

    counted = stage_count(queue)

    def drained(count: int) -> None:
        nonlocal counted
        counted += count
        wait(lambda: stage_count(queue) >= counted, 120, "the interleaved messages")

    figures["interleaved"] = bench_spans.interleaved(
        untraced=hop.untraced,
        traced=hop.traced,
        primer=hop.primer,
        triples=hop.between_resets,
        chunks=hop.chunks,
        reset=hop.reset,
        drained=drained,
        exported=lambda count: _exported(sink, spans + count),
        pid=pool.process.pid,
        probe_dir=probe_dir,
    )
    ratios = figures["traced / untraced"]
    ratios["cpu, bursts"] = ratios.pop("cpu")
    figures["traced / untraced"] = {"cpu": figures["interleaved"]["cpu"], **ratios}
    figures["spans_exported"] = sink.spans - exported_before
    return figures


def _alternate(hop: _Hop, plan: Plan, sink: _Sink, pid: int) -> dict[str, Any]:
    """Latency: one paced series, untraced and traced messages alternating one by one (both see the same
    moments of a busy machine); the one pool process takes them in order, so the recorded latencies
    alternate too. Throughput and CPU per message: a burst of each kind, one after the other (each kind
    first in half the rounds), ``hop.rounds`` times; each kind's medians are kept, and the ratios are the
    medians of each round's (a round's two bursts see much the same machine). A traced burst's CPU counts
    until its last span reached the sink (the export runs on the pool's own background thread), and both
    kinds' windows last the same export interval past the burst."""
    queue = hop.queue
    export_seconds = (200 if plan.hop_messages < 100 else int(EXPORT_EVERY_MS)) / 1000 + 0.2

    def drained(before: int, count: int, what: str) -> None:
        wait(lambda: stage_count(queue) >= before + count, 120, what)

    hop.reset()
    spans, before = sink.spans, stage_count(queue)
    for _ in range(hop.warm_up):
        hop.untraced()
        hop.traced()
    drained(before, 2 * hop.warm_up, "the warm-up")
    spans += hop.warm_up
    _exported(sink, spans)

    hop.reset()
    before, paced_from = stage_count(queue), time.monotonic()
    for i in range(2 * hop.pairs):
        time.sleep(max(0.0, i / hop.rate - (time.monotonic() - paced_from)))
        (hop.traced if i % 2 else hop.untraced)()
    drained(before, 2 * hop.pairs, "the paced messages")
    spans += hop.pairs
    oldest_first = recorder.latencies(queue)[: 2 * hop.pairs][::-1]
    figures: dict[str, dict[str, Any]] = {
        "untraced": {"latency_ms": percentiles(oldest_first[0::2])},
        "traced": {"latency_ms": percentiles(oldest_first[1::2])},
    }
    _exported(sink, spans)

    rounds: dict[str, list[tuple[float, float]]] = {"untraced": [], "traced": []}  # (CPU ms, per s)
    kinds = [("untraced", hop.untraced), ("traced", hop.traced)]
    for round_ in range(1 if plan.hop_messages < 100 else hop.rounds):  # the quick plan: one of each
        for name, sender in kinds[:: -1 if round_ % 2 else 1]:
            hop.reset()
            cpu, begun, before = bench_spans.cpu_seconds(pid), time.monotonic(), stage_count(queue)
            for _ in range(hop.burst):
                sender()
            drained(before, hop.burst, "the burst")
            rate = hop.burst / (time.monotonic() - begun)
            # Both kinds' CPU windows last the same export interval past the drain (what an idle worker
            # spends meanwhile counts against both, not only the traced burst that waits for its export).
            settled = time.monotonic() + export_seconds
            if sender is hop.traced:
                spans += hop.burst
                _exported(sink, spans)
            time.sleep(max(0.0, settled - time.monotonic()))
            rounds[name].append(((bench_spans.cpu_seconds(pid) - cpu) * 1000 / hop.burst, rate))
    for name, kept in rounds.items():
        figures[name]["per_second"] = round(median(rate for _, rate in kept), 1)
        figures[name]["cpu_ms_per_message"] = round(median(cpu for cpu, _ in kept), 4)
    pairs = list(zip(rounds["untraced"], rounds["traced"], strict=True))
    figures["traced / untraced"] = {
        "cpu": round(median(traced[0] / untraced[0] for untraced, traced in pairs), 3),
        "p50": round(figures["traced"]["latency_ms"]["p50"] / figures["untraced"]["latency_ms"]["p50"], 3),
        "p99": round(figures["traced"]["latency_ms"]["p99"] / figures["untraced"]["latency_ms"]["p99"], 3),
        "throughput": round(median(traced[1] / untraced[1] for untraced, traced in pairs), 3),
    }
    return figures


def _exported(sink: _Sink, spans: int, timeout: float = 60.0) -> None:
    """Wait until the sink has ``spans`` spans (the pool exports every ``OTEL_BSP_SCHEDULE_DELAY``)."""
    deadline = time.monotonic() + timeout
    while sink.spans < spans:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the traced pool exported {sink.spans} spans of {spans} in {timeout:.0f}s")
        time.sleep(0.1)
