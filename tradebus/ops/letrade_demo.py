"""``tradebus --topology letrade demo``: the seed's trade flow on simulated candles.

Candles (``market_data.binance.*``) -> the strategy asks the capital manager
(``request.capital.allocation`` / ``response.capital.allocation``) -> ``commands.execute_trade`` -> the
exchange connector's paper fill -> ``events.trade_executed``. At the end it asks the market-data service
for the history it kept (``request.market_data``, a request/response round trip) and runs the health
check. Same pools and brokers as the MasterTrade demo (tradebus/demo.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import click
from kombu import Connection

from routing import Topology
from tradebus.application import TradebusCelery
from tradebus.errors import RequestTimeout
from tradebus.health import bus_health
from tradebus.letrade import paper, simulator
from tradebus.letrade import strategy as strategy_state
from tradebus.letrade.bus import LetradeBus
from tradebus.letrade.stage import publish
from tradebus.ops.demo import DRAIN_TIMEOUT
from tradebus.ops.harness import DEMO_SEED, depths, environment
from tradebus.ops.report import table

HISTORY_TIMEOUT = 10.0


@dataclass
class Result:
    """What a Letrade demo run did; ``as_json`` is the ``--json`` line."""

    broker: str
    seconds: float
    candles: int = 0
    allocation_requests: int = 0
    approved: int = 0
    rejected: int = 0
    trades_executed: int = 0
    errors: int = 0
    dead_letters: int = 0
    unrouted: int = 0
    history_candles: int = 0
    health: dict[str, Any] = field(default_factory=dict)
    portfolio: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        """One line of JSON."""
        return json.dumps(asdict(self), sort_keys=True, default=str)


def _in_flight(topology: Topology, connection: Connection) -> bool:
    counts = strategy_state.counts()
    answered = counts.get("approved", 0) + counts.get("rejected", 0)
    done = counts.get("executed", 0) + counts.get("errors", 0)
    queued = sum(depths(connection, [q.name for q in topology.worker_queues]).values())
    return queued > 0 or answered < counts.get("requests", 0) or done < counts.get("approved", 0)


def _history(url: str, memory: bool) -> int:
    """Candles the market-data service returns for BTC/USDT (0 when it does not answer)."""
    if memory:
        return 0  # LetradeBus opens connections of its own; the in-memory demo has no broker to share
    try:
        with LetradeBus(url, source="demo") as bus:
            answer = bus.request(
                "request.market_data",
                {"symbol": "BTC/USDT", "timeframe": "5m", "limit": 20},
                timeout=HISTORY_TIMEOUT,
            )
    except RequestTimeout:
        return 0
    return len(getattr(answer.payload, "data", []))


def _run(
    app: TradebusCelery,
    connection: Connection,
    url: str,
    duration: float,
    memory: bool,
    echo: Callable[[str], None],
    seed: int,
) -> Result:
    topology = app.topology
    dlqs = [q.name for q in topology.dead_letter_queues]
    unrouted = [q.name for q in topology.unrouted_queues]
    before = depths(connection, dlqs + unrouted)
    paper.reset()
    started = time.monotonic()
    published = simulator.run(
        lambda message: publish(message, app=app), simulator.DEFAULT_RATE, duration, seed
    )
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while _in_flight(topology, connection) and time.monotonic() < deadline:
        time.sleep(0.25)
    history = _history(url, memory)
    after = depths(connection, dlqs + unrouted)
    counts = strategy_state.counts()
    book = paper.account()
    health = bus_health(connection, [q.name for q in topology.worker_queues], dlqs, unrouted)
    if memory:  # the in-memory transport reports no consumers: say so rather than "unhealthy"
        health["status"] = "not measured (in-memory broker)"
    return Result(
        broker="memory" if memory else "rabbitmq",
        seconds=round(time.monotonic() - started, 1),
        candles=published,
        allocation_requests=counts.get("requests", 0),
        approved=counts.get("approved", 0),
        rejected=counts.get("rejected", 0),
        trades_executed=counts.get("executed", 0),
        errors=counts.get("errors", 0),
        dead_letters=sum(after[q] - before[q] for q in dlqs),
        unrouted=sum(after[q] - before[q] for q in unrouted),
        history_candles=history,
        health={"status": health["status"], "queue_depth": health["queue_depth"]},
        portfolio={
            "cash": round(book.cash, 2),
            "equity": round(book.equity(paper.prices()), 2),
            "positions": {s: round(p.quantity, 8) for s, p in book.positions.items()},
        },
    )


def run_demo(
    app: TradebusCelery, duration: float, broker: str | None, as_json: bool, seed: int | None = None
) -> int:
    """Run the Letrade demo on ``seed``'s candles (by default DEMO_SEED's); 0 when trades were executed and
    nothing was dead-lettered."""
    echo = click.echo
    with environment(app, broker, echo) as (demo, connection, url, memory):
        echo(f"Letrade_v1: simulating {simulator.DEFAULT_RATE:g} candles/s for {duration:g}s")
        result = _run(demo, connection, url, duration, memory, echo, DEMO_SEED if seed is None else seed)
    _summary(result, echo)
    if as_json:
        click.echo(result.as_json())
    return 0 if result.trades_executed > 0 and result.dead_letters == 0 else 1


def _summary(result: Result, echo: Callable[[str], None]) -> None:
    echo("")
    headers = ["candles", "allocation requests", "approved", "rejected", "executed", "errors", "dead letters"]
    row = (
        result.candles,
        result.allocation_requests,
        result.approved,
        result.rejected,
        result.trades_executed,
        result.errors,
        result.dead_letters,
    )
    echo(table(headers, [row]))
    echo(f"unrouted: {result.unrouted}; request.market_data answered with {result.history_candles} candles")
    echo(f"health: {result.health['status']}, queue depth {result.health['queue_depth']}")
    book = result.portfolio
    echo(f"portfolio: equity {book['equity']:,.2f}, cash {book['cash']:,.2f}, positions {book['positions']}")
