"""Letrade's paper exchange in Redis: the account the capital manager allocates from and the exchange
connector fills against.

Every order is executed once per ``client_order_id`` (the command's own, else its message id): the fill
and the order's record are written together, only if nothing the decision read has moved meanwhile
(tradebus/checked.py), and a redelivered command finds the record and gets the same answer back. A
market order fills at the last market price the connector saw; a limit order fills at once when it is
marketable and otherwise rests until a price crosses it or it is cancelled. Fees are the seed's example
rate, 0.1% of the cost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.client import Pipeline

from tradebus import checked, state, store
from tradebus.checked import Read
from tradebus.letrade.messages import derived_id
from tradebus.letrade.payloads import CancelOrder, ErrorReport, ExecuteTrade, TradeExecuted

INITIAL_CASH = 10_000.0
FEE_RATE = 0.001
#: Transaction attempts before a contended account is reported as a (transient) failure.
MAX_ATTEMPTS = state.MAX_ATTEMPTS
TRADE_EVENT, ERROR_EVENT = "trade_executed", "error"
#: Longest client order id kept in the order id as it is (ids are at most 128 characters).
MAX_READABLE_ID = 100
#: Where a booking queues its writes: a pipeline in MULTI, or a compare-and-write's (tradebus/checked.py).
Writer = Pipeline | checked.Writes


@dataclass(frozen=True)
class Position:
    """Base currency held in one pair, at what average price."""

    quantity: float
    average_price: float


@dataclass(frozen=True)
class Account:
    """Cash (quote currency) and positions by pair."""

    cash: float
    positions: dict[str, Position] = field(default_factory=dict)

    def equity(self, prices: dict[str, float]) -> float:
        """Cash plus every position at its last price (its average price when none is known)."""
        return self.cash + sum(
            p.quantity * prices.get(symbol, p.average_price) for symbol, p in self.positions.items()
        )


def _k(*parts: str) -> str:
    return store.key("letrade", *parts)


def reset(cash: float = INITIAL_CASH) -> None:
    """A fresh paper account: ``cash`` and no positions, no orders."""
    client = store.client()
    for name in client.scan_iter(match=_k("*"), count=1000):
        client.delete(name)
    client.set(_k("cash"), cash)


def _account(cash: Any, positions: dict[Any, Any]) -> Account:
    held = {}
    for symbol, raw in positions.items():
        data = json.loads(raw)
        held[symbol] = Position(**data)
    return Account(INITIAL_CASH if cash is None else float(cash), held)


def account() -> Account:
    """The account as it is now."""
    client = store.text_client()
    return _account(client.get(_k("cash")), client.hgetall(_k("positions")))


def snapshot(also: Read | None = None) -> tuple[Account, dict[str, float], Any]:
    """The account and the last prices (``prices``) read in one round trip, with ``also``'s value (the
    stage's repeat check, or None): what a capital allocation decides on."""
    reads = [("get", _k("cash")), ("hgetall", _k("positions")), ("hgetall", _k("prices"))]
    cash, positions, raw, *extra = state.read(store.text_client(), [*reads, *([also] if also else [])])
    prices = {k.split(":", 1)[1]: float(v) for k, v in raw.items()}
    return _account(cash, positions), prices, extra[0] if extra else None


def record_price(exchange: str, symbol: str, price: float, at: float | None = None) -> None:
    """Remember the last price of ``symbol`` on ``exchange`` at market time ``at``: market orders fill at it.

    A price older than the one stored (a late or redelivered candle, from any process) does not overwrite
    it: the comparison runs in Redis (``state.put_newest``). Without ``at`` (an operator or a test setting
    a price), the price is written as is and the next market price, whatever its time, replaces it.
    """
    field = f"{exchange}:{symbol}"
    pipe = store.client().pipeline(transaction=False)
    if at is None:
        pipe.hset(_k("prices"), field, repr(float(price)))
        pipe.hdel(_k("prices_at"), field)
    else:
        state.put_newest(pipe, _k("prices"), _k("prices_at"), [(field, at, repr(float(price)))])
    pipe.execute()


def last_price(exchange: str, symbol: str) -> float | None:
    """The last price seen for ``symbol`` on ``exchange``."""
    raw = store.client().hget(_k("prices"), f"{exchange}:{symbol}")
    return None if raw is None else float(raw)


def prices() -> dict[str, float]:
    """Last prices by pair (any exchange)."""
    raw: dict[str, str] = store.text_client().hgetall(_k("prices"))  # type: ignore[assignment]
    return {k.split(":", 1)[1]: float(v) for k, v in raw.items()}


