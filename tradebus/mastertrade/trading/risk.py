"""The risk manager's rules: size a signal from the portfolio, or refuse it and say why.

Risk-increasing signals (BUY) must pass every limit; risk-reducing ones (SELL) only need something to sell.
A loss streak trips the circuit breaker, which refuses new BUYs until its cooldown ends; losses before a
reset do not count again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tradebus.mastertrade.messages import RiskCheck, TradingSignal

#: Quantities are rounded to exchange precision.
QUANTITY_DECIMALS = 8


@dataclass(frozen=True)
class Limits:
    """The risk limits of the paper portfolio."""

    initial_capital: float = 100_000.0
    max_open_positions: int = 5
    #: Largest position in one symbol, as a fraction of equity.
    max_position_pct: float = 0.10
    #: Position size when a signal suggests none, as a fraction of equity.
    default_position_pct: float = 0.02
    max_drawdown: float = 0.10
    #: Consecutive losing trades that trip the circuit breaker.
    loss_streak: int = 3
    breaker_cooldown_seconds: float = 300.0
    min_confidence: float = 0.5
    #: Smallest order worth sending, in quote currency.
    min_notional: float = 10.0


@dataclass(frozen=True)
class Holding:
    """A position in one symbol."""

    quantity: float
    average_price: float


@dataclass(frozen=True)
class Reservation:
    """An approved order not yet filled: it already counts against cash and position limits."""

    symbol: str
    side: str
    quantity: float
    notional: float
    #: When it was made (Unix seconds): an order older than the executor accepts no longer holds it.
    at: float = 0.0


@dataclass(frozen=True)
class Portfolio:
    """The paper account as the risk manager sees it."""

    cash: float
    holdings: Mapping[str, Holding] = field(default_factory=dict)
    #: Last traded price per symbol (positions are valued at it, or at cost when unknown).
    marks: Mapping[str, float] = field(default_factory=dict)
    peak_equity: float = 0.0
    reservations: Mapping[str, Reservation] = field(default_factory=dict)
    #: Realized P&L of each closed trade, oldest first.
    results: Sequence[float] = ()
    #: The circuit breaker refuses BUYs until this Unix time.
    breaker_until: float = 0.0
    #: Losses before this index of ``results`` were counted by an earlier trip.
    streak_from: int = 0

    @property
    def equity(self) -> float:
        """Cash plus every position at its mark."""
        return self.cash + sum(
            h.quantity * self.marks.get(symbol, h.average_price) for symbol, h in self.holdings.items()
        )

    @property
    def drawdown(self) -> float:
        """How far equity is below its peak, as a fraction of the peak."""
        peak = max(self.peak_equity, self.equity)
        return 0.0 if peak <= 0 else (peak - self.equity) / peak

    def loss_streak(self) -> int:
        """Consecutive losing trades at the end of the record, since the last trip."""
        streak = 0
        for result in reversed(self.results[self.streak_from :]):
            if result >= 0:
                break
            streak += 1
        return streak

    def reserved(self, symbol: str, side: str) -> Reservation:
        """The total of approved, unfilled orders for ``symbol`` on ``side``."""
        mine = [r for r in self.reservations.values() if r.symbol == symbol and r.side == side]
        return Reservation(symbol, side, sum(r.quantity for r in mine), sum(r.notional for r in mine))

    def open_symbols(self) -> set[str]:
        """Symbols held or about to be bought."""
        held = {s for s, h in self.holdings.items() if h.quantity > 0}
        return held | {r.symbol for r in self.reservations.values() if r.side == "BUY"}


@dataclass(frozen=True)
class Breach:
    """A limit the portfolio crossed: published on ``risk.breach.{metric}``."""

    metric: str
    value: float
    threshold: float
    message: str


@dataclass(frozen=True)
class Decision:
    """The risk manager's answer to a signal."""

    approved: bool
    quantity: float = 0.0
    reasons: tuple[str, ...] = ()
    breaches: tuple[Breach, ...] = ()
    #: The circuit breaker trips with this decision (it refuses BUYs until ``breaker_until``).
    trips_breaker: bool = False
    breaker_until: float = 0.0
    peak_equity: float = 0.0


def _refuse(
    reason: str,
    portfolio: Portfolio,
    breaches: tuple[Breach, ...] = (),
    trips_breaker: bool = False,
    breaker_until: float = 0.0,
) -> Decision:
    peak = max(portfolio.peak_equity, portfolio.equity)
    return Decision(False, 0.0, (reason,), breaches, trips_breaker, breaker_until, peak)


