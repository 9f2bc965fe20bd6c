"""The capital manager's rules: how much of a requested trade the portfolio can take, and at what risk.

Pure functions of the request and the paper account (tradebus/letrade/paper.py); no broker, no Redis.

* A position is at most ``MAX_POSITION_PERCENT`` of equity: a larger buy is reduced to it.
* A buy needs the cash (with the fee); a sell needs the position. Otherwise the request is rejected.
* The trade's risk is its distance to the stop loss times its size; the portfolio's risk is that summed
  over every position, as a percent of equity. Past ``MAX_PORTFOLIO_RISK_PERCENT`` a buy is rejected.
* ``risk_level`` grades the portfolio risk after the trade: low up to 10%, medium up to 20%, then high.
* Stops: the request's own when they sit on the right side of the price, else 2% (stop loss) and 4% (take
  profit) away from it.
"""

from __future__ import annotations

from tradebus.letrade.paper import FEE_RATE, Account
from tradebus.letrade.payloads import CapitalAllocationRequest, CapitalAllocationResponse, PortfolioImpact

MAX_POSITION_PERCENT = 10.0
MAX_PORTFOLIO_RISK_PERCENT = 25.0
LOW_RISK_PERCENT = 10.0
MEDIUM_RISK_PERCENT = 20.0
DEFAULT_STOP_PERCENT = 2.0
DEFAULT_TAKE_PROFIT_PERCENT = 4.0
#: Below this many quote units an approval is pointless (dust): the request is rejected instead.
MIN_NOTIONAL = 1.0


def suggested_stops(request: CapitalAllocationRequest) -> tuple[float, float]:
    """(stop loss, take profit) for the request: its own when sensible, else the defaults."""
    price, buying = request.price, request.side == "buy"
    stop = request.stop_loss
    if stop is None or (stop >= price if buying else stop <= price):
        stop = (
            price * (1 - DEFAULT_STOP_PERCENT / 100) if buying else price * (1 + DEFAULT_STOP_PERCENT / 100)
        )
    target = request.take_profit
    if target is None or (target <= price if buying else target >= price):
        factor = DEFAULT_TAKE_PROFIT_PERCENT / 100
        target = price * (1 + factor) if buying else price * (1 - factor)
    return round(stop, 8), round(target, 8)


def risk_level(portfolio_risk_percent: float) -> str:
    """``low``, ``medium`` or ``high``."""
    if portfolio_risk_percent <= LOW_RISK_PERCENT:
        return "low"
    if portfolio_risk_percent <= MEDIUM_RISK_PERCENT:
        return "medium"
    return "high"


def allocate(
    request: CapitalAllocationRequest, request_id: str, account: Account, prices: dict[str, float]
) -> CapitalAllocationResponse:
    """The capital manager's answer to ``request``."""
    stop, target = suggested_stops(request)
    equity = max(account.equity(prices), 1e-9)
    held = account.positions.get(request.symbol)
    reasons: list[str] = []
    quantity = request.quantity
    if request.side == "buy":
        cap = min(equity * MAX_POSITION_PERCENT / 100, account.cash / (1 + FEE_RATE))
        if held is not None:
            cap = min(cap, max(0.0, equity * MAX_POSITION_PERCENT / 100 - held.quantity * request.price))
        if quantity * request.price > cap:
            quantity = cap / request.price
            reasons.append(f"reduced to {MAX_POSITION_PERCENT:g}% of equity and the cash available")
    else:
        available = held.quantity if held is not None else 0.0
        if quantity > available:
            quantity = available
            reasons.append(f"reduced to the position held ({available:g})")
    notional = quantity * request.price
    existing_risk = sum(
        p.quantity * p.average_price * DEFAULT_STOP_PERCENT / 100 for p in account.positions.values()
    )
    trade_risk = quantity * abs(request.price - stop) if request.side == "buy" else 0.0
    portfolio_risk = (existing_risk + trade_risk) / equity * 100
    if notional < MIN_NOTIONAL:
        reasons = ["insufficient capital" if request.side == "buy" else "no position to sell"]
        quantity = 0.0
    elif portfolio_risk > MAX_PORTFOLIO_RISK_PERCENT:
        reasons = [f"portfolio risk {portfolio_risk:.1f}% would exceed {MAX_PORTFOLIO_RISK_PERCENT:g}%"]
        quantity = 0.0
    if quantity == 0.0:
        result, notional, portfolio_risk = "rejected", 0.0, existing_risk / equity * 100
    else:
        result = "approved" if quantity == request.quantity else "reduced"
    cash_after = (
        account.cash - notional * (1 + FEE_RATE) if request.side == "buy" else account.cash + notional
    )
    return CapitalAllocationResponse(
        request_id=request_id,
        result=result,
        approved_quantity=round(quantity, 8),
        risk_level=risk_level(portfolio_risk),
        reasons=reasons,
        suggested_stop_loss=stop,
        suggested_take_profit=target,
        portfolio_impact=PortfolioImpact(
            position_size_percent=round(notional / equity * 100, 4),
            new_portfolio_risk_percent=round(portfolio_risk, 4),
            available_capital_after=round(cash_after, 8),
        ),
    )
