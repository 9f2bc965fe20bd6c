"""Paper execution: an order request and the last price become fills, as an exchange would report them.

* MARKET orders fill at the last price plus slippage (1 bp) in the order's direction.
* LIMIT orders are immediate-or-cancel: they fill when the limit is marketable at the last price, never
  at a worse price than the limit, and are cancelled otherwise.
* Large orders walk the book: every 25,000 of notional is one partial fill, each 2 bp worse than the last
  (at most 5), so they are reported as ``partial`` updates and then ``filled``.
* Commission is 0.075% of each fill's notional (Binance's taker rate), charged in the quote asset.
* A SELL larger than the position, or an order for a symbol with no price yet, is rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from tradebus.mastertrade.messages import OrderRequest, OrderUpdate
from tradebus.mastertrade.trading.risk import QUANTITY_DECIMALS, Holding

SLIPPAGE = 0.0001
IMPACT_PER_FILL = 0.0002
FILL_NOTIONAL = 25_000.0
MAX_FILLS = 5
COMMISSION_RATE = 0.00075
#: Symbols are quoted in one of these; commission is charged in it.
QUOTE_ASSETS = ("USDT", "USDC", "BUSD", "BTC", "ETH", "BNB")


def quote_asset(symbol: str) -> str:
    """The asset ``symbol`` is priced in (``BTCUSDT`` -> ``USDT``)."""
    return next((q for q in QUOTE_ASSETS if symbol.endswith(q) and symbol != q), "USDT")


@dataclass(frozen=True)
class Fill:
    """One fill of an order."""

    quantity: float
    price: float
    commission: float


@dataclass(frozen=True)
class Execution:
    """What happened to an order: its fills, or why it did not fill."""

    status: str
    fills: tuple[Fill, ...] = ()
    reason: str | None = None

    @property
    def quantity(self) -> float:
        """Total filled quantity."""
        return round(sum(f.quantity for f in self.fills), QUANTITY_DECIMALS)

    @property
    def notional(self) -> float:
        """Total filled value in the quote asset."""
        return sum(f.quantity * f.price for f in self.fills)

    @property
    def average_price(self) -> float | None:
        """Volume-weighted fill price."""
        return self.notional / self.quantity if self.quantity else None

    @property
    def commission(self) -> float:
        """Total commission in the quote asset."""
        return sum(f.commission for f in self.fills)


def execute(order: OrderRequest, last_price: float | None, held: float) -> Execution:
    """Execute ``order`` against ``last_price`` for an account holding ``held`` of its symbol."""
    if last_price is None:
        return Execution("rejected", reason=f"no market price for {order.symbol} yet")
    if order.side == "SELL" and order.quantity > held + 10**-QUANTITY_DECIMALS:
        return Execution("rejected", reason=f"sell of {order.quantity:g} exceeds the position of {held:g}")
    direction = 1 if order.side == "BUY" else -1
    if order.order_type == "LIMIT" and order.price is not None:
        marketable = last_price <= order.price if order.side == "BUY" else last_price >= order.price
        if not marketable:
            return Execution(
                "cancelled",
                reason=f"limit {order.price:g} not marketable at {last_price:g} (immediate-or-cancel)",
            )
    count = max(1, min(MAX_FILLS, math.ceil(order.quantity * last_price / FILL_NOTIONAL)))
    chunk = round(order.quantity / count, QUANTITY_DECIMALS)
    fills = []
    for i in range(count):
        quantity = chunk if i < count - 1 else round(order.quantity - chunk * (count - 1), QUANTITY_DECIMALS)
        price = last_price * (1 + direction * (SLIPPAGE + IMPACT_PER_FILL * i))
        if order.order_type == "LIMIT" and order.price is not None:
            price = min(price, order.price) if order.side == "BUY" else max(price, order.price)
        fills.append(Fill(quantity, price, quantity * price * COMMISSION_RATE))
    return Execution("filled", tuple(fills))


def order_updates(
    order: OrderRequest, execution: Execution, order_id: str, exchange_order_id: str, at: datetime
) -> list[OrderUpdate]:
    """The updates the executor publishes for ``execution``: cumulative, one per fill, the last final."""
    base = {
        "order_id": order_id,
        "request_id": order.request_id,
        "exchange_order_id": exchange_order_id,
        "symbol": order.symbol,
        "side": order.side,
        "strategy_id": order.strategy_id,
        "commission_asset": quote_asset(order.symbol),
    }
    if not execution.fills:
        return [OrderUpdate(status=execution.status, reason=execution.reason, **base)]
    updates = []
    for i in range(1, len(execution.fills) + 1):
        done = Execution(execution.status, execution.fills[:i])
        updates.append(
            OrderUpdate(
                status="filled" if i == len(execution.fills) else "partial",
                filled_quantity=done.quantity,
                average_fill_price=done.average_price,
                commission=round(done.commission, 10),
                filled_at=at,
                **base,
            )
        )
    return updates


@dataclass(frozen=True)
class Booking:
    """What a fill does to the account: the new holding, the cash moved, the realized P&L if it sold."""

    holding: Holding | None
    cash_delta: float
    realized: float | None


def book(holding: Holding | None, side: str, execution: Execution) -> Booking:
    """Apply a filled ``execution`` to ``holding``; buys carry their commission in the cost basis."""
    quantity, notional, commission = execution.quantity, execution.notional, execution.commission
    held = holding.quantity if holding else 0.0
    cost = holding.average_price if holding else 0.0
    if side == "BUY":
        total = held + quantity
        average = (held * cost + notional + commission) / total
        return Booking(Holding(round(total, QUANTITY_DECIMALS), average), -(notional + commission), None)
    remaining = round(held - quantity, QUANTITY_DECIMALS)
    realized = notional - quantity * cost - commission
    return Booking(Holding(remaining, cost) if remaining > 0 else None, notional - commission, realized)
