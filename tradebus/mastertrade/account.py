"""The paper trading account in Redis: cash, holdings, reservations, closed trades, last prices, breaker.

Two writers, each in one Redis transaction (the decision WATCH/MULTI, the fill a compare-and-write
script: tradebus/checked.py), so concurrent pool processes and redelivered messages cannot corrupt it:

* the risk manager's :func:`decide` reads the portfolio, applies the rules of
  ``tradebus.mastertrade.trading.risk`` and stores its decision under the signal's key together with the
  reservation of an approved order; the same signal delivered again gets the stored decision back, never
  a second order;
* the executor's :func:`fill` claims the order request's ``request_id`` together with the booking of its
  fills; the same request delivered again gets the stored fills back, so it is filled exactly once.

Both return only once ``TRADEBUS_REDIS_WAIT_REPLICAS`` replicas have the record (tradebus/replication.py).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from redis.client import Pipeline

from tradebus import checked, state, store
from tradebus.mastertrade.errors import StaleMessage
from tradebus.mastertrade.messages import BusMessage, OrderRequest, OrderUpdate, TradingSignal
from tradebus.mastertrade.trading.execution import Execution, book, execute, order_updates
from tradebus.mastertrade.trading.risk import Decision, Holding, Limits, Portfolio, Reservation
from tradebus.mastertrade.trading.risk import decide as risk_decide
from tradebus.mastertrade.wire import publish
from tradebus.outcomes import outcome_ids

#: The paper portfolio's limits.
LIMITS = Limits()
#: How many closed-trade results are kept (the loss streak reads the last few).
RESULTS_KEPT = 1_000
#: The oldest order request the executor fills (the seed's order_requests TTL is 60 s; retries add 35 s):
#: an older one is refused as stale, so a dead letter replayed long after cannot trade at today's price.
ORDER_MAX_AGE_SECONDS = 10 * 60
#: An approved order's reservation lapses when its order could no longer be filled.
RESERVATION_SECONDS = ORDER_MAX_AGE_SECONDS
#: The oldest trading signal the risk manager decides on (the simulator replays the last day).
SIGNAL_MAX_AGE_SECONDS = 2 * 24 * 3600
#: How long a decision or a fill record is remembered: longer than any signal or order is accepted, so a
#: redelivered or replayed one always finds it.
RECORD_TTL_SECONDS = 30 * 24 * 3600
#: How long one delivery may take to publish what a decision or a fill produced before another may.
PUBLISH_CLAIM_SECONDS = 30
_ORDER_NAMESPACE = uuid.UUID("6ba7b812-9dad-11d1-80b4-00c04fd430c8")


def _k(name: str) -> str:
    return store.key("account", name)


def record_price(symbol: str, price: float, at: float | None = None) -> None:
    """Remember the last price the executor saw for ``symbol`` at market time ``at``.

    A price older than the one stored (a late, replayed or redelivered tick, from any process) does not
    overwrite it: the comparison runs in Redis. Without ``at`` (an operator or a test setting a price), the
    price is written as is and the next market price, whatever its time, replaces it.
    """
    if at is None:
        pipe = store.client().pipeline(transaction=False)
        pipe.hset(_k("prices"), symbol, repr(price))
        pipe.hdel(_k("prices_at"), symbol)
        pipe.execute()
        return
    record_prices([(symbol, price, at)])


def record_prices(prices: list[tuple[str, float, datetime | float]]) -> None:
    """``record_price`` for many (symbol, price, market time) in one write: each symbol's newest."""
    entries = [(s, at if isinstance(at, float | int) else at.timestamp(), repr(p)) for s, p, at in prices]
    pipe = store.client().pipeline(transaction=False)
    state.put_newest(pipe, _k("prices"), _k("prices_at"), entries)
    pipe.execute()


def last_price(symbol: str) -> float | None:
    """The last price the executor saw for ``symbol``."""
    raw = store.client().hget(_k("prices"), symbol)
    return float(raw) if raw is not None else None


#: The reads the portfolio is made of, in the order ``_portfolio`` takes them.
def _portfolio_reads() -> list[tuple[str, ...]]:
    return [
        ("hgetall", _k("account")),
        ("hgetall", _k("holdings")),
        ("hgetall", _k("reservations")),
        ("lrange", _k("results"), "0", "-1"),
        ("hgetall", _k("prices")),
    ]


