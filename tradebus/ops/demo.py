"""``tradebus demo``: ticks become signals, risk decisions, orders and fills, in about a minute.

On RabbitMQ every pool is its own worker process, sized by its profile. With ``memory://``, or when no
broker is reachable and none was asked for, everything runs in this process on Kombu's in-memory
transport (tradebus/memory.py says what that transport cannot enforce), with an in-process Redis when no
Redis answers. Each run keeps its state under a Redis prefix of its own, so the paper account starts
fresh, and removes it at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import click
from kombu import Connection

from routing import Topology
from tradebus import recorder
from tradebus.application import TradebusCelery
from tradebus.mastertrade import account, simulator
from tradebus.mastertrade.wire import publish
from tradebus.ops import dlq
from tradebus.ops.harness import DEMO_SEED, depths, environment, percentiles
from tradebus.ops.report import table

#: After the simulator stops, how long the pipeline may take to finish what is in flight.
DRAIN_TIMEOUT = 30.0
#: How many of a run's new dead letters per DLQ the summary describes.
DEAD_LETTERS_SHOWN = 5
#: How many of a DLQ's new dead letters are read to tell failures from stale prices.
DEAD_LETTERS_READ = 10_000
PIPELINE_QUEUES = ("trading_signals", "order_requests", "strategy_market_data", "executor_market_data")


@dataclass
class Result:
    """What a demo run did; ``as_json`` is the ``--json`` line."""

    broker: str
    seconds: float
    ticks: int = 0
    signals: int = 0
    orders: int = 0
    fills: int = 0
    #: Messages that failed somewhere and sit in a DLQ (the run's verdict: it must be 0).
    dead_letters: int = 0
    #: Market data RabbitMQ expired (its TTL) or pushed out (its length limit) into its DLQ: stale prices.
    expired_market_data: int = 0
    unrouted: int = 0
    refused: int = 0
    rejected: int = 0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Each new dead letter: its queue, reason, routing key and error, so a red run says why.
    dead_letter_reasons: list[dict[str, str]] = field(default_factory=list)
    portfolio: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        """One line of JSON."""
        return json.dumps(asdict(self), sort_keys=True)


def pipeline_queues(topology: Topology) -> list[str]:
    """PIPELINE_QUEUES in ``topology``: a sharded queue stands for its shards."""
    return [
        name
        for queue in PIPELINE_QUEUES
        for name in (topology.sharded[queue].queues if queue in topology.sharded else (queue,))
    ]


def _in_flight(topology: Topology, connection: Connection) -> bool:
    metrics = recorder.metrics()
    decided = metrics.get("orders", 0) + metrics.get("signals_refused", 0)
    done = sum(metrics.get(k, 0) for k in ("fills", "orders_rejected", "orders_cancelled"))
    queued = sum(depths(connection, pipeline_queues(topology)).values())
    # A fill is booked before its update is published: wait for the updates' stage too.
    answered = recorder.counts().get("order_updates", 0)
    return (
        queued > 0
        or decided < metrics.get("signals", 0)
        or done < metrics.get("orders", 0)
        or answered < done
    )


class Progress:
    """The live progress line: rewritten in place on a terminal, a line every 5 s otherwise."""

    def __init__(self, out: Callable[[str], None], tty: bool) -> None:
        self.out, self.tty, self.last = out, tty, 0.0

    def __call__(self, stats: simulator.Stats) -> None:
        if not self.tty and stats.seconds - self.last < 5:
            return
        self.last = stats.seconds
        m = recorder.metrics()
        line = (
            f"[{stats.seconds:4.0f}s] ticks {stats.published:6d}  signals {m.get('signals', 0):4d}  "
            f"orders {m.get('orders', 0):4d}  fills {m.get('fills', 0):4d}"
        )
        if self.tty:
            sys.stdout.write("\r" + line)
            sys.stdout.flush()
        else:
            self.out(line)


def _stale_price(topology: Topology, letter: dlq.DeadLetter) -> bool:
    """Market data RabbitMQ expired or pushed out (the seed's TTLs and length limits at work): a price
    too old to trade on, kept in its DLQ, and no failure of the pipeline."""
    return letter.reason in dlq.STALE_WHEN_DEAD and letter.origin_queue in topology.market_data_queues


def _new_dead_letters(
    topology: Topology, connection: Connection, before: dict[str, int], after: dict[str, int]
) -> tuple[list[dict[str, str]], int]:
    """The dead letters this run added that are failures (described, the first few of each DLQ), and how
    many stale prices expired besides; read without consuming them."""
    failures: list[dict[str, str]] = []
    stale = 0
    for queue, count in after.items():
        skip = before.get(queue, 0)
        if count - skip <= 0:
            continue
        shown = 0
        for letter in dlq.peek(topology, connection, queue, min(count, skip + DEAD_LETTERS_READ))[skip:]:
            if _stale_price(topology, letter):
                stale += 1
                continue
            if shown < DEAD_LETTERS_SHOWN:
                failures.append(
                    {
                        "queue": queue,
                        "reason": letter.reason,
                        "routing_key": letter.routing_key,
                        "error": letter.error[:300],
                    }
                )
            shown += 1
    return failures, stale


def market(seed: int, now: float | None = None) -> simulator.MarketSimulator:
    """The demo's simulated market: ``seed``'s, its replay of the last day starting on a 5-minute boundary
    so that the steps fall into the same candles whatever second the demo starts at."""
    start = (time.time() if now is None else now) - simulator.REPLAY_SECONDS
    return simulator.MarketSimulator(seed=seed, start=start // 300 * 300)


def _run_pipeline(
    app: TradebusCelery,
    connection: Connection,
    duration: float,
    progress: Progress,
    broker: str,
    seed: int,
) -> Result:
    topology = app.topology
    dlqs = [q.name for q in topology.dead_letter_queues]
    unrouted = [q.name for q in topology.unrouted_queues]
    before = depths(connection, dlqs + unrouted)
    started = time.monotonic()
    stats = simulator.run(
        lambda message: publish(message, app=app),
        simulator.Pace(),
        duration,
        market(seed),
        on_progress=progress,
    )
    if progress.tty:
        sys.stdout.write("\n")
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while _in_flight(topology, connection) and time.monotonic() < deadline:
        time.sleep(0.25)
    after = depths(connection, dlqs + unrouted)
    try:
        reasons, stale = _new_dead_letters(topology, connection, before, {q: after[q] for q in dlqs})
    except Exception as exc:  # noqa: BLE001 - then every new dead letter counts as a failure
        reasons = [{"queue": "?", "reason": "unknown", "routing_key": "", "error": f"could not read: {exc}"}]
        stale = 0
    metrics = recorder.metrics()
    latency = {q.name: percentiles(s) for q in topology.stage_queues if (s := recorder.latencies(q.name))}
    book = account.portfolio()
    return Result(
        broker=broker,
        seconds=round(time.monotonic() - started, 1),
        ticks=stats.published,
        signals=metrics.get("signals", 0),
        orders=metrics.get("orders", 0),
        fills=metrics.get("fills", 0),
        dead_letters=sum(after[q] - before[q] for q in dlqs) - stale,
        expired_market_data=stale,
        unrouted=sum(after[q] - before[q] for q in unrouted),
        refused=metrics.get("signals_refused", 0),
        rejected=metrics.get("orders_rejected", 0),
        latency_ms=latency,
        dead_letter_reasons=reasons,
        portfolio={
            "equity": round(book.equity, 2),
            "cash": round(book.cash, 2),
            "positions": {s: h.quantity for s, h in book.holdings.items()},
            "closed_trades": len(book.results),
            "realized_pnl": round(sum(book.results), 2),
        },
    )


def run_demo(
    app: TradebusCelery, duration: float, broker: str | None, as_json: bool, seed: int | None = None
) -> int:
    """Run the demo on the market ``seed`` makes (by default DEMO_SEED's); 0 when it produced fills and
    dead-lettered nothing."""
    echo = click.echo
    with environment(app, broker, echo) as (demo, connection, _, memory):
        rates = f"about {simulator.DEFAULT_RATE:g} msg/s, bursts to {simulator.DEFAULT_BURST_RATE:g}"
        echo(f"simulating market data for {duration:g}s ({rates})")
        result = _run_pipeline(
            demo,
            connection,
            duration,
            Progress(echo, sys.stdout.isatty()),
            "memory" if memory else "rabbitmq",
            DEMO_SEED if seed is None else seed,
        )
    _summary(result, echo)
    if as_json:
        click.echo(result.as_json())
    return 0 if result.fills > 0 and result.dead_letters == 0 else 1


def _summary(result: Result, echo: Callable[[str], None]) -> None:
    echo("")
    echo(
        table(
            ["ticks", "signals", "refused", "orders", "fills", "rejected", "dead letters", "unrouted"],
            [
                (
                    result.ticks,
                    result.signals,
                    result.refused,
                    result.orders,
                    result.fills,
                    result.rejected,
                    result.dead_letters,
                    result.unrouted,
                )
            ],
        )
    )
    if result.expired_market_data:
        echo(
            f"{result.expired_market_data} market data messages expired in their queues (the seed's TTLs): "
            "stale prices, kept in their DLQs, not failures"
        )
    for letter in result.dead_letter_reasons:
        where = f"{letter['queue']}: {letter['reason']} ({letter['routing_key']})"
        echo(f"dead letter in {where}: {letter['error']}")
    echo("")
    rows = [(q, int(p["n"]), p["p50"], p["p95"], p["p99"]) for q, p in sorted(result.latency_ms.items())]
    echo(table(["stage queue", "messages", "p50 ms", "p95 ms", "p99 ms"], rows))
    book = result.portfolio
    echo(
        f"\nportfolio: equity {book['equity']:,.2f}, cash {book['cash']:,.2f}, positions {book['positions']}"
    )
    echo(f"{book['closed_trades']} closed trades, realized P&L {book['realized_pnl']:,.2f}")
