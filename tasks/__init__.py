"""The pipeline stages, one module per stage: market data, strategy, risk, execution, alerts,
monitoring, backtest. Every task is named ``tradebus.<stage>.<action>``."""
