"""``tradebus bench``'s order path: signal -> risk -> order -> paper fill, idle and under market data.

Pools at their profiles (``trading_signals``, ``order_requests``, ``executor_market_data``,
``ticker_updates``); one round trip at a time: a ticker sets the symbol's price (the time until the
executor sees it is the price lag), then a signal is published and the clock stops when its ``filled``
update reaches a queue the bench binds to ``order.update.filled.#``.

Three loads: none, ``background_ticks`` per second sent one per message, and the same sent
``BACKGROUND_BATCH`` per message. The ticks come from a process of their own (tradebus/ops/benchload.py):
a feed is not the client that times the orders, and in this process it would share that client's
interpreter lock. The loads are measured in ``BLOCKS`` interleaved blocks (idle, single, batched, idle,
...), the load's process paused (SIGSTOP) outside its blocks, so that the ratio loaded / idle compares
the same minutes of a machine whose speed drifts (docs/performance.md, "The order path").
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

import kombu
from kombu import Connection, Queue

from tradebus import recorder
from tradebus.mastertrade import account
from tradebus.mastertrade.messages import Ticker, TradingSignal
from tradebus.mastertrade.wire import publish
from tradebus.ops.benchkit import stage_count, wait
from tradebus.ops.harness import percentiles

#: How long a round trip waits for the executor to see its ticker's price before it goes on regardless.
PRICE_WAIT_SECONDS = 5.0
#: Ticks per message of the batched background load.
BACKGROUND_BATCH = 50
#: Interleaved blocks per load (the quick plan's few round trips make fewer).
BLOCKS = 5
POOLS = ("trading_signals", "order_requests", "executor_market_data", "ticker_updates")


def order_path(bench: Any) -> dict[str, Any]:
    """The scenario on ``bench`` (tradebus/ops/bench.py's Bench): its figures, per load."""
    for name in POOLS:
        bench.pool(name)
    bench.wait_consumers(*POOLS)
    account.reset()
    rate = bench.plan.background_ticks
    loads = {
        "idle": (0.0, 1),
        f"{rate:g} ticks/s, one per message": (rate, 1),
        f"{rate:g} ticks/s, {BACKGROUND_BATCH} per message": (rate, BACKGROUND_BATCH),
    }
    trips: dict[str, list[float]] = {load: [] for load in loads}
    lags: dict[str, list[float]] = {load: [] for load in loads}
    offered: dict[str, list[tuple[float, float]]] = {load: [] for load in loads}  # (ticks, seconds)
    blocks = max(1, min(BLOCKS, bench.plan.round_trips // 10))
    per_block = -(-bench.plan.round_trips // blocks)
    processes: dict[str, _Load] = {}
    fills: dict[str, float] = {}
    orders = kombu.Exchange("mastertrade.orders", type="topic", no_declare=True)
    tap = Queue(
        f"bench.fills.{uuid.uuid4().hex[:6]}", orders, routing_key="order.update.filled.#", exclusive=True
    )

    def on_fill(body: Any, message: Any) -> None:
        update = body if isinstance(body, dict) else json.loads(body)
        fills[update["request_id"]] = time.time()
        message.ack()

    trip = 0
    try:
        for load, (load_rate, batch) in loads.items():
            if load_rate > 0:
                processes[load] = _Load(bench, load_rate, batch)
        with Connection(bench.url) as conn, kombu.Consumer(conn, [tap], callbacks=[on_fill], accept=["json"]):
            for _ in range(blocks):
                for load in loads:
                    process = processes.get(load)
                    if process is not None:
                        process.resume()
                    begun, ticks_before = time.monotonic(), _ticks()
                    try:
                        for _ in range(per_block):
                            trips[load].append(_round_trip(bench, conn, fills, trip, lags[load]))
                            trip += 1
                    finally:
                        ended = time.monotonic()
                        if process is not None:
                            process.pause()  # and what it sent is drained, so counted now
                    if process is not None:  # the load's ticks the ticker stage had while the block ran
                        ticks = (_ticks() - ticks_before - per_block) * process.batch  # not the trips' own
                        offered[load].append((ticks, ended - begun))
    finally:
        for process in processes.values():
            process.close()
    results = {load: percentiles(values) for load, values in trips.items()}
    price_lags = {
        load: percentiles(values)
        | {"not_seen_in_time": sum(lag >= PRICE_WAIT_SECONDS * 1000 for lag in values)}
        for load, values in lags.items()
    }
    for load in loads:
        bench.echo(f"  signal -> fill, {load}: {results[load]}")
        bench.echo(f"  ticker -> executor's price, {load}: {price_lags[load]}")
    handled = {load: round(sum(t for t, _ in v) / sum(s for _, s in v)) for load, v in offered.items() if v}
    bench.echo(f"  ticks/s the ticker stage handled during each load's blocks: {handled}")
    idle, loaded = results["idle"], results[f"{rate:g} ticks/s, one per message"]
    return {
        "signal_to_fill_ms": results,
        "price_lag_ms": price_lags,
        "single ticks / idle": {p: round(loaded[p] / idle[p], 2) for p in ("p50", "p99")},
        "blocks": blocks,
        "ticks_per_second_handled": handled,
    }


def _ticks() -> int:
    """Deliveries the ticker stage has recorded (a TickerBatch is one)."""
    return stage_count("ticker_updates")


class _Load:
    """A load's publisher (tradebus/ops/benchload.py), paused (SIGSTOP) outside its blocks."""

    def __init__(self, bench: Any, rate: float, batch: int) -> None:
        self.rate, self.batch = rate, batch
        self.log = (bench.log_dir / f"background-{rate:g}-{batch}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tradebus.ops.benchload", f"{rate:g}", str(batch)],
            env={**os.environ, **bench.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            self._flowing(30.0)  # its start: imports, a connection
            self.pause()
        except BaseException:
            self.close()
            raise

    def _flowing(self, timeout: float) -> None:
        """Wait until a fifth of a second of the load has reached the ticker stage."""
        before = _ticks()
        wanted = max(1.0, self.rate / self.batch / 5)
        wait(lambda: _ticks() - before >= wanted, timeout, "the background ticks")

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self._flowing(10.0)

    def pause(self) -> None:
        """Stop the load, then wait until both market-data stages have drained what it sent: their counts
        stand still over a recorder flush (the next block must not run on the load's tail)."""
        self.process.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10.0
        last = _market_data_counts()
        while time.monotonic() < deadline:
            time.sleep(0.06)  # a little over the recorder's 50 ms flush: a count that moves is seen moving
            now = _market_data_counts()
            if now == last:
                return
            last = now
        raise RuntimeError("the market-data stages were still busy 10 s after the load stopped")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)  # a stopped process would hold a SIGKILL's reaping
            self.process.kill()
        self.process.wait(20)
        self.log.close()


def _market_data_counts() -> tuple[int, int]:
    counts = recorder.counts()
    return counts.get("ticker_updates", 0), counts.get("executor_market_data", 0)


def _round_trip(bench: Any, conn: Connection, fills: dict[str, float], trip: int, lags: list[float]) -> float:
    """One signal on a symbol of the bench's own; buying, then selling 1% higher (so no loss streak)."""
    symbol = f"BENCH{trip % 4}USDT"
    action = "BUY" if trip % 8 < 4 else "SELL"
    price = 100.0 * (1.01 ** (trip // 4))
    published = time.monotonic()
    publish(Ticker(symbol=symbol, price=price))
    # How long the executor takes to see the new price: reported, never a reason to abort.
    while account.last_price(symbol) != price and time.monotonic() - published < PRICE_WAIT_SECONDS:
        time.sleep(0.001)
    lags.append((time.monotonic() - published) * 1000)
    signal_ = TradingSignal(
        strategy_id="bench",
        symbol=symbol,
        action=action,
        confidence=0.9,
        entry_price=price,
        position_size_pct=0.02,
        timestamp=bench.signals_from + timedelta(minutes=trip),
    )
    request_id = account.request_id_for(signal_)
    begun = time.time()
    publish(signal_)
    deadline = time.monotonic() + 30
    while request_id not in fills and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=1)
    if request_id not in fills:
        raise RuntimeError(f"no fill for {action} {symbol} (round trip {trip}); logs in {bench.log_dir}")
    return (fills[request_id] - begun) * 1000
