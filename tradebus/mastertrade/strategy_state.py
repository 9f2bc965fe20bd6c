"""The strategy service's memory in Redis: candle series, sentiment, whale flows and its own positions.

Several pool processes handle one symbol's candles at once (tradebus/candles.py keeps the series in
order), so a symbol is claimed before a signal goes out, and released by the signal's order update.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis.client import Pipeline

from tradebus import state, store
from tradebus.mastertrade import candles
from tradebus.mastertrade.messages import MarketData, OrderUpdate, WhaleAlert
from tradebus.mastertrade.trading.strategy import Candle, Position

#: How long sentiment and whale flows count, in seconds of wall time.
CONTEXT_TTL_SECONDS = 30 * 60
SENTIMENT_WEIGHT = 0.3
WHALE_WEIGHTS = {"low": 0.25, "medium": 0.5, "high": 0.75, "critical": 1.0}
#: How long a signal waits for its order update before the strategy may signal that symbol again.
PENDING_SECONDS = 120
#: How long the strategy remembers which fills of an order it applied.
APPLIED_TTL_SECONDS = 24 * 3600


def _k(*parts: str) -> str:
    return store.key("strategy", *parts)


def add_candle(candle: MarketData) -> list[Candle]:
    """Add ``candle`` to the strategy's series; returns the series up to and including it, oldest first."""
    return candles.add("strategy", candle)


def _recent(raw: Any, field: str) -> float | None:
    if raw is None:
        return None
    data = json.loads(raw)
    if time.time() - data["at"] > CONTEXT_TTL_SECONDS:
        return None
    return float(data[field])


def record_sentiment(symbol: str, score: float) -> float:
    """Blend ``score`` into the symbol's sentiment (an EMA across platforms); returns the new value."""
    client = store.client()
    previous = _recent(client.hget(_k("sentiment"), symbol), "score")
    value = score if previous is None else SENTIMENT_WEIGHT * score + (1 - SENTIMENT_WEIGHT) * previous
    client.hset(_k("sentiment"), symbol, json.dumps({"score": value, "at": time.time()}))
    return value


def sentiment(symbol: str) -> float | None:
    """The symbol's recent sentiment in [-1, 1], or None."""
    return _recent(store.client().hget(_k("sentiment"), symbol), "score")


def whale_direction(alert: WhaleAlert) -> float:
    """+weight when coins leave an exchange (bullish), -weight when they arrive at one (bearish)."""
    weight = WHALE_WEIGHTS[alert.alert_level]
    to_exchange = "exchange" in (alert.to_label or "").lower()
    from_exchange = "exchange" in (alert.from_label or "").lower()
    if to_exchange and not from_exchange:
        return -weight
    if from_exchange and not to_exchange:
        return weight
    return 0.0


def record_whale(alert: WhaleAlert) -> float:
    """Note a whale transfer's direction for its token; returns the token's flow."""
    flow = whale_direction(alert)
    store.client().hset(_k("whales"), alert.token, json.dumps({"flow": flow, "at": time.time()}))
    return flow


def _tokens(symbol: str) -> tuple[str, ...]:
    """Where a whale flow of ``symbol`` may be kept: itself, then its base asset (``BTCUSDT`` -> ``BTC``)."""
    return (symbol, symbol.removesuffix("USDT"), symbol.removesuffix("USDC"))


def _flow(raws: list[Any]) -> float:
    for raw in raws:
        flow = _recent(raw, "flow")
        if flow is not None:
            return flow
    return 0.0


def whale_flow(symbol: str) -> float:
    """The recent whale flow of ``symbol``'s base asset (``BTCUSDT`` -> ``BTC``), in [-1, 1]."""
    values: list[Any] = store.client().hmget(_k("whales"), list(_tokens(symbol)))
    return _flow(values)


def evaluation_context(strategy_id: str, symbol: str) -> tuple[Position | None, float | None, float]:
    """What a signal on ``symbol`` is decided with: the strategy's position, the symbol's sentiment and its
    whale flow, read in one round trip (a candle evaluated on a busy machine waits for each)."""
    pipe = store.client().pipeline(transaction=False)
    pipe.hget(_k("positions", strategy_id), symbol)
    pipe.hget(_k("sentiment"), symbol)
    pipe.hmget(_k("whales"), list(_tokens(symbol)))
    raw_position, raw_sentiment, raw_flows = pipe.execute()
    held = Position(**json.loads(raw_position)) if raw_position else None
    return held, _recent(raw_sentiment, "score"), _flow(raw_flows)


def claim_symbol(strategy_id: str, symbol: str, claimant: str) -> bool:
    """Whether ``claimant`` (a message id) may signal on ``symbol`` now: nobody holds the symbol, or it does.

    One signal per symbol at a time: several pool processes evaluate its candles at once, and the claim
    (taken atomically, before the signal is published) holds until the signal's order update arrives, or for
    PENDING_SECONDS when it never does (the risk manager refused it). The same delivery asking again (its
    retry after a failed publish) keeps its claim.
    """
    return state.hold(
        store.client(), _k("pending", strategy_id, symbol), claimant, PENDING_SECONDS, renew=False
    )


def remember_plan(strategy_id: str, symbol: str, stop_loss: float | None, take_profit: float | None) -> None:
    """The exits a BUY planned: the position opened by its fill gets them."""
    plan = json.dumps({"stop_loss": stop_loss, "take_profit": take_profit})
    store.client().hset(_k("plans", strategy_id), symbol, plan)


def position(strategy_id: str, symbol: str) -> Position | None:
    """What the strategy holds in ``symbol``, with the exits it planned."""
    raw = store.client().hget(_k("positions", strategy_id), symbol)
    return Position(**json.loads(raw)) if raw else None


def apply_update(update: OrderUpdate) -> bool:
    """Track the strategy's position from one of its order updates; returns False for a repeat.

    Updates report cumulative fills, so a repeated or late update (a redelivery, or a partial after its
    final fill) changes nothing.
    """
    if update.strategy_id is None or update.symbol is None or update.side is None:
        return False
    sid, symbol = update.strategy_id, update.symbol
    applied_key = _k("applied", sid)

    def transaction(pipe: Pipeline) -> bool:
        applied = float(pipe.hget(applied_key, update.order_id) or 0.0)
        raw_position = pipe.hget(_k("positions", sid), symbol)
        plan = json.loads(pipe.hget(_k("plans", sid), symbol) or "{}")
        held = json.loads(raw_position)["quantity"] if raw_position else 0.0
        delta = round(update.filled_quantity - applied, 8)
        pipe.multi()
        if update.status != "partial":
            pipe.delete(_k("pending", sid, symbol))
        if delta <= 0:
            return False
        pipe.hset(applied_key, update.order_id, repr(update.filled_quantity))
        pipe.expire(applied_key, APPLIED_TTL_SECONDS)
        quantity = round(held + (delta if update.side == "BUY" else -delta), 8)
        if quantity <= 0:
            pipe.hdel(_k("positions", sid), symbol)
        else:
            exits = {"stop_loss": plan.get("stop_loss"), "take_profit": plan.get("take_profit")}
            pipe.hset(_k("positions", sid), symbol, json.dumps({"quantity": quantity, **exits}))
        return True

    return state.transaction(store.client(), [applied_key, _k("positions", sid)], transaction)
