"""The Letrade_v1 seed's own examples (seed 003), as the tests' contract: every payload as documented."""

from __future__ import annotations

from typing import Any

ENVELOPE: dict[str, Any] = {
    "message_id": "550e8400-e29b-41d4-a716-446655440000",
    "timestamp": "2024-01-01T10:00:00.000Z",
    "source": "core_engine",
}

#: Route name -> (routing key, payload), exactly as the seed shows them.
PAYLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "execute_trade": (
        "commands.execute_trade",
        {
            "strategy_id": 123,
            "exchange": "binance",
            "symbol": "BTC/USDT",
            "side": "buy",
            "type": "market",
            "amount": 0.01,
            "price": 50000.0,
            "stop_loss": 49000.0,
            "take_profit": 55000.0,
            "client_order_id": "strategy_123_001",
        },
    ),
    "cancel_order": (
        "commands.cancel_order",
        {"order_id": "12345", "symbol": "BTC/USDT", "exchange": "binance"},
    ),
    "trade_executed": (
        "events.trade_executed",
        {
            "strategy_id": 123,
            "order_id": "12345",
            "symbol": "BTC/USDT",
            "side": "buy",
            "type": "market",
            "amount": 0.01,
            "filled": 0.01,
            "status": "filled",
            "average_price": 50100.0,
            "cost": 501.0,
            "fee": 0.501,
            "timestamp": "2024-01-01T10:00:00.000Z",
            "exchange": "binance",
        },
    ),
    "market_data": (
        "market_data.binance.btcusdt",
        {
            "symbol": "BTC/USDT",
            "timestamp": "2024-01-01T10:00:00.000Z",
            "open": 50000.0,
            "high": 51000.0,
            "low": 49500.0,
            "close": 50500.0,
            "volume": 1234.56,
            "exchange": "binance",
        },
    ),
    "error": (
        "events.error",
        {
            "error_type": "trade_execution_failed",
            "error_message": "Insufficient balance",
            "context": {"strategy_id": 123, "symbol": "BTC/USDT", "requested_amount": 1.0},
            "timestamp": "2024-01-01T10:00:00.000Z",
        },
    ),
    "capital_allocation_request": (
        "request.capital.allocation",
        {
            "strategy_id": 123,
            "symbol": "BTC/USDT",
            "side": "buy",
            "quantity": 0.01,
            "price": 50000.0,
            "stop_loss": 49000.0,
            "take_profit": 52000.0,
        },
    ),
    "capital_allocation_response": (
        "response.capital.allocation",
        {
            "request_id": "req_123",
            "result": "approved",
            "approved_quantity": 0.01,
            "risk_level": "medium",
            "reasons": [],
            "suggested_stop_loss": 49000.0,
            "suggested_take_profit": 52000.0,
            "portfolio_impact": {
                "position_size_percent": 5.0,
                "new_portfolio_risk_percent": 15.0,
                "available_capital_after": 4500.0,
            },
        },
    ),
    "market_data_request": (
        "request.market_data",
        {"symbol": "BTC/USDT", "timeframe": "1m", "limit": 100, "request_id": "req_001"},
    ),
    "market_data_response": (
        "response.market_data",
        {
            "request_id": "req_001",
            "symbol": "BTC/USDT",
            "timeframe": "1m",
            "data": [
                {
                    "timestamp": "2024-01-01T10:00:00Z",
                    "open": 50000,
                    "high": 50100,
                    "low": 49900,
                    "close": 50050,
                    "volume": 10.5,
                }
            ],
        },
    ),
}

#: Route name -> the inboxes its documented key must reach (docs/letrade.md, "Who consumes what").
CONSUMERS: dict[str, set[str]] = {
    "execute_trade": {"letrade.exchange_connector"},
    "cancel_order": {"letrade.exchange_connector"},
    "trade_executed": {"letrade.strategy"},
    "error": {"letrade.strategy"},
    "market_data": {"letrade.exchange_connector", "letrade.market_data", "letrade.strategy"},
    "capital_allocation_request": {"letrade.capital_manager"},
    "capital_allocation_response": {"letrade.strategy"},
    "market_data_request": {"letrade.market_data"},
    # Only the caller waiting for it (its own reply queue); with none waiting it is kept as unrouted.
    "market_data_response": {"letrade.unrouted"},
}


def body(name: str, **envelope: Any) -> dict[str, Any]:
    """The seed's envelope around the seed's payload of ``name``."""
    return {**ENVELOPE, **envelope, "payload": PAYLOADS[name][1]}
