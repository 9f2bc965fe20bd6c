"""The strategy, risk and paper-execution rules as pure functions. No broker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tradebus.mastertrade.candles import _decoded
from tradebus.mastertrade.messages import OrderRequest, TradingSignal
from tradebus.mastertrade.samples import risk_check
from tradebus.mastertrade.trading.execution import COMMISSION_RATE, SLIPPAGE, book, execute, order_updates
from tradebus.mastertrade.trading.risk import Holding, Limits, Portfolio, Reservation, answer_check, decide
from tradebus.mastertrade.trading.strategy import MIN_CANDLES, Candle, Context, Position, evaluate

NOW = 1_700_000_000.0
LIMITS = Limits()


def candles_from(closes: list[float]) -> list[Candle]:
    return [Candle(60.0 * i, c, c * 1.001, c * 0.999, c, 1.0) for i, c in enumerate(closes)]


#: Falls faster and faster for 40 candles, then turns up: the MACD histogram crosses zero at candle 44.
V_SHAPE = [100.0 - 0.02 * i * i for i in range(40)] + [68.8 + 0.8 * i for i in range(12)]
NO_CONTEXT = Context()


def first_idea(  # type: ignore[no-untyped-def]
    closes: list[float], position: Position | None = None, context: Context = NO_CONTEXT
):
    for end in range(MIN_CANDLES, len(closes) + 1):
        idea = evaluate(candles_from(closes[:end]), position, context)
        if idea is not None:
            return end, idea
    return None, None


def test_momentum_turning_up_while_flat_gives_a_buy_with_stops_from_the_atr() -> None:
    end, idea = first_idea(V_SHAPE)
    assert idea is not None and idea.action == "BUY"
    assert end == 45  # the series up to candle 44
    assert idea.stop_loss < idea.entry_price < idea.take_profit
    assert 0 < idea.confidence < 1 and 0.01 <= idea.position_size_pct <= 0.05
    assert "MACD histogram crossed above zero" in idea.reasoning
    assert {"RSI", "MACD", "MACD_histogram"} <= set(idea.indicators)


def test_no_signal_before_the_indicators_have_enough_candles() -> None:
    assert evaluate(candles_from(V_SHAPE[: MIN_CANDLES - 1]), None) is None


def test_positive_sentiment_and_whale_outflows_raise_the_confidence() -> None:
    _, plain = first_idea(V_SHAPE)
    _, bullish = first_idea(V_SHAPE, context=Context(sentiment=0.8, whale_flow=1.0))
    _, bearish = first_idea(V_SHAPE, context=Context(sentiment=-0.8, whale_flow=-1.0))
    assert bearish.confidence < plain.confidence < bullish.confidence


def test_holding_a_position_the_strategy_sells_at_its_stop_loss() -> None:
    series = candles_from([100.0] * 40)
    idea = evaluate(series, Position(1.0, stop_loss=100.5, take_profit=120.0))
    assert idea is not None and idea.action == "SELL"
    assert "stop loss" in idea.reasoning


def test_holding_a_position_the_strategy_does_not_buy_more() -> None:
    held = Position(1.0, stop_loss=1.0, take_profit=1000.0)  # stops far away: nothing to sell either
    flat_end, flat = first_idea(V_SHAPE)
    # The same series makes a flat strategy buy: the crossing is there, the position is what stops it.
    assert flat is not None and flat.action == "BUY" and flat_end is not None
    at_the_crossing = evaluate(candles_from(V_SHAPE[:flat_end]), held)
    assert at_the_crossing is None
    ideas = [evaluate(candles_from(V_SHAPE[:end]), held) for end in range(MIN_CANDLES, len(V_SHAPE) + 1)]
    assert [i.action for i in ideas if i is not None] == []


def signal(
    action: str = "BUY", confidence: float = 0.8, symbol: str = "BTCUSDT", size: float | None = 0.05
) -> TradingSignal:
    return TradingSignal(
        strategy_id="s-1",
        symbol=symbol,
        action=action,
        confidence=confidence,
        entry_price=100.0,  # type: ignore[arg-type]
        position_size_pct=size,
        timestamp=datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_approved_buy_is_sized_from_equity_and_the_suggested_fraction() -> None:
    decision = decide(signal(size=0.05), Portfolio(cash=100_000.0), LIMITS, NOW)
    assert decision.approved
    assert decision.quantity == pytest.approx(50.0)  # 5% of 100,000 at 100


def test_buy_is_capped_at_the_maximum_position_size() -> None:
    held = Portfolio(cash=90_000.0, holdings={"BTCUSDT": Holding(95.0, 100.0)}, marks={"BTCUSDT": 100.0})
    decision = decide(signal(size=0.05), held, LIMITS, NOW)
    assert decision.approved and decision.quantity == pytest.approx(4.5)  # 10% of 99,500 is 9,950; 9,500 held
    full = Portfolio(cash=90_000.0, holdings={"BTCUSDT": Holding(100.0, 100.0)}, marks={"BTCUSDT": 100.0})
    refused = decide(signal(), full, LIMITS, NOW)
    assert not refused.approved and "at its maximum" in refused.reasons[0]


def test_buy_in_a_new_symbol_is_refused_at_the_maximum_of_open_positions() -> None:
    holdings = {f"S{i}USDT": Holding(1.0, 100.0) for i in range(LIMITS.max_open_positions)}
    decision = decide(signal(symbol="NEWUSDT"), Portfolio(cash=50_000.0, holdings=holdings), LIMITS, NOW)
    assert not decision.approved and "open positions" in decision.reasons[0]


def test_pending_orders_count_against_cash_and_open_positions() -> None:
    reservations = {
        f"r{i}": Reservation(f"S{i}USDT", "BUY", 1.0, 1_000.0) for i in range(LIMITS.max_open_positions)
    }
    decision = decide(
        signal(symbol="NEWUSDT"), Portfolio(cash=50_000.0, reservations=reservations), LIMITS, NOW
    )
    assert not decision.approved and "open positions" in decision.reasons[0]


def test_drawdown_over_the_limit_refuses_buys_with_a_breach() -> None:
    portfolio = Portfolio(cash=85_000.0, peak_equity=100_000.0)
    decision = decide(signal(), portfolio, LIMITS, NOW)
    assert not decision.approved
    (breach,) = decision.breaches
    assert (breach.metric, breach.value, breach.threshold) == ("drawdown", 0.15, 0.10)


def test_three_losses_in_a_row_trip_the_breaker_which_refuses_buys_until_its_cooldown_ends() -> None:
    losing = Portfolio(cash=99_000.0, peak_equity=100_000.0, results=[5.0, -1.0, -2.0, -3.0])
    tripped = decide(signal(), losing, LIMITS, NOW)
    assert not tripped.approved and tripped.trips_breaker
    assert tripped.breaker_until == NOW + LIMITS.breaker_cooldown_seconds
    during = Portfolio(
        cash=99_000.0, results=[-1.0, -2.0, -3.0], breaker_until=tripped.breaker_until, streak_from=3
    )
    assert "circuit breaker" in decide(signal(), during, LIMITS, NOW + 10).reasons[0]
    after = Portfolio(
        cash=99_000.0, results=[-1.0, -2.0, -3.0], breaker_until=tripped.breaker_until, streak_from=3
    )
    assert decide(signal(), after, LIMITS, tripped.breaker_until + 1).approved


def test_a_win_breaks_the_streak() -> None:
    assert decide(signal(), Portfolio(cash=99_000.0, results=[-1.0, -2.0, 4.0]), LIMITS, NOW).approved


def test_low_confidence_buy_is_refused_but_a_sell_closes_the_whole_position() -> None:
    assert not decide(signal(confidence=0.3), Portfolio(cash=100_000.0), LIMITS, NOW).approved
    held = Portfolio(cash=0.0, holdings={"BTCUSDT": Holding(2.5, 100.0)})
    sell = decide(signal("SELL", confidence=0.1), held, LIMITS, NOW)
    assert sell.approved and sell.quantity == 2.5


def test_sell_without_a_position_is_refused() -> None:
    decision = decide(signal("SELL"), Portfolio(cash=100_000.0), LIMITS, NOW)
    assert not decision.approved and "no position" in decision.reasons[0]


def test_risk_check_answers_with_every_limit_it_breaks() -> None:
    ok = answer_check(risk_check(current_positions=2), LIMITS, breaker_tripped=False)
    assert ok.approved and ok.reasons == ()
    bad = risk_check().model_copy(update={"proposed_position_size": 0.5, "current_positions": 9})
    answer = answer_check(bad, LIMITS, breaker_tripped=True)
    assert not answer.approved and len(answer.reasons) == 3


def order(side: str = "BUY", quantity: float = 1.0, **extra: object) -> OrderRequest:
    fields = {
        "request_id": "r-1",
        "strategy_id": "s-1",
        "symbol": "BTCUSDT",
        "side": side,
        "quantity": quantity,
    }
    return OrderRequest.model_validate(fields | extra)


def test_market_buy_fills_at_the_last_price_plus_slippage_with_commission() -> None:
    result = execute(order(quantity=0.5), 100.0, held=0.0)
    assert result.status == "filled" and len(result.fills) == 1
    assert result.average_price == pytest.approx(100.0 * (1 + SLIPPAGE))
    assert result.commission == pytest.approx(0.5 * 100.0 * (1 + SLIPPAGE) * COMMISSION_RATE)


def test_large_order_fills_in_partials_each_at_a_worse_price() -> None:
    result = execute(order(quantity=1.0), 60_000.0, held=0.0)  # 60,000 of notional: three fills
    assert [f.quantity for f in result.fills] == pytest.approx([1 / 3, 1 / 3, 1 / 3], abs=1e-8)
    prices = [f.price for f in result.fills]
    assert prices == sorted(prices) and len(set(prices)) == 3
    updates = order_updates(order(quantity=1.0), result, "order-1", "1", datetime.now(UTC))
    assert [u.status for u in updates] == ["partial", "partial", "filled"]
    assert [round(u.filled_quantity, 8) for u in updates] == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-8)
    assert all(u.request_id == "r-1" for u in updates)


def test_limit_order_that_is_not_marketable_is_cancelled() -> None:
    result = execute(order(order_type="LIMIT", price=90.0), 100.0, held=0.0)
    assert result.status == "cancelled" and "not marketable" in (result.reason or "")
    filled = execute(order(order_type="LIMIT", price=110.0), 100.0, held=0.0)
    assert filled.status == "filled" and filled.average_price <= 110.0


def test_order_without_a_price_or_selling_more_than_held_is_rejected() -> None:
    assert execute(order(), None, held=0.0).status == "rejected"
    over = execute(order("SELL", 2.0), 100.0, held=1.0)
    assert over.status == "rejected" and "exceeds the position" in (over.reason or "")


def test_a_round_trip_books_its_realized_pnl_net_of_both_commissions() -> None:
    bought = book(None, "BUY", execute(order(quantity=1.0), 100.0, held=0.0))
    assert bought.holding is not None and bought.realized is None
    sold = book(bought.holding, "SELL", execute(order("SELL", 1.0), 110.0, held=1.0))
    assert sold.holding is None
    assert sold.realized == pytest.approx(bought.cash_delta + sold.cash_delta)
    assert sold.realized < 10.0


def test_two_different_signals_at_the_same_moment_are_two_decisions() -> None:
    from tradebus.mastertrade.account import request_id_for, signal_key

    first, second = signal(), signal().model_copy(update={"entry_price": 101.0})
    assert signal_key(first) == signal_key(signal())
    assert signal_key(first) != signal_key(second)
    assert request_id_for(first) != request_id_for(second)


def test_a_series_read_newest_first_is_decoded_oldest_first_in_one_parse() -> None:
    newest_first = [b"[180.0,3,3.5,2.5,3.2,7.0]", b"[120.0,2,2.5,1.5,2.2]", b"[60.0,1,1.5,0.5,1.2,5.0]"]
    assert _decoded(newest_first) == [
        Candle(60.0, 1, 1.5, 0.5, 1.2, 5.0),
        Candle(120.0, 2, 2.5, 1.5, 2.2, 0.0),  # a candle stored without its volume
        Candle(180.0, 3, 3.5, 2.5, 3.2, 7.0),
    ]
    assert _decoded([]) == []
