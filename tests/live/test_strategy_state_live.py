"""The strategy's context for a signal, read in one round trip (tradebus/mastertrade/strategy_state.py)."""

from __future__ import annotations

import json
import time

from tradebus import store
from tradebus.mastertrade import strategy_state
from tradebus.mastertrade.messages import WhaleAlert
from tradebus.mastertrade.trading.strategy import Position

STRATEGY = "strategy-under-test"


def whale(token: str, to_label: str) -> WhaleAlert:
    return WhaleAlert(
        transaction_hash="0xabc",
        blockchain="ethereum",
        token=token,
        from_address="0x1",
        to_address="0x2",
        from_label="wallet",
        to_label=to_label,
        amount_token=1000,
        amount_usd=1_000_000,
        alert_level="high",
    )


def test_the_context_reads_position_sentiment_and_the_base_assets_whale_flow(fresh_state: str) -> None:
    # Nothing known: no position, no sentiment, no flow.
    assert strategy_state.evaluation_context(STRATEGY, "BTCUSDT") == (None, None, 0.0)

    strategy_state.record_sentiment("BTCUSDT", 0.5)
    strategy_state.record_whale(whale("BTC", "Binance exchange"))  # the base asset: coins to an exchange
    store.client().hset(
        strategy_state._k("positions", STRATEGY), "BTCUSDT", json.dumps({"quantity": 0.1, "stop_loss": 90.0})
    )
    position, sentiment, flow = strategy_state.evaluation_context(STRATEGY, "BTCUSDT")
    assert position == Position(quantity=0.1, stop_loss=90.0)
    assert sentiment == 0.5
    assert flow == -0.75  # bearish, weighted "high"
    # The same values as the one-at-a-time readers give.
    assert (position, sentiment, flow) == (
        strategy_state.position(STRATEGY, "BTCUSDT"),
        strategy_state.sentiment("BTCUSDT"),
        strategy_state.whale_flow("BTCUSDT"),
    )

    # A flow kept under the symbol itself comes first; a stale sentiment counts as none.
    strategy_state.record_whale(whale("BTCUSDT", "cold wallet"))
    stale = {"score": 0.9, "at": time.time() - strategy_state.CONTEXT_TTL_SECONDS - 1}
    store.client().hset(strategy_state._k("sentiment"), "BTCUSDT", json.dumps(stale))
    _, sentiment, flow = strategy_state.evaluation_context(STRATEGY, "BTCUSDT")
    assert sentiment is None and flow == 0.0