def _portfolio(values: list[Any], limits: Limits, now: float | None = None) -> tuple[Portfolio, int]:
    """The portfolio and the number of trades ever closed, from the values of ``_portfolio_reads``.

    Reservations of orders too old to be filled any more are left out.
    """
    now = time.time() if now is None else now
    raw_account, raw_holdings, raw_reservations, raw_results, raw_prices = values
    reservations = {r: Reservation(**json.loads(v)) for r, v in raw_reservations.items()}
    account: dict[str, str] = raw_account
    results = [float(v) for v in raw_results]
    closed = int(account.get("closed_trades", 0))
    # streak_from counts closed trades since the account opened; results keeps only the last RESULTS_KEPT.
    streak_from = max(0, int(account.get("streak_from", 0)) - (closed - len(results)))
    current = Portfolio(
        cash=float(account.get("cash", limits.initial_capital)),
        holdings={s: Holding(**json.loads(v)) for s, v in raw_holdings.items()},
        marks={s: float(v) for s, v in raw_prices.items()},
        peak_equity=float(account.get("peak", limits.initial_capital)),
        reservations={r: v for r, v in reservations.items() if v.at >= now - RESERVATION_SECONDS},
        results=results,
        breaker_until=float(account.get("breaker_until", 0.0)),
        streak_from=streak_from,
    )
    return current, closed


def _transaction(
    watched: list[str], reads: list[state.Read], body: Callable[[list[Any], Pipeline], dict[str, Any]]
) -> dict[str, Any]:
    """Read, decide and write as one Redis transaction, in three round trips, again if a watched key moved.

    WATCH first; then every read in one pipeline on another connection (a change after the WATCH fails
    the EXEC, so the reads cannot be stale); then ``body`` queues its writes between MULTI and EXEC.
    After state.MAX_ATTEMPTS conflicts it raises StateContention: the message is retried later. Then, with
    replicas to wait for (TRADEBUS_REDIS_WAIT_REPLICAS), WAIT for them: NotReplicated when they did not
    acknowledge in time, so the message is retried rather than acknowledged (docs/reliability.md).
    """
    return state.transaction(store.text_client(), watched, body, reads=reads, wait=store.replica_wait())


def portfolio(limits: Limits = LIMITS) -> Portfolio:
    """The portfolio as it is now (decisions read it inside their own transaction)."""
    current, _ = _portfolio(state.read(store.text_client(), _portfolio_reads()), limits)
    return current


def reset(cash: float = LIMITS.initial_capital, peak: float | None = None) -> None:
    """Open the paper account afresh: ``cash``, no holdings, no history, the breaker reset."""
    client = store.client()
    client.delete(*(_k(name) for name in ("account", "holdings", "reservations", "results")))
    client.hset(_k("account"), mapping={"cash": repr(cash), "peak": repr(cash if peak is None else peak)})


def signal_key(signal: TradingSignal) -> str:
    """What makes a signal the same signal when it is delivered again: every field of it."""
    return hashlib.sha256(signal.model_dump_json().encode()).hexdigest()


def request_id_for(signal: TradingSignal) -> str:
    """The order request id an approved signal gets: the same for every delivery of the signal."""
    return "req-" + signal_key(signal)[:24]