def _error(error_type: str, message: str, context: dict[str, Any]) -> dict[str, Any]:
    report = ErrorReport(error_type=error_type, error_message=message, context=context)
    return {"event": ERROR_EVENT, "payload": report.model_dump(mode="json")}


def _fill(pipe: Pipeline, command: ExecuteTrade, order_id: str, price: float) -> dict[str, Any]:
    """Book ``command`` filled at ``price`` (in ``pipe``'s transaction, reading through it), or say why it
    cannot be."""
    cash_raw = pipe.get(_k("cash"))
    raw = pipe.hget(_k("positions"), command.symbol)
    return _book(pipe, command, order_id, price, cash_raw, raw)


def _book(
    pipe: Writer, command: ExecuteTrade, order_id: str, price: float, cash_raw: Any, raw: Any
) -> dict[str, Any]:
    """Book ``command`` filled at ``price`` against the cash and position read, or say why it cannot be."""
    cost = round(command.amount * price, 8)
    fee = round(cost * FEE_RATE, 8)
    cash = INITIAL_CASH if cash_raw is None else float(cash_raw)
    held = Position(**json.loads(raw)) if raw else Position(0.0, 0.0)
    context = {
        "strategy_id": command.strategy_id,
        "symbol": command.symbol,
        "requested_amount": command.amount,
    }
    if command.side == "buy":
        if cash < cost + fee:
            return _error("trade_execution_failed", "Insufficient balance", context | {"available": cash})
        quantity = held.quantity + command.amount
        average = (held.quantity * held.average_price + cost) / quantity
        cash -= cost + fee
    else:
        if held.quantity + 1e-12 < command.amount:
            return _error(
                "trade_execution_failed", "Insufficient position", context | {"held": held.quantity}
            )
        quantity = held.quantity - command.amount
        average = held.average_price
        cash += cost - fee
    if not pipe.explicit_transaction:
        pipe.multi()
    pipe.set(_k("cash"), cash)
    if quantity > 1e-12:
        pipe.hset(
            _k("positions"), command.symbol, json.dumps({"quantity": quantity, "average_price": average})
        )
    else:
        pipe.hdel(_k("positions"), command.symbol)
    event = TradeExecuted(
        strategy_id=command.strategy_id,
        order_id=order_id,
        symbol=command.symbol,
        side=command.side,
        type=command.type,
        amount=command.amount,
        filled=command.amount,
        status="filled",
        average_price=price,
        cost=cost,
        fee=fee,
        exchange=command.exchange,
        client_order_id=command.client_order_id,
    )
    return {"event": TRADE_EVENT, "payload": event.model_dump(mode="json")}


def _unfilled(command: ExecuteTrade, order_id: str, status: Literal["open", "canceled"]) -> dict[str, Any]:
    """The event of an order nothing of which is filled: resting (``open``) or ``canceled``."""
    event = TradeExecuted(
        strategy_id=command.strategy_id,
        order_id=order_id,
        symbol=command.symbol,
        side=command.side,
        type=command.type,
        amount=command.amount,
        filled=0.0,
        status=status,
        exchange=command.exchange,
        client_order_id=command.client_order_id,
    )
    return {"event": TRADE_EVENT, "payload": event.model_dump(mode="json")}


