"""The trading pipeline end to end on the real broker: candles to signals, orders, fills and alerts.

Every test has a paper account and strategy memory of its own (the ``fresh_state`` fixture) and trades a
symbol of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest
from kombu import Producer

from tasks.strategy import STRATEGY_ID
from tests.support.bus import Vhost
from tests.support.wait import keyed, new_symbol, on, wait_until
from tradebus import publish, recorder, seen, store
from tradebus.errors import RequestTimeout
from tradebus.mastertrade import account, candles, strategy_state
from tradebus.mastertrade.messages import MarketData, OrderRequest, Ticker, TradingSignal
from tradebus.mastertrade.samples import risk_check
from tradebus.mastertrade.trading.risk import Reservation

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("celery_session_worker", "fresh_state")]

#: Falls faster and faster for 40 candles, then turns up: the strategy's MACD crosses at candle 44.
V_SHAPE = [100.0 - 0.02 * i * i for i in range(40)] + [68.8 + 0.8 * i for i in range(12)]
#: Yesterday, on the minute: recent enough for the risk manager, which refuses signals over two days old.
START = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)


def publish_candles(symbol: str, closes: list[float]) -> None:
    for i, close in enumerate(closes):
        publish(
            MarketData(
                symbol=symbol,
                interval="1m",
                timestamp=START + timedelta(minutes=i),
                open=close,
                high=close * 1.001,
                low=close * 0.999,
                close=close,
                volume=10.0,
            )
        )


def trade_signal(symbol: str, action: str, minute: int, confidence: float = 0.9) -> TradingSignal:
    return TradingSignal(
        strategy_id="test-strategy",
        symbol=symbol,
        action=action,
        confidence=confidence,  # type: ignore[arg-type]
        entry_price=100.0,
        position_size_pct=0.02,
        timestamp=START + timedelta(minutes=minute),
    )


def buy_order(symbol: str, quantity: float) -> OrderRequest:
    return OrderRequest(
        request_id=f"req-{uuid.uuid4().hex[:12]}",
        strategy_id="s-1",
        symbol=symbol,
        side="BUY",
        quantity=quantity,
        timestamp=datetime.now(UTC),
    )


def set_price(symbol: str, price: float) -> None:
    publish(Ticker(symbol=symbol, price=price, timestamp=datetime.now(UTC)))
    assert wait_until(lambda: account.last_price(symbol) == price), "the executor never saw the price"


def test_candle_series_that_turns_up_becomes_a_signal_an_approved_order_and_a_fill() -> None:
    symbol = new_symbol()
    publish_candles(symbol, V_SHAPE[:45])
    fill = wait_until(lambda: on("order_updates", keyed("order.update.filled.")), timeout=30)
    assert fill, "no fill"
    (signal,) = wait_until(lambda: on("trading_signals", keyed(f"signal.{symbol}.")))
    assert signal["routing_key"] == f"signal.{symbol}.{STRATEGY_ID}"
    assert len(wait_until(lambda: on("order_requests", keyed(f"order.request.{symbol}")))) == 1
    held = account.portfolio().holdings[symbol]
    assert held.quantity > 0
    assert wait_until(lambda: strategy_state.position(STRATEGY_ID, symbol))
    assert strategy_state.position(STRATEGY_ID, symbol).quantity == held.quantity  # type: ignore[union-attr]
    metrics = recorder.metrics()
    assert (metrics["signals"], metrics["orders"], metrics["fills"]) == (1, 1, 1)


def test_buy_during_a_drawdown_is_refused_and_the_breach_is_published() -> None:
    symbol = new_symbol()
    account.reset(cash=80_000.0, peak=100_000.0)
    set_price(symbol, 100.0)
    publish(trade_signal(symbol, "BUY", 1))
    breach = wait_until(lambda: on("alert_risk_events", keyed("risk.breach.drawdown")))
    assert breach, "no breach"
    assert recorder.metrics().get("signals_refused") == 1
    assert not on("order_requests", keyed(symbol))
    assert wait_until(lambda: any("drawdown breach" in a["text"] for a in recorder.alerts()))


def test_circuit_breaker_trips_after_three_losing_trades_and_refuses_the_next_buy() -> None:
    symbol = new_symbol()
    for trade in range(3):
        set_price(symbol, 100.0)
        publish(trade_signal(symbol, "BUY", 10 * trade))
        assert wait_until(lambda: symbol in account.portfolio().holdings), f"buy {trade} never filled"
        set_price(symbol, 90.0)
        publish(trade_signal(symbol, "SELL", 10 * trade + 1))
        assert wait_until(lambda: symbol not in account.portfolio().holdings), f"sell {trade} never filled"
    assert [r < 0 for r in account.portfolio().results] == [True, True, True]
    set_price(symbol, 100.0)
    publish(trade_signal(symbol, "BUY", 100))
    tripped = wait_until(lambda: on("alert_risk_events", keyed("risk.circuit_breaker.loss_streak")))
    assert tripped, "the breaker did not trip"
    assert account.portfolio().breaker_until > datetime.now(UTC).timestamp()
    assert recorder.metrics()["orders"] == 6
    assert wait_until(
        lambda: any(
            a["severity"] == "critical" and "circuit breaker tripped" in a["text"] for a in recorder.alerts()
        )
    )


def test_order_request_delivered_twice_is_filled_once() -> None:
    symbol = new_symbol()
    set_price(symbol, 50.0)
    order = buy_order(symbol, 2.0)
    publish(order)
    publish(order)
    assert wait_until(lambda: len(on("order_requests", keyed(symbol))) == 2)
    assert wait_until(lambda: recorder.metrics().get("duplicate_deliveries") == 1)
    assert recorder.metrics()["fills"] == 1
    assert account.portfolio().holdings[symbol].quantity == 2.0
    assert wait_until(lambda: on("order_updates", keyed("order.update.")))
    time.sleep(recorder.FLUSH_SECONDS * 4)
    assert len(on("order_updates", keyed("order.update."))) == 1


def test_a_copy_of_a_handled_order_or_signal_is_dropped_by_the_check_in_the_stages_own_read() -> None:
    # The risk and order stages check for a repeat in the round trip that reads their state
    # (handler_checks_repeats): a copy under the same message id, after the first was handled, is dropped.
    symbol = new_symbol()
    set_price(symbol, 50.0)
    order, order_id = buy_order(symbol, 2.0), str(uuid.uuid4())
    publish(order, message_id=order_id)
    assert wait_until(lambda: seen.handled("order_requests", order_id))  # the first, handled and noted
    publish(order, message_id=order_id)
    assert wait_until(lambda: recorder.metrics().get("repeats_dropped:order_requests") == 1)
    assert "duplicate_deliveries" not in recorder.metrics()  # dropped before the fill's record was read
    assert recorder.metrics()["fills"] == 1 and account.portfolio().holdings[symbol].quantity == 2.0

    signal, signal_id = trade_signal(symbol, "BUY", 5), str(uuid.uuid4())
    publish(signal, message_id=signal_id)
    assert wait_until(lambda: seen.handled("trading_signals", signal_id))
    publish(signal, message_id=signal_id)
    assert wait_until(lambda: recorder.metrics().get("repeats_dropped:trading_signals") == 1)
    assert recorder.metrics()["orders"] == 1


def test_order_whose_delivery_died_while_publishing_gets_its_update_from_the_redelivery() -> None:
    symbol = new_symbol()
    set_price(symbol, 50.0)
    order = buy_order(symbol, 1.0)
    message_id = uuid.uuid4().hex
    # What a delivery killed after booking the fill and claiming its publication leaves behind.
    account.fill(order)
    assert account.claim_publication(account.fill_outcome(order), message_id)
    assert not account.claim_publication(account.fill_outcome(order), "another message")
    publish(order, message_id=message_id)
    assert wait_until(lambda: on("order_updates", keyed("order.update."))), "the update was never published"
    assert recorder.metrics()["fills"] == 1


def test_dead_letter_queue_deeper_than_ten_raises_a_system_alert(broker: Vhost) -> None:
    """The seed: alert when a DLQ holds MORE than 10. Ten is quiet; the eleventh, seen by beat's next health
    report, raises the warning."""
    from celery.beat import Scheduler

    from tasks.monitoring import health_report
    from tradebus import app

    queue = "dlq.stock_index_data"

    def alerts_on_queue() -> list[dict[str, object]]:
        return [a for a in recorder.alerts() if a["details"].get("queue") == queue]

    with broker.connection() as conn:
        conn.transport_options["confirm_publish"] = True
        conn.default_channel.queue_purge(queue)
        producer = Producer(conn.channel())
        for i in range(10):
            producer.publish(f"dead {i}", exchange="mastertrade.dlx", routing_key=queue)
        assert conn.default_channel.queue_declare(queue, passive=True)[1] == 10
        # Ten dead letters: what the worker runs for beat finds them and raises nothing.
        report = health_report()
        assert report["dlq_alerts"] == [], report
        assert not alerts_on_queue()
        producer.publish("dead 10", exchange="mastertrade.dlx", routing_key=queue)
        assert conn.default_channel.queue_declare(queue, passive=True)[1] == 11
    # Beat's schedule names the health report, every 30 s; fire its entry as beat's tick does, through the
    # broker to the worker that consumes the periodic tasks.
    scheduler = Scheduler(app=app)
    entry = scheduler.schedule["health-report"]
    assert entry.task == health_report.name == "tradebus.monitoring.health_report"
    assert entry.schedule.run_every.total_seconds() == 30.0
    scheduler.apply_async(entry, advance=False)  # what beat does when the entry is due (raises if it cannot)
    alert = wait_until(alerts_on_queue)
    assert alert, "no DLQ alert"
    assert len(alert) == 1 and alert[0]["severity"] == "warning"
    assert "holds 11 dead letters (more than 10)" in alert[0]["text"]
    assert alert[0]["details"]["depth"] == 11 and alert[0]["details"]["threshold"] == 10
    assert wait_until(lambda: on("monitoring_system_notifications", keyed("system.alert.warning")))
    assert wait_until(lambda: on("monitoring_system_notifications", keyed("system.health.execution")))
    with broker.connection() as conn:
        conn.default_channel.queue_purge(queue)


def test_risk_check_gets_its_answer_through_the_result_backend() -> None:
    from tasks.risk import request_check

    within = request_check(risk_check(f"risk-{uuid.uuid4().hex[:8]}", current_positions=1), timeout=10)
    assert within.approved and within.reasons == []
    too_big = risk_check(f"risk-{uuid.uuid4().hex[:8]}").model_copy(update={"proposed_position_size": 0.5})
    refused = request_check(too_big, timeout=10)
    assert not refused.approved
    assert any("position size" in r for r in refused.reasons)


def test_risk_check_the_risk_manager_answers_too_late_raises_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks.risk import check, request_check

    answer = check.handler

    def slow(message: object) -> object:
        time.sleep(3)
        return answer(message)

    monkeypatch.setattr(check, "handler", slow)
    with pytest.raises(RequestTimeout, match="no answer to risk check"):
        request_check(risk_check(f"risk-{uuid.uuid4().hex[:8]}"), timeout=1.0)


def test_reservations_of_orders_too_old_to_fill_lapse_and_hold_nothing() -> None:
    symbol = new_symbol()
    set_price(symbol, 100.0)
    made = time.time() - account.RESERVATION_SECONDS - 60
    for i in range(account.LIMITS.max_open_positions):  # five unfilled buys, from long ago
        lapsed = Reservation(f"OLD{i}USDT", "BUY", 1.0, 100.0, made)
        store.client().hset(store.key("account", "reservations"), f"req-old-{i}", json.dumps(asdict(lapsed)))
    publish(trade_signal(symbol, "BUY", 1))
    assert wait_until(lambda: symbol in account.portfolio().holdings), "the lapsed reservations still held"
    assert store.client().hkeys(store.key("account", "reservations")) == []


def test_a_late_price_does_not_replace_a_newer_one() -> None:
    symbol = new_symbol()
    account.record_price(symbol, 10.0, at=1_000.0)
    account.record_price(symbol, 9.0, at=999.0)
    assert account.last_price(symbol) == 10.0
    account.record_price(symbol, 11.0, at=1_001.0)
    assert account.last_price(symbol) == 11.0


def test_a_crossing_hidden_by_a_missing_candle_is_not_signalled() -> None:
    hidden, control = new_symbol(), new_symbol()
    closes = V_SHAPE[:46]
    for symbol in (hidden, control):
        for i, close in enumerate(closes):
            if i == 43 and symbol == hidden:  # the candle before the crossing never arrives
                continue
            publish(
                MarketData(
                    symbol=symbol, interval="1m", timestamp=START + timedelta(minutes=i), open=close,
                    high=close * 1.001, low=close * 0.999, close=close, volume=10.0,
                )
            )  # fmt: skip
    # The same series with every candle is signalled at the crossing: the strategy is at work...
    signalled = wait_until(lambda: on("trading_signals", keyed(f"signal.{control}.")), timeout=30)
    assert signalled, "the strategy signalled nothing, even with every candle"
    # ...and it has seen every candle of the hidden crossing (queued before the control's) by now.
    assert wait_until(lambda: len(candles.latest("strategy", hidden, "1m")) == len(closes) - 1)
    assert not on("trading_signals", keyed(f"signal.{hidden}."))
    assert recorder.metrics().get("signals", 0) == 1
