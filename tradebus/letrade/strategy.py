"""Letrade's example strategy and its state in Redis, following the seed's trade flow:
market data -> ``request.capital.allocation`` -> (approved) ``commands.execute_trade`` ->
``events.trade_executed``.

The rule is a moving-average crossover on each pair's closes: the short average crossing above the long
one buys, crossing below sells what is held. One trade per pair is in flight at a time: a pair is locked
from its allocation request until its trade event (or error) arrives, or ``IN_FLIGHT_SECONDS`` pass.
"""

from __future__ import annotations

import json
from typing import Any

from tradebus import state, store

#: The seed's example strategy id.
STRATEGY_ID = 123
SHORT_WINDOW = 3
LONG_WINDOW = 8
#: How long a pair stays locked for a trade whose answer never came (a lost response is not a stuck pair).
IN_FLIGHT_SECONDS = 30
#: How long an allocation request waits for its response before the strategy forgets it.
PENDING_SECONDS = 60
#: Quote currency the strategy asks to invest per buy.
ORDER_NOTIONAL = 500.0


def _k(*parts: str) -> str:
    return store.key("letrade", "strategy", str(STRATEGY_ID), *parts)


def crossover(closes: list[float]) -> str | None:
    """``buy`` when the short average just crossed above the long one, ``sell`` below, else None.

    ``closes`` are oldest first; it needs ``LONG_WINDOW + 1`` of them.
    """
    if len(closes) < LONG_WINDOW + 1:
        return None

    def spread(window: list[float]) -> float:
        return sum(window[-SHORT_WINDOW:]) / SHORT_WINDOW - sum(window[-LONG_WINDOW:]) / LONG_WINDOW

    before, now = spread(closes[:-1]), spread(closes)
    if before <= 0 < now:
        return "buy"
    if before >= 0 > now:
        return "sell"
    return None


def add_close(pair: str, at: float, close: float) -> list[float]:
    """Keep the close of the candle at ``at`` (a redelivered candle replaces itself); returns the last
    ``LONG_WINDOW + 1`` closes, oldest first."""
    key = _k("closes", pair)
    pipe = store.text_client().pipeline()
    state.put_at(pipe, key, f"{at}:{close}", at, LONG_WINDOW + 1)
    pipe.zrange(key, 0, -1)
    members: list[str] = pipe.execute()[-1]
    return [float(m.split(":", 1)[1]) for m in members]


def add_closes(pair: str, points: list[tuple[float, float]]) -> list[list[float]]:
    """``add_close`` for many candles of one pair (``(at, close)``, in order) in one round trip: the closes
    window after each of them, as ``add_close`` would have returned it candle by candle."""
    key = _k("closes", pair)
    pipe = store.text_client().pipeline()
    pipe.zrange(key, 0, -1, withscores=True)
    # Only the batch's newest LONG_WINDOW + 1 points can be among the kept ones.
    newest = sorted(dict(points).items())[-(LONG_WINDOW + 1) :]
    state.put_many_at(pipe, key, [(at, f"{at}:{close}") for at, close in newest], LONG_WINDOW + 1)
    before: list[tuple[str, float]] = pipe.execute()[0]
    window = {score: float(member.split(":", 1)[1]) for member, score in before}
    windows = []
    for at, close in points:
        window[at] = close
        kept = sorted(window)[-(LONG_WINDOW + 1) :]
        window = {score: window[score] for score in kept}
        windows.append([window[score] for score in kept])
    return windows


def lock(pair: str) -> bool:
    """Take the pair's in-flight lock; False when a trade of it is already under way."""
    return bool(store.client().set(_k("in_flight", pair), 1, nx=True, ex=IN_FLIGHT_SECONDS))


def unlock(pair: str) -> None:
    """Release the pair for its next trade."""
    store.client().delete(_k("in_flight", pair))


def holding(pair: str) -> float:
    """What the strategy holds of ``pair`` (base currency)."""
    raw = store.client().hget(_k("positions"), pair)
    return float(raw) if raw else 0.0


#: How long a booked order id is remembered (trade events are published at least once).
BOOKED_SECONDS = 24 * 3600


def book(order_id: str, pair: str, side: str, filled: float) -> bool:
    """Update the strategy's own position from a trade event, once per order; False for a repeat."""
    client = store.client()
    if not client.set(_k("booked", order_id), 1, nx=True, ex=BOOKED_SECONDS):
        return False
    client.hincrbyfloat(_k("positions"), pair, filled if side == "buy" else -filled)
    return True


def remember(request_id: str, context: dict[str, Any]) -> None:
    """Keep an allocation request's context until its response arrives."""
    store.client().set(_k("pending", request_id), json.dumps(context), ex=PENDING_SECONDS)


def pending(request_id: str) -> dict[str, Any] | None:
    """The context of the allocation request ``request_id``; None when it is not ours (or expired)."""
    raw = store.client().get(_k("pending", request_id))
    return None if raw is None else dict(json.loads(raw))


def forget(request_id: str) -> None:
    """The allocation request ``request_id`` is answered and acted on."""
    store.client().delete(_k("pending", request_id))


def next_order_id() -> str:
    """``strategy_123_001``-style client order ids, as in the seed."""
    return f"strategy_{STRATEGY_ID}_{int(store.client().incr(_k('orders'))):03d}"


def counted(event: str) -> None:
    """Count a strategy event (``requests``, ``approved``, ``rejected``, ``executed``, ``errors``)."""
    store.client().hincrby(_k("counts"), event, 1)


def counts() -> dict[str, int]:
    """What the strategy did, by event."""
    raw: dict[str, str] = store.text_client().hgetall(_k("counts"))  # type: ignore[assignment]
    return {k: int(v) for k, v in raw.items()}
