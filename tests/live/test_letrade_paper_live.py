"""The paper exchange (tradebus/letrade/paper.py) against the real Redis, deliveries racing each other:
an order fills once however many deliveries of it run at once, and concurrent orders all book."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tradebus.letrade import paper
from tradebus.letrade.payloads import ExecuteTrade

pytestmark = pytest.mark.usefixtures("broker")  # the session's Redis prefix, Redis required


def _buy(order: str) -> dict[str, Any]:
    command = ExecuteTrade(strategy_id=7, symbol="BTC/USDT", side="buy", amount=0.01, client_order_id=order)
    return paper.execute(command, order)


def test_deliveries_of_one_order_racing_fill_it_once_and_all_get_its_answer() -> None:
    paper.reset(1_000.0)
    paper.record_price("binance", "BTC/USDT", 50_000.0)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(_buy, ["race-1"] * 8))
    assert sorted(r["again"] for r in results) == [False] + [True] * 7
    assert {r["payload"]["order_id"] for r in results} == {"paper-race-1"}
    assert paper.account().cash == pytest.approx(1_000.0 - 500.0 * 1.001)


def test_orders_racing_for_the_account_all_book() -> None:
    paper.reset(100_000.0)
    paper.record_price("binance", "BTC/USDT", 50_000.0)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(_buy, [f"many-{i}" for i in range(16)]))
    assert all(r["payload"]["status"] == "filled" for r in results)
    account = paper.account()
    assert account.cash == pytest.approx(100_000.0 - 16 * 500.0 * 1.001)
    assert account.positions["BTC/USDT"].quantity == pytest.approx(0.16)


def test_a_late_candle_does_not_replace_a_newer_price_and_a_price_set_by_hand_is_taken() -> None:
    paper.record_price("kraken", "ETH/USDT", 3_000.0, at=1_000.0)
    paper.record_price("kraken", "ETH/USDT", 2_900.0, at=999.0)  # redelivered after the newer candle
    assert paper.last_price("kraken", "ETH/USDT") == 3_000.0
    paper.record_price("kraken", "ETH/USDT", 3_100.0, at=1_001.0)
    assert paper.last_price("kraken", "ETH/USDT") == 3_100.0
    paper.record_price("kraken", "ETH/USDT", 10.0)  # by hand: taken, and the next market price replaces it
    assert paper.last_price("kraken", "ETH/USDT") == 10.0
    paper.record_price("kraken", "ETH/USDT", 3_050.0, at=500.0)
    assert paper.last_price("kraken", "ETH/USDT") == 3_050.0
