"""The wire contract: models, routing keys from payloads, validation before anything is sent."""

from __future__ import annotations

import json
import uuid

import pytest
from celery import Celery

from tests.support.bus import MASTERTRADE, SETTINGS
from tests.support.contract import CONTRACT
from tradebus.application import create_app
from tradebus.codec import MAX_MESSAGE_BYTES, new_message_id
from tradebus.errors import (
    InvalidJSON,
    MessageTooLarge,
    PublishFailed,
    SchemaViolation,
    UnknownMessageType,
)
from tradebus.mastertrade.messages import OrderRequest, OrderUpdate, TradingSignal
from tradebus.mastertrade.samples import documented_messages, order_request, signal, ticker_batch
from tradebus.mastertrade.wire import MESSAGE_TYPES, parse_wire, publish

#: The six formats exactly as the seed prints them.
SEED_EXAMPLES = {
    "market_data": """{"type": "market_data", "symbol": "BTCUSDT", "interval": "1m",
        "timestamp": "2025-11-13T10:30:00Z", "open": 45000.00, "high": 45500.00, "low": 44800.00,
        "close": 45200.00, "volume": 1234.56, "quote_volume": 55776000.00, "trades_count": 8765}""",
    "trading_signal": """{"type": "trading_signal", "strategy_id": "550e8400-e29b-41d4-a716-446655440000",
        "symbol": "BTCUSDT", "action": "BUY", "confidence": 0.85, "entry_price": 45200.00,
        "stop_loss": 44300.00, "take_profit": 46500.00, "position_size_pct": 0.05,
        "reasoning": "Strong momentum + positive sentiment",
        "indicators": {"RSI": 65, "MACD": 150.5, "sentiment_score": 0.72},
        "timestamp": "2025-11-13T10:30:00Z"}""",
    "order_request": """{"type": "order_request", "request_id": "req-1234567890",
        "strategy_id": "550e8400-e29b-41d4-a716-446655440000", "symbol": "BTCUSDT", "side": "BUY",
        "order_type": "MARKET", "quantity": 0.5, "price": null, "stop_loss": 44300.00,
        "take_profit": 46500.00, "environment": "paper", "risk_approved": true,
        "timestamp": "2025-11-13T10:30:05Z"}""",
    "risk_check": """{"type": "risk_check", "check_id": "risk-1234567890",
        "strategy_id": "550e8400-e29b-41d4-a716-446655440000", "symbol": "BTCUSDT",
        "proposed_position_size": 0.05, "current_portfolio_value": 50000.00, "current_positions": 5,
        "max_drawdown_current": 0.08, "timestamp": "2025-11-13T10:30:03Z"}""",
    "whale_alert": """{"type": "whale_alert", "transaction_hash": "0x1234567890abcdef",
        "blockchain": "ethereum", "token": "BTC", "from_address": "0xabcd...", "to_address": "0xefgh...",
        "from_label": "unknown_wallet", "to_label": "binance_exchange", "amount_token": 100.0,
        "amount_usd": 4520000.00, "alert_level": "high", "timestamp": "2025-11-13T10:29:45Z"}""",
}
SEED_ORDER_UPDATE = """{"type": "order_update", "order_id": "order-1234567890",
    "exchange_order_id": "1234567890", "status": "filled", "filled_quantity": 0.5,
    "average_fill_price": 45205.50, "commission": 0.00075, "commission_asset": "BNB",
    "filled_at": "2025-11-13T10:30:08Z"}"""


@pytest.mark.parametrize("kind", sorted(SEED_EXAMPLES))
def test_seed_example_parses_as_its_documented_type(kind: str) -> None:
    message = parse_wire(SEED_EXAMPLES[kind])
    assert message.type == kind
    assert json.loads(message.model_dump_json())["type"] == kind


def test_order_update_without_request_id_is_refused_with_the_missing_field_named() -> None:
    with pytest.raises(SchemaViolation, match="request_id: Field required"):
        parse_wire(SEED_ORDER_UPDATE)
    with_request = json.loads(SEED_ORDER_UPDATE) | {"request_id": "req-1234567890"}
    assert isinstance(parse_wire(json.dumps(with_request)), OrderUpdate)


