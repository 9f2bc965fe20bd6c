"""Market-data service: keeps the candle stream and answers ``request.market_data``.

An answer over the 128 KB limit drops its oldest candles until it fits (about 1,000 fit).
"""

from __future__ import annotations

from routing.letrade import MARKET_DATA_SERVICE
from tradebus.errors import MessageTooLarge
from tradebus.letrade import candles
from tradebus.letrade.messages import (
    CandleBatchMessage,
    MarketDataMessage,
    MarketDataRequestMessage,
    MarketDataResponseMessage,
    build,
    derived_id,
    encode,
)
from tradebus.letrade.payloads import MarketDataResponse
from tradebus.letrade.stage import letrade_stage, publish

SOURCE = "market_data_service"


def store_candles(batch: CandleBatchMessage) -> None:
    """Keep a batch's candles, in one round trip."""
    candles.add_many(batch.payload.symbol, batch.payload.candles)


@letrade_stage(
    "tradebus.letrade_market_data.store",
    queue=MARKET_DATA_SERVICE.name,
    accepts=MarketDataMessage,
    batch=store_candles,
)
def store_candle(message: MarketDataMessage) -> None:
    """Keep a candle for later requests."""
    candles.add(message.payload)


@letrade_stage(
    "tradebus.letrade_market_data.answer", queue=MARKET_DATA_SERVICE.name, accepts=MarketDataRequestMessage
)
def answer(message: MarketDataRequestMessage) -> None:
    """Answer a history request with the candles kept, in the timeframe asked for."""
    request = message.payload
    data = candles.history(request.symbol, request.timeframe, request.limit)
    while True:
        response = MarketDataResponse(
            request_id=request.request_id, symbol=request.symbol, timeframe=request.timeframe, data=data
        )
        answer = build(
            MarketDataResponseMessage, response, SOURCE, message_id=derived_id("response", message.message_id)
        )
        try:
            encode(answer)
        except MessageTooLarge:
            # The seed's 128 KB limit: the newest candles that fit, rather than no answer at all.
            data = data[len(data) // 10 + 1 :]
            continue
        publish(answer)
        return