def decide(
    signal: TradingSignal,
    limits: Limits = LIMITS,
    now: float | None = None,
    *,
    also: state.Read | None = None,
    first: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Decide on ``signal`` once.

    Returns ``{"decision": Decision as a dict, "order": OrderRequest JSON or None, "breach_new": bool,
    "breaker_reset": bool, "again": bool}``: ``breach_new`` when a breach starts (not at every refusal
    while it lasts), ``breaker_reset`` when this decision found the breaker's cooldown over, ``again`` when
    the decision was taken at an earlier delivery of the same signal. A signal older than
    SIGNAL_MAX_AGE_SECONDS raises StaleMessage unless it was decided already (:func:`_refuse_if_stale`).
    ``also``: one more read with the portfolio's (the stage's repeat check), whose value ``first`` gets
    before anything is decided.
    """
    now = time.time() if now is None else now
    key = store.key("decisions", signal_key(signal))
    extra = [also] if also else []
    watched = [key, _k("account"), _k("holdings"), _k("reservations"), _k("results")]

    def body(values: list[Any], pipe: Pipeline) -> dict[str, Any]:
        stored, *portfolio_values = values[: len(values) - len(extra)]
        if first is not None:
            first(values[-1] if extra else None)
        if stored is not None:
            pipe.expire(key, RECORD_TTL_SECONDS)  # a write, so the WAIT after it covers the record
            record: dict[str, Any] = json.loads(stored)
            return record | {"again": True}
        _refuse_if_stale(
            f"signal of {signal.timestamp.isoformat()}", signal.timestamp, SIGNAL_MAX_AGE_SECONDS, now
        )
        current, closed = _portfolio(portfolio_values, limits, now)
        decision = risk_decide(signal, current, limits, now)
        order = _order_for(signal, decision) if decision.approved else None
        breached = "drawdown_breached" in portfolio_values[0]
        reset = 0 < current.breaker_until <= now
        record = {
            "decision": asdict(decision),
            "order": order.model_dump(mode="json") if order else None,
            "breach_new": bool(decision.breaches) and not breached,
            "breaker_reset": reset,
        }
        pipe.set(key, json.dumps(record), ex=RECORD_TTL_SECONDS)
        pipe.hincrby(store.key("metrics"), "orders" if order else "signals_refused", 1)
        if reset:
            pipe.hset(_k("account"), "breaker_until", "0")
        pipe.hset(_k("account"), "peak", repr(max(decision.peak_equity, current.peak_equity)))
        if decision.breaches:
            pipe.hset(_k("account"), "drawdown_breached", "1")
        elif signal.action == "BUY":
            pipe.hdel(_k("account"), "drawdown_breached")
        if decision.trips_breaker:
            pipe.hset(
                _k("account"), mapping={"breaker_until": repr(decision.breaker_until), "streak_from": closed}
            )
        lapsed = set(portfolio_values[2]) - set(current.reservations)
        if lapsed:
            pipe.hdel(_k("reservations"), *lapsed)
        if order is not None:
            reserved = Reservation(
                order.symbol, order.side, order.quantity, order.quantity * signal.entry_price, now
            )
            pipe.hset(_k("reservations"), order.request_id, json.dumps(asdict(reserved)))
        return record | {"again": False}

    return _transaction(watched, [("get", key), *_portfolio_reads(), *extra], body)


def _order_for(signal: TradingSignal, decision: Decision) -> OrderRequest:
    return OrderRequest(
        request_id=request_id_for(signal),
        strategy_id=signal.strategy_id,
        symbol=signal.symbol,
        side=signal.action,
        order_type="MARKET",
        quantity=decision.quantity,
        stop_loss=signal.stop_loss,
        take_profit=signal.take_profit,
        environment="paper",
        risk_approved=True,
        timestamp=datetime.now(UTC),
    )


def order_id_for(request_id: str) -> str:
    """The order id the executor gives a request: the same for every delivery of it."""
    return f"order-{uuid.uuid5(_ORDER_NAMESPACE, request_id).hex[:20]}"


def _refuse_if_stale(what: str, timestamp: datetime, max_age: int, now: float) -> None:
    """Raise StaleMessage when ``what`` (stamped ``timestamp``) is over ``max_age`` seconds old at ``now``.

    Checked only where no record of the message is stored yet: staleness refuses a NEW fill or decision,
    never the replay of one already booked (a WAIT that came up short, NotReplicated, retries and
    dead-letters a message whose fill is on the master; replayed after the window, it must still publish
    what that fill produced rather than leave a position booked and never announced).
    """
    age = now - timestamp.timestamp()
    if age > max_age:
        raise StaleMessage(f"{what} is {age:.0f}s old; only those up to {max_age}s old are acted on")


def fill(
    order: OrderRequest,
    now: float | None = None,
    *,
    also: checked.Read | None = None,
    first: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Execute ``order`` once against the last price and book it.

    Returns ``{"status": ..., "updates": [OrderUpdate JSON], "published": bool, "again": bool}``; ``again``
    is true when an earlier delivery of the same ``request_id`` already executed it. An order older than
    ORDER_MAX_AGE_SECONDS raises StaleMessage unless it was executed already (:func:`_refuse_if_stale`).

    Two Redis round trips (tradebus/checked.py): the fill's record, the holding and the price in one, and
    the writes in one more, applied only if none of the three moved meanwhile (then WAIT, with replicas to
    wait for). ``also``: one more read in the first round trip (the stage's repeat check), whose value
    ``first`` gets before anything is decided.
    """
    now = time.time() if now is None else now
    key = store.key("fills", order.request_id)
    order_id = order_id_for(order.request_id)
    exchange_order_id = str(int(hashlib.sha256(order_id.encode()).hexdigest()[:12], 16))

    def body(values: list[Any], pipe: checked.Writes) -> dict[str, Any]:
        stored, raw_holding, price, *extra = values
        if first is not None:
            first(extra[0] if extra else None)
        if stored is not None:
            pipe.expire(key, RECORD_TTL_SECONDS)  # a write, so the WAIT after it covers the record
            record: dict[str, Any] = json.loads(stored)
            return record | {"again": True}
        _refuse_if_stale(f"order {order.request_id}", order.timestamp, ORDER_MAX_AGE_SECONDS, now)
        holding = Holding(**json.loads(raw_holding)) if raw_holding else None
        execution = execute(order, float(price) if price else None, holding.quantity if holding else 0.0)
        updates = order_updates(order, execution, order_id, exchange_order_id, datetime.now(UTC))
        record = {"status": execution.status, "updates": [u.model_dump(mode="json") for u in updates]}
        pipe.set(key, json.dumps(record), ex=RECORD_TTL_SECONDS)
        pipe.hdel(_k("reservations"), order.request_id)
        pipe.hincrby(
            store.key("metrics"), "fills" if execution.status == "filled" else f"orders_{execution.status}", 1
        )
        if execution.fills:
            _book(pipe, order, holding, execution)
        return record | {"again": False}

    reads = [("get", key), ("hget", _k("holdings"), order.symbol), ("hget", _k("prices"), order.symbol)]
    return checked.transaction(
        store.text_client(), reads, body, also=[also] if also else [], wait=store.replica_wait()
    )


