"""Order executor: executes order requests against the prices on its market data queue.

Each stage is wired and observable: it validates, logs and records what it received.
"""

from __future__ import annotations

from tradebus.messages import MarketData, OrderBook, OrderRequest, Ticker, Trade
from tradebus.stage import stage


@stage("tradebus.execution.execute_order", queue="order_requests", accepts=OrderRequest)
def execute_order(message: OrderRequest) -> None:
    """A risk-approved order request to execute."""


@stage(
    "tradebus.execution.on_market_data",
    queue="executor_market_data",
    accepts=(MarketData, OrderBook, Trade, Ticker),
)
def on_market_data(message: MarketData | OrderBook | Trade | Ticker) -> None:
    """A price for paper execution."""
