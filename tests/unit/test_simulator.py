"""The market-data simulator and its pacing, without a broker."""

from __future__ import annotations

from collections import Counter

from tests.support.bus import MASTERTRADE
from tradebus.mastertrade.messages import MarketData
from tradebus.mastertrade.simulator import CANDLE_SECONDS, MarketSimulator, Pace, run
from tradebus.mastertrade.wire import parse_wire

NOW = 1_763_000_000.0


def simulated(steps: int, seed: int = 7) -> list:  # type: ignore[type-arg]
    sim = MarketSimulator(seed=seed, start=NOW - 86_400, clock=lambda: NOW)
    return [m for _ in range(steps) for m in sim.step()]


def test_same_seed_gives_the_same_market() -> None:
    assert simulated(50, seed=3) == simulated(50, seed=3)
    assert simulated(50, seed=3) != simulated(50, seed=4)


def test_every_simulated_message_is_valid_on_the_wire_and_reaches_a_stage() -> None:
    messages = simulated(400)
    kinds = Counter(m.type for m in messages)
    assert {"ticker", "trade", "orderbook", "market_data", "sentiment", "onchain_metric"} <= set(kinds)
    for message in messages:
        assert parse_wire(message.model_dump_json()) == message
        assert not any(
            q.startswith("unrouted.") for q in MASTERTRADE.route(message.exchange, message.routing_key)
        )


def test_candles_are_consistent_and_aligned_to_their_interval() -> None:
    candles = [m for m in simulated(400) if isinstance(m, MarketData)]
    assert {c.interval for c in candles} == set(CANDLE_SECONDS)
    for c in candles:
        assert c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high
        assert c.timestamp.timestamp() % CANDLE_SECONDS[c.interval] == 0
    btc = [c.timestamp for c in candles if c.symbol == "BTCUSDT" and c.interval == "1m"]
    assert btc == sorted(btc) and len(set(btc)) == len(btc)


def test_market_time_never_runs_ahead_of_the_clock() -> None:
    sim = MarketSimulator(seed=1, start=NOW - 120, clock=lambda: NOW)
    for _ in range(50):
        sim.step()
    assert sim.now == NOW


def test_pace_bursts_at_the_end_of_each_period() -> None:
    pace = Pace(rate=100, burst_rate=500, burst_every=15, burst_seconds=1)
    assert [pace.at(t) for t in (0.0, 13.9, 14.0, 14.5, 15.0, 29.5)] == [100, 100, 500, 500, 100, 500]


def test_run_never_publishes_faster_than_its_pace() -> None:
    sent: list[object] = []
    stats = run(sent.append, Pace(rate=200, burst_rate=200), duration=0.5)
    assert len(sent) == stats.published
    assert 0 < stats.published <= 200 * 0.5 + 1