def _book(pipe: checked.Writes, order: OrderRequest, holding: Holding | None, execution: Execution) -> None:
    booking = book(holding, order.side, execution)
    if booking.holding is None:
        pipe.hdel(_k("holdings"), order.symbol)
    else:
        pipe.hset(_k("holdings"), order.symbol, json.dumps(asdict(booking.holding)))
    # HINCRBYFLOAT on a missing field starts from 0: the account opens with its initial capital first.
    pipe.hsetnx(_k("account"), "cash", repr(LIMITS.initial_capital))
    pipe.hincrbyfloat(_k("account"), "cash", booking.cash_delta)
    pipe.hincrby(_k("account"), "fills", 1)
    if booking.realized is not None:
        pipe.rpush(_k("results"), repr(booking.realized))
        pipe.ltrim(_k("results"), -RESULTS_KEPT, -1)
        pipe.hincrby(_k("account"), "closed_trades", 1)


def fill_outcome(order: OrderRequest) -> str:
    """The key naming what the fill of ``order`` publishes (its order updates)."""
    return store.key("fills", order.request_id)


def decision_outcome(signal: TradingSignal) -> str:
    """The key naming what the decision on ``signal`` publishes (its order, breaches, breaker changes)."""
    return store.key("decisions", signal_key(signal))


def claim_publication(outcome: str, claimant: str) -> bool:
    """Whether the delivery of message ``claimant`` should publish what ``outcome`` produced.

    Not when it is published already, nor while another message is publishing it (its claim lapses after
    PUBLISH_CLAIM_SECONDS). An earlier attempt of the same message (a worker killed while publishing, a
    retry after a failed publish) hands its claim on: RabbitMQ never has one message in two deliveries at
    once, so the holder with the same id is a dead attempt, and waiting for it would publish nothing.
    """
    return state.claim(store.text_client(), outcome, claimant, PUBLISH_CLAIM_SECONDS)


def publish_once(outcome: str, messages: Iterable[BusMessage], claimant: str, source: str) -> None:
    """Publish what ``outcome`` produced unless another delivery did or is doing it (claim_publication).

    Each message's id derives from ``source`` (what produced the outcome: a request id, a signal's key), its
    type and its position (tradebus/outcomes.py): a delivery that publishes it again repeats the ids.
    """
    listed = list(messages)
    ids = outcome_ids(source, (m.type for m in listed))
    state.publish_once(
        store.text_client(),
        outcome,
        list(zip(listed, ids, strict=True)),
        claimant,
        lambda pair: publish(pair[0], message_id=pair[1]),
        claim_seconds=PUBLISH_CLAIM_SECONDS,
        keep_seconds=RECORD_TTL_SECONDS,
    )


def mark_published(outcome: str) -> None:
    """Note that what ``outcome`` produced reached the broker: later deliveries publish nothing."""
    state.mark_published(store.text_client(), outcome, RECORD_TTL_SECONDS)


def updates_of(record: dict[str, Any]) -> list[OrderUpdate]:
    """The order updates stored in a fill record."""
    return [OrderUpdate.model_validate(u) for u in record["updates"]]
