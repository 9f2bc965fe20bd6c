"""``tradebus demo`` as a newcomer runs it: on RabbitMQ with real pools, and embedded on ``memory://``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.bus import Vhost
from tradebus.ops.harness import percentiles

TRADEBUS = str(Path(sys.executable).with_name("tradebus"))
DURATION = "20"


def run_demo(*args: str, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Run the demo; returns its JSON line and everything it printed."""
    result = subprocess.run(
        [TRADEBUS, "demo", "--duration", DURATION, "--json", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=420,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), output


def test_percentiles_take_the_nearest_rank() -> None:
    assert percentiles([float(i) for i in range(1, 101)]) == {
        "p50": 50.0,
        "p95": 95.0,
        "p99": 99.0,
        "n": 100.0,
    }
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "n": 1.0}


def assert_traded(figures: dict[str, Any]) -> None:
    for key in ("ticks", "signals", "orders", "fills", "dead_letters", "expired_market_data"):
        assert isinstance(figures[key], int), key
    assert figures["ticks"] >= 500
    assert figures["fills"] > 0
    assert figures["signals"] >= figures["orders"] >= figures["fills"]
    assert figures["dead_letters"] == 0
    assert figures["unrouted"] == 0
    for queue in ("strategy_market_data", "trading_signals", "order_requests", "order_updates"):
        assert set(figures["latency_ms"][queue]) == {"p50", "p95", "p99", "n"}


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.serial
def test_demo_on_rabbitmq_runs_every_pool_and_fills_orders(fresh_vhost: Vhost) -> None:
    figures, output = run_demo(env={"TRADEBUS_BROKER_URL": fresh_vhost.url})
    assert figures["broker"] == "rabbitmq"
    assert "one worker process each" in output
    assert_traded(figures)


@pytest.mark.slow
@pytest.mark.serial
def test_demo_on_memory_runs_in_one_process_and_fills_orders() -> None:
    figures, output = run_demo("--broker", "memory://", env={})
    assert figures["broker"] == "memory"
    assert "not enforced" in output
    assert_traded(figures)
