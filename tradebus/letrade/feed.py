"""Batched market data: many candles of one pair in one message (the seed: "batch processing recommended").

The wire contract is ``CandleBatchMessage`` (tradebus/letrade/messages.py): the seed's envelope around
``{"symbol", "exchange", "candles": [candle, ...]}``, each candle as ``response.market_data`` writes it, on
the pair's own ``market_data.{exchange}.{symbol}`` key. A publisher makes batches with ``batches``; a
consumer takes one apart with ``receive``, which validates each candle on its own: an invalid candle is
rejected alone (``Rejected``: a single-candle message of its own, dead-lettered with its reason), the others
go on. docs/letrade.md, "Batched market data", says why.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tradebus.codec import check_incoming, describe
from tradebus.errors import InvalidJSON, InvalidMessage, Misrouted, SchemaViolation
from tradebus.letrade.messages import CandleBatchMessage, MarketDataMessage, build
from tradebus.letrade.payloads import (
    MAX_BATCH_CANDLES,
    CandleBatch,
    ExchangeName,
    FeedCandle,
    Ident,
    MarketData,
    Pair,
    Timestamp,
)

#: Candles per message a feed publishes unless told otherwise: ~58 KB, under half the 128 KB limit. A
#: consumer's cost is mostly per message (a Celery task), so fewer, larger batches (docs/performance.md).
DEFAULT_BATCH = 500


class _LooseBatch(BaseModel):
    """A batch's envelope and pair, validated; its candles kept as they came, to be checked one by one."""

    model_config = ConfigDict(extra="forbid")
    symbol: Pair
    exchange: ExchangeName
    candles: Annotated[list[Any], Field(min_length=1, max_length=MAX_BATCH_CANDLES)]


class _LooseMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: Ident
    timestamp: Timestamp
    source: Ident
    payload: _LooseBatch


@dataclass(frozen=True)
class Rejected:
    """An invalid candle of a batch, as the single-candle message it stood for, and why it is refused."""

    message_id: str
    body: bytes
    error: InvalidMessage


@dataclass(frozen=True)
class Received:
    """A batch delivery: its valid candles (as a batch) and its invalid ones, each alone."""

    batch: CandleBatchMessage
    rejected: list[Rejected] = field(default_factory=list)


def candle_id(batch_id: str, index: int) -> str:
    """The message id of the ``index``-th candle of batch ``batch_id``: the same on every redelivery."""
    return f"{batch_id}:{index}"


def receive(body: str | bytes, routing_key: str, content_type: str | None = None) -> Received:
    """A batch delivery on ``routing_key``, each candle validated on its own; InvalidMessage when the batch
    itself (envelope, pair, key) is wrong, and then every candle goes with it."""
    check_incoming(body, content_type)
    try:
        received = Received(CandleBatchMessage.model_validate_json(body))  # every candle valid: one pass
    except ValidationError:
        received = _one_by_one(body)
    if received.batch.routing_key != routing_key:
        raise Misrouted(f"its payload routes as {received.batch.routing_key!r}, not {routing_key!r}")
    return received


def _one_by_one(body: str | bytes) -> Received:
    try:
        loose = _LooseMessage.model_validate_json(body)
    except ValidationError as exc:
        try:
            json.loads(body)
        except ValueError as bad:
            raise InvalidJSON(f"body is not valid JSON: {bad}") from bad
        raise SchemaViolation(f"invalid market_data_batch message: {describe(exc)}") from exc
    batch = loose.payload
    envelope = loose.model_dump(mode="json", exclude={"payload"})
    valid: list[FeedCandle] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(batch.candles):
        try:
            valid.append(FeedCandle.model_validate(raw))
        except ValidationError as exc:
            message_id = candle_id(loose.message_id, index)
            alone = {**envelope, "message_id": message_id}
            pair = {"symbol": batch.symbol, "exchange": batch.exchange}
            alone["payload"] = {**pair, **raw} if isinstance(raw, dict) else raw
            error = SchemaViolation(
                f"invalid market_data message (candle {index} of its batch): {describe(exc)}"
            )
            rejected.append(Rejected(message_id, json.dumps(alone, default=str).encode(), error))
    payload = CandleBatch.model_construct(symbol=batch.symbol, exchange=batch.exchange, candles=valid)
    message = CandleBatchMessage.model_construct(
        message_id=loose.message_id, timestamp=loose.timestamp, source=loose.source, payload=payload
    )
    return Received(message, rejected)


def candles(batch: CandleBatchMessage) -> Iterator[MarketDataMessage]:
    """The batch's candles as single market-data messages (what a stage without a batch handler gets)."""
    return (candle(batch, index) for index in range(len(batch.payload.candles)))


def candle(batch: CandleBatchMessage, index: int) -> MarketDataMessage:
    """The ``index``-th candle of ``batch`` as the single market-data message it stands for (validated
    already: built without validating again)."""
    pair, bar = batch.payload, batch.payload.candles[index]
    payload = MarketData.model_construct(
        symbol=pair.symbol,
        exchange=pair.exchange,
        timestamp=bar.timestamp,
        open=bar.open,
        high=bar.high,
        low=bar.low,
        close=bar.close,
        volume=bar.volume,
    )
    return MarketDataMessage.model_construct(
        message_id=candle_id(batch.message_id, index),
        timestamp=batch.timestamp,
        source=batch.source,
        payload=payload,
    )


def batches(
    candles: Iterable[MarketData | dict[str, Any]], source: str, size: int = DEFAULT_BATCH
) -> list[CandleBatchMessage]:
    """Candles (single market-data payloads) as validated batches of at most ``size``, one pair each, in
    the order they came; SchemaViolation (nothing made) when one is invalid."""
    if not 1 <= size <= MAX_BATCH_CANDLES:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH_CANDLES} candles, not {size}")
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for candle in candles:
        data = candle.model_dump() if isinstance(candle, MarketData) else dict(candle)
        try:
            symbol, exchange = data.pop("symbol"), data.pop("exchange")
        except KeyError as missing:
            raise SchemaViolation(f"invalid market_data payload: {missing.args[0]}: Field required") from None
        by_pair.setdefault((exchange, symbol), []).append(data)
    made: list[CandleBatchMessage] = []
    for (exchange, symbol), pair in by_pair.items():
        for start in range(0, len(pair), size):
            chunk = {"symbol": symbol, "exchange": exchange, "candles": pair[start : start + size]}
            message = build(CandleBatchMessage, chunk, source)
            assert isinstance(message, CandleBatchMessage)
            made.append(message)
    return made
