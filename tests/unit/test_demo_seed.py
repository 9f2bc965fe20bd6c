"""The demo's simulated market is the same every run (``DEMO_SEED``), so the demo trades every time."""

from __future__ import annotations

from datetime import UTC, datetime

from click.testing import CliRunner

from tradebus.letrade import simulator as letrade_simulator
from tradebus.mastertrade.simulator import MarketSimulator
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
