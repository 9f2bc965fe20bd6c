"""Routing-key templates: which exchange and key each message type is published with.

The templates are the seed's routing-key hierarchy. Each ``{field}`` is filled from the message field of the
same name, so the routing key is computed from the payload, never typed by hand.
"""

from __future__ import annotations

from routing.mastertrade import exchanges
from routing.model import Route

#: Kline intervals a candle may carry. ``market_data`` binds one pattern per interval, which is how it takes
#: candles (``market.data.{symbol}.{interval}``) and never the orderbook or trade keys of the same length.
#: Each interval's length in seconds (a month counts 30 days).
INTERVAL_SECONDS: dict[str, int] = {
    "1s": 1, "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1_800,
    "1h": 3_600, "2h": 7_200, "4h": 14_400, "6h": 21_600, "8h": 28_800, "12h": 43_200,
    "1d": 86_400, "3d": 259_200, "1w": 604_800, "1M": 2_592_000,
}  # fmt: skip
CANDLE_INTERVALS: tuple[str, ...] = tuple(INTERVAL_SECONDS)


#: Message ``type`` -> route. Backtest signals use their own template (see ``TradingSignal.backtest``).
ROUTES: dict[str, Route] = {
    "market_data": Route(exchanges.MARKET.name, "market.data.{symbol}.{interval}"),
    "ticker": Route(exchanges.MARKET.name, "ticker.{symbol}"),
    "ticker_batch": Route(exchanges.MARKET.name, "ticker.{symbol}"),
    "orderbook": Route(exchanges.MARKET.name, "market.data.orderbook.{symbol}"),
    "trade": Route(exchanges.MARKET.name, "market.data.trade.{symbol}"),
    "sentiment": Route(exchanges.MARKET.name, "sentiment.{symbol}.{platform}"),
    "stock_index": Route(exchanges.MARKET.name, "stock.{index_name}"),
    "onchain_metric": Route(exchanges.MARKET.name, "onchain.{metric_name}.{symbol}"),
    "whale_alert": Route(exchanges.MARKET.name, "whale.alert.{token}.{alert_level}"),
    "trading_signal": Route(exchanges.TRADING.name, "signal.{symbol}.{strategy_id}"),
    "backtest_signal": Route(exchanges.TRADING.name, "signal.backtest.{strategy_id}"),
    "order_request": Route(exchanges.ORDERS.name, "order.request.{symbol}"),
    "order_update": Route(exchanges.ORDERS.name, "order.update.{status}.{order_id}"),
    "risk_check": Route(exchanges.RISK.name, "risk.check.{strategy_id}"),
    "risk_breach": Route(exchanges.RISK.name, "risk.breach.{metric}"),
    "circuit_breaker": Route(exchanges.RISK.name, "risk.circuit_breaker.{trigger}"),
    "system_health": Route(exchanges.SYSTEM.name, "system.health.{service}"),
    "system_alert": Route(exchanges.SYSTEM.name, "system.alert.{severity}"),
    "config_change": Route(exchanges.SYSTEM.name, "system.config.{change_type}"),
}

#: The header a tradebus publisher sets to a market message's symbol, and the one the strategy's
#: consistent-hash exchange hashes (routing/mastertrade/shards.py). Kept equal to tradebus.headers.SYMBOL.
SYMBOL_HEADER = "x-tradebus-symbol"

#: The market routes whose key carries a symbol, most literal words first: ``market.data.orderbook.X`` is an
#: order book of X, not a candle of symbol ``orderbook``.
_SYMBOL_ROUTES = sorted(
    (r for r in ROUTES.values() if r.exchange == exchanges.MARKET.name and "symbol" in r.fields),
    key=lambda r: -sum(1 for word in r.template.split(".") if "{" not in word),
)


def symbol_of(routing_key: str) -> str | None:
    """The symbol a market routing key carries (the one its publisher's message holds), or None."""
    words = routing_key.split(".")
    for route in _SYMBOL_ROUTES:
        template = route.template.split(".")
        if len(template) != len(words):
            continue
        fields: dict[str, str] = {}
        for part, word in zip(template, words, strict=True):
            if part.startswith("{"):
                fields[part[1:-1]] = word
            elif part != word:
                break
        else:
            if fields.get("interval", CANDLE_INTERVALS[0]) in INTERVAL_SECONDS:
                return fields["symbol"]
    return None