def test_documented_samples_compute_the_documented_exchange_and_routing_key() -> None:
    assert [(m.exchange, m.routing_key) for m in documented_messages()] == [(e, k) for e, k, _, _ in CONTRACT]


def test_every_message_type_has_a_route_and_round_trips() -> None:
    messages = [*documented_messages(), ticker_batch()]
    assert {m.type for m in messages} == set(MESSAGE_TYPES)
    for message in messages:
        assert parse_wire(message.model_dump_json()) == message


def test_a_ticker_batch_travels_on_its_symbols_ticker_key() -> None:
    batch = ticker_batch("ETHUSDT", 500)
    assert (batch.exchange, batch.routing_key) == ("mastertrade.market", "ticker.ETHUSDT")
    assert len(batch.model_dump_json()) < MAX_MESSAGE_BYTES
    assert batch.last_price == batch.ticks[-1].price


def test_backtest_flag_moves_a_signal_to_the_backtest_key() -> None:
    assert signal("s-1").routing_key == "signal.BTCUSDT.s-1"
    assert signal("s-1", backtest=True).routing_key == "signal.backtest.s-1"


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("symbol", "BTC.USDT", "symbol: String should match pattern"),
        ("symbol", "*", "symbol: String should match pattern"),
        ("request_id", "req.1", "request_id: String should match pattern"),
        ("quantity", 0, "quantity: Input should be greater than 0"),
        ("quantity", -1, "quantity: Input should be greater than 0"),
        ("side", "HOLD", "side: Input should be 'BUY' or 'SELL'"),
    ],
)
def test_order_request_breaking_a_rule_is_refused_with_the_field_named(
    field: str, value: object, complaint: str
) -> None:
    data = order_request().model_dump(mode="json") | {field: value}
    with pytest.raises(SchemaViolation, match=complaint):
        parse_wire(json.dumps(data))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("not json{", InvalidJSON),
        ("[1, 2]", SchemaViolation),
        ('{"type": "price_feed"}', UnknownMessageType),
        ('{"symbol": "BTCUSDT"}', UnknownMessageType),
        ("x" * (MAX_MESSAGE_BYTES + 1), MessageTooLarge),
    ],
)
def test_bad_wire_body_raises_the_error_that_names_its_reason(body: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_wire(body)


@pytest.fixture
def unreachable_app() -> Celery:
    """An app whose broker does not exist: any attempt to send would fail with a connection error."""
    app = create_app(
        MASTERTRADE, SETTINGS.with_(broker_url="amqp://nobody:nothing@127.0.0.1:1//"), main="unreachable"
    )
    # Give up on connecting at once (the default waits through several reconnection attempts).
    app.conf.broker_transport_options = {"max_retries": 0, "interval_start": 0, "interval_step": 0}
    return app


def test_invalid_message_is_refused_before_anything_is_sent(unreachable_app: Celery) -> None:
    bad = order_request().model_dump(mode="json") | {"quantity": 0}
    with pytest.raises(SchemaViolation, match="quantity"):
        publish(bad, app=unreachable_app)
    with pytest.raises(UnknownMessageType):
        publish({"type": "nonsense"}, app=unreachable_app)


def test_publish_to_an_unreachable_broker_raises_publish_failed(unreachable_app: Celery) -> None:
    with pytest.raises(PublishFailed, match="unreachable"):
        publish(order_request(), app=unreachable_app)


def test_oversized_message_is_refused_at_publish(unreachable_app: Celery) -> None:
    big = signal().model_copy(update={"reasoning": "x" * MAX_MESSAGE_BYTES})
    with pytest.raises(MessageTooLarge, match="limit"):
        publish(big, app=unreachable_app)


def test_limit_order_without_price_is_refused() -> None:
    with pytest.raises(ValueError, match="LIMIT order needs a price"):
        OrderRequest.model_validate(order_request().model_dump() | {"order_type": "LIMIT", "price": None})


def test_signal_confidence_outside_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        TradingSignal.model_validate(signal().model_dump() | {"confidence": 1.5})


def test_a_new_message_id_is_a_random_rfc_4122_uuid_in_its_canonical_text() -> None:
    ids = [new_message_id() for _ in range(2_000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