def decide(signal: TradingSignal, portfolio: Portfolio, limits: Limits, now: float) -> Decision:
    """Approve ``signal`` with a quantity, or refuse it with the reasons and any breach."""
    if signal.action == "SELL":
        return _decide_sell(signal, portfolio)
    peak = max(portfolio.peak_equity, portfolio.equity)
    if now < portfolio.breaker_until:
        return _refuse(f"circuit breaker tripped until {portfolio.breaker_until:.0f}", portfolio)
    streak = portfolio.loss_streak()
    if streak >= limits.loss_streak:
        until = now + limits.breaker_cooldown_seconds
        reason = f"{streak} losing trades in a row: circuit breaker tripped"
        return _refuse(reason, portfolio, trips_breaker=True, breaker_until=until)
    if portfolio.drawdown >= limits.max_drawdown:
        breach = Breach(
            "drawdown",
            round(portfolio.drawdown, 6),
            limits.max_drawdown,
            f"equity {portfolio.equity:.2f} is {portfolio.drawdown:.1%} below its peak {peak:.2f}",
        )
        return _refuse(
            f"drawdown {portfolio.drawdown:.1%} at or over {limits.max_drawdown:.0%}",
            portfolio,
            breaches=(breach,),
        )
    if signal.confidence < limits.min_confidence:
        return _refuse(f"confidence {signal.confidence:.2f} below {limits.min_confidence:.2f}", portfolio)
    if (
        signal.symbol not in portfolio.open_symbols()
        and len(portfolio.open_symbols()) >= limits.max_open_positions
    ):
        return _refuse(f"already {limits.max_open_positions} open positions", portfolio)
    return _size_buy(signal, portfolio, limits, peak)


def _size_buy(signal: TradingSignal, portfolio: Portfolio, limits: Limits, peak: float) -> Decision:
    equity = portfolio.equity
    held = portfolio.holdings.get(signal.symbol)
    mark = portfolio.marks.get(signal.symbol, signal.entry_price)
    exposure = (held.quantity * mark if held else 0.0) + portfolio.reserved(signal.symbol, "BUY").notional
    room = limits.max_position_pct * equity - exposure
    if room < limits.min_notional:
        return _refuse(
            f"position in {signal.symbol} at its maximum of {limits.max_position_pct:.0%} of equity",
            portfolio,
        )
    cash = portfolio.cash - sum(r.notional for r in portfolio.reservations.values() if r.side == "BUY")
    wanted = (signal.position_size_pct or limits.default_position_pct) * equity
    notional = min(wanted, room, cash)
    if notional < limits.min_notional:
        return _refuse(f"insufficient cash ({cash:.2f} free)", portfolio)
    quantity = round(notional / signal.entry_price, QUANTITY_DECIMALS)
    reasons = [f"{notional / equity:.2%} of equity {equity:.2f}"]
    if notional < wanted:
        reasons.append("capped by position limit" if notional == room else "capped by free cash")
    return Decision(True, quantity=quantity, reasons=tuple(reasons), peak_equity=peak)


def _decide_sell(signal: TradingSignal, portfolio: Portfolio) -> Decision:
    held = portfolio.holdings.get(signal.symbol)
    quantity = round(
        (held.quantity if held else 0.0) - portfolio.reserved(signal.symbol, "SELL").quantity,
        QUANTITY_DECIMALS,
    )
    if quantity <= 0:
        return _refuse(f"no position in {signal.symbol} to sell", portfolio)
    return Decision(
        True,
        quantity=quantity,
        reasons=("closes the position",),
        peak_equity=max(portfolio.peak_equity, portfolio.equity),
    )


@dataclass(frozen=True)
class CheckAnswer:
    """The answer to a risk check request."""

    approved: bool
    reasons: tuple[str, ...]
    max_position_size: float


def answer_check(check: RiskCheck, limits: Limits, breaker_tripped: bool) -> CheckAnswer:
    """Whether the position ``check`` proposes is within the limits, from the numbers it carries."""
    reasons = []
    if check.proposed_position_size > limits.max_position_pct:
        reasons.append(f"position size {check.proposed_position_size:.1%} over {limits.max_position_pct:.0%}")
    if check.current_positions >= limits.max_open_positions:
        reasons.append(f"{check.current_positions} open positions, the limit is {limits.max_open_positions}")
    if check.max_drawdown_current >= limits.max_drawdown:
        reasons.append(f"drawdown {check.max_drawdown_current:.1%} at or over {limits.max_drawdown:.0%}")
    if breaker_tripped:
        reasons.append("circuit breaker tripped")
    return CheckAnswer(not reasons, tuple(reasons), limits.max_position_pct)
