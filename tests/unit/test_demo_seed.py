"""The demo's simulated market is the same every run (``DEMO_SEED``), so the demo trades every time."""

from __future__ import annotations

from click.testing import CliRunner

from tradebus.mastertrade.simulator import MarketSimulator
from tradebus.ops.cli import main
from tradebus.ops.demo import DEMO_SEED


def market(seed: int | None) -> list[str]:
    """The first few hundred messages a simulator makes, its clock stopped at one moment."""
    simulator = MarketSimulator(seed=seed, clock=lambda: 1_700_000_000.0)
    messages = simulator.messages()
    return [next(messages).model_dump_json() for _ in range(500)]


def test_the_demos_market_is_the_same_every_run_and_another_seed_makes_another() -> None:
    assert market(DEMO_SEED) == market(DEMO_SEED)
    assert market(DEMO_SEED) != market(DEMO_SEED + 1)


def test_the_demo_says_which_market_it_runs_by_default() -> None:
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and f"[default: {DEMO_SEED}," in result.output