def execute(
    command: ExecuteTrade,
    client_order_id: str,
    *,
    also: Read | None = None,
    first: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Execute ``command`` once per ``client_order_id``; returns ``{"event", "payload", "again"}``
    (``again``: a redelivery, answered from the record of the first). ``also``: one more read in the same
    round trip (the stage's repeat check), whose value ``first`` gets before anything is decided."""
    command = command.model_copy(update={"client_order_id": client_order_id})
    # Readable when it can be (``paper-strategy_123_001``), always a valid id.
    order_id = (
        f"paper-{client_order_id}" if len(client_order_id) <= MAX_READABLE_ID else derived_id(client_order_id)
    )
    record_key = _k("orders", order_id)
    open_key = _k("open", command.exchange, command.symbol)

    # Everything the order needs is read in one round trip, and the writes are applied in one more by a
    # script, only if none of those values moved meanwhile (tradebus/checked.py): two round trips per
    # command (six before the reads were pipelined, three with WATCH/MULTI), on the path of
    # execute_trade -> trade_executed.
    reads = [
        ("get", record_key),
        ("hget", _k("prices"), f"{command.exchange}:{command.symbol}"),
        ("get", _k("cash")),
        ("hget", _k("positions"), command.symbol),
    ]

    def body(values: list[Any], pipe: checked.Writes) -> dict[str, Any]:
        done, market, cash_raw, position_raw, *extra = values
        if first is not None:
            first(extra[0] if extra else None)
        if done is not None:
            previous: dict[str, Any] = json.loads(done)
            return previous | {"again": True}
        price = float(market) if market is not None else command.price
        if price is None:
            result = _error(
                "trade_execution_failed",
                f"no market price for {command.symbol} on {command.exchange} yet",
                {"strategy_id": command.strategy_id, "symbol": command.symbol},
            )
        elif (
            command.type == "limit"
            and command.price is not None
            and not _crosses(command, command.price, price)
        ):
            result = _unfilled(command, order_id, "open")
            pipe.hset(open_key, order_id, command.model_dump_json())
        else:
            result = _book(pipe, command, order_id, price, cash_raw, position_raw)
        pipe.set(record_key, json.dumps(result))
        return result | {"again": False}

    return checked.transaction(
        store.text_client(), reads, body, also=[also] if also else [], max_attempts=MAX_ATTEMPTS
    )


def _crosses(command: ExecuteTrade, limit: float, price: float) -> bool:
    return price <= limit if command.side == "buy" else price >= limit


def fill_resting(exchange: str, symbol: str, price: float) -> None:
    """Fill the resting limit orders ``price`` crosses. Each fill is booked with its event in the outbox
    (``unannounced``), in one transaction: the event is published even if this delivery dies."""
    fill_resting_many(exchange, symbol, [price])


def fill_resting_many(exchange: str, symbol: str, prices: list[float]) -> None:
    """``fill_resting`` for each of ``prices`` in turn (a batch of candles): the resting orders are read
    once, and an order fills at the first price that crosses it."""
    open_key = _k("open", exchange, symbol)
    resting: dict[str, str] = store.text_client().hgetall(open_key)  # type: ignore[assignment]
    for oid, raw in resting.items():
        command = ExecuteTrade.model_validate_json(raw)
        limit = command.price
        price = next((p for p in prices if limit is not None and _crosses(command, limit, p)), None)
        if price is None:
            continue

        def body(
            pipe: Pipeline, command: ExecuteTrade = command, oid: str = oid, price: float = price
        ) -> dict[str, Any]:
            if not pipe.hexists(open_key, oid):
                return {}  # filled or cancelled meanwhile
            result = _fill(pipe, command, oid, price)
            if not pipe.explicit_transaction:
                pipe.multi()
            pipe.hdel(open_key, oid)
            pipe.set(_k("orders", oid), json.dumps(result))
            pipe.hset(_k("unannounced"), oid, json.dumps(result))
            return result

        state.transaction(
            store.text_client(), [open_key, _k("cash"), _k("positions")], body, max_attempts=MAX_ATTEMPTS
        )


def unannounced() -> dict[str, dict[str, Any]]:
    """Fills of resting orders whose event is not yet confirmed published, by order id."""
    raw: dict[str, str] = store.text_client().hgetall(_k("unannounced"))  # type: ignore[assignment]
    return {oid: json.loads(result) for oid, result in raw.items()}


def announced(order_id: str) -> None:
    """The event of ``order_id``'s fill is published: take it out of the outbox."""
    store.client().hdel(_k("unannounced"), order_id)


def cancel(command: CancelOrder) -> dict[str, Any]:
    """Cancel a resting order: a ``canceled`` trade event, or an error event when it is not open."""
    open_key = _k("open", command.exchange, command.symbol)

    record_key = _k("orders", command.order_id)

    def body(pipe: Pipeline) -> dict[str, Any]:
        raw = pipe.hget(open_key, command.order_id)
        done = pipe.get(record_key)
        pipe.multi()
        if raw is None and done is not None and json.loads(done)["payload"].get("status") == "canceled":
            answer: dict[str, Any] = json.loads(done)
            return answer  # a redelivered cancel: the same answer
        if raw is None:
            return _error(
                "cancel_failed",
                f"order {command.order_id} is not open (filled, cancelled or unknown)",
                {"order_id": command.order_id, "symbol": command.symbol},
            )
        order = ExecuteTrade.model_validate_json(raw)
        pipe.hdel(open_key, command.order_id)
        result = _unfilled(order, command.order_id, "canceled")
        pipe.set(record_key, json.dumps(result))
        return result

    return state.transaction(store.text_client(), [open_key, record_key], body, max_attempts=MAX_ATTEMPTS)
