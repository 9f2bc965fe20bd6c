"""The demo's simulated market is the same every run (``DEMO_SEED``), so the demo trades every time."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from tradebus.letrade import simulator as letrade_simulator
from tradebus.mastertrade.simulator import MarketSimulator
from tradebus.ops import demo, letrade_demo
from tradebus.ops.cli import main
from tradebus.ops.harness import DEMO_SEED


def market(seed: int | None) -> list[str]:
    """The first few hundred messages a simulator makes, its clock stopped at one moment."""
    simulator = MarketSimulator(seed=seed, clock=lambda: 1_700_000_000.0)
    messages = simulator.messages()
    return [next(messages).model_dump_json() for _ in range(500)]


def candles(seed: int) -> list[str]:
    """Letrade's first candles (their payloads)."""
    made = letrade_simulator.candles(seed, start=datetime(2026, 1, 1, tzinfo=UTC))
    return [next(made).payload.model_dump_json() for _ in range(300)]  # the envelope has its own ids


def test_the_demos_market_is_the_same_every_run_and_another_seed_makes_another() -> None:
    assert market(DEMO_SEED) == market(DEMO_SEED)
    assert market(DEMO_SEED) != market(DEMO_SEED + 1)
    assert candles(DEMO_SEED) == candles(DEMO_SEED)
    assert candles(DEMO_SEED) != candles(DEMO_SEED + 1)


def test_the_demo_says_which_market_it_runs_by_default() -> None:
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and f"[default: {DEMO_SEED}," in " ".join(result.output.split())


class Stop(Exception):
    """Ends a demo's pipeline where the simulator would start publishing."""


def nothing_queued(*_: Any) -> dict[str, int]:
    return {}


def test_the_mastertrade_demo_publishes_the_seeds_market_from_a_five_minute_boundary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used: list[MarketSimulator] = []

    def run(send: Any, pace: Any, duration: float, simulator: MarketSimulator, **_: Any) -> None:
        used.append(simulator)
        raise Stop

    monkeypatch.setattr(demo, "depths", nothing_queued)
    monkeypatch.setattr(demo.simulator, "run", run)
    app = SimpleNamespace(topology=SimpleNamespace(dead_letter_queues=[], unrouted_queues=[]))
    with pytest.raises(Stop):
        demo._run_pipeline(app, None, 1.0, demo.Progress(print, False), "memory", 7)  # type: ignore[arg-type]
    assert used[0].rng.getstate() == random.Random(7).getstate()
    assert used[0].now % 300 == 0
    # Two demos started in the same five minutes publish the same messages, timestamps included.
    first, second = demo.market(DEMO_SEED, now=1_700_000_100.0), demo.market(DEMO_SEED, now=1_700_000_199.0)
    assert [next(first.messages()).model_dump_json() for _ in range(50)] == [
        next(second.messages()).model_dump_json() for _ in range(50)
    ]


def test_the_letrade_demo_publishes_the_seeds_candles(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list[int | None] = []

    def candles(seed: int | None = None, start: Any = None) -> Iterator[Any]:
        seeds.append(seed)
        raise Stop

    monkeypatch.setattr(letrade_demo, "depths", nothing_queued)
    monkeypatch.setattr(letrade_demo.paper, "reset", lambda *_: None)
    monkeypatch.setattr(letrade_simulator, "candles", candles)
    app = SimpleNamespace(topology=SimpleNamespace(dead_letter_queues=[], unrouted_queues=[]))
    with pytest.raises(Stop):
        letrade_demo._run(app, None, "", 1.0, True, print, 7)  # type: ignore[arg-type]
    assert seeds == [7]
