"""The trading logic of the pipeline's stages, as pure functions over plain data (no broker, no Redis).

``indicators`` (RSI, MACD, moving averages, ATR), ``strategy`` (candles to signal ideas), ``risk`` (a signal
and a portfolio to a decision), ``execution`` (an order and a price to paper fills).
"""
