"""Batched market data (tradebus/letrade/feed.py): the wire contract, batching, and a batch taken apart
candle by candle, an invalid candle rejected alone."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from tradebus.errors import Misrouted, SchemaViolation
from tradebus.letrade import feed, simulator
from tradebus.letrade.client import outgoing
from tradebus.letrade.messages import (
    BATCH_TYPE,
    CandleBatchMessage,
    MarketDataMessage,
    encode,
    is_batch,
    parse,
)
from tradebus.letrade.payloads import MarketData

JSON = "application/json"


def candles(n: int) -> list[MarketData]:
    return [c.payload for c in itertools.islice(simulator.candles(seed=5), n)]


def test_batches_group_by_pair_in_order_and_chunk_by_size() -> None:
    made = feed.batches(candles(30), "exchange_connector", size=4)
    # Three pairs in turn, ten candles each: 4 + 4 + 2 per pair.
    assert [len(b.payload.candles) for b in made] == [4, 4, 2] * 3
    btc = [b for b in made if b.payload.symbol == "BTC/USDT"]
    assert {b.routing_key for b in btc} == {"market_data.binance.btcusdt"}
    closes = [c.close for b in btc for c in b.payload.candles]
    assert closes == [c.close for c in candles(30) if c.symbol == "BTC/USDT"]
    assert all(b.type == BATCH_TYPE and b.route.name == "market_data" for b in made)
    assert not made[0].route.persistent and made[0].route.priority == 1


def test_a_batch_is_refused_whole_at_the_publisher_when_a_candle_is_invalid() -> None:
    bad = candles(3)
    bad[1] = bad[1].model_copy(update={"low": bad[1].high * 2})
    with pytest.raises(SchemaViolation, match="low <= open, close <= high"):
        feed.batches(bad, "exchange_connector")
    with pytest.raises(ValueError, match="1 to 1000"):
        feed.batches(candles(3), "exchange_connector", size=0)


def test_publish_takes_a_batch_payload_on_a_market_data_key() -> None:
    (batch,) = feed.batches(candles(1), "exchange_connector")
    data = batch.payload.model_dump(mode="json")
    message = outgoing("letrade.events", "market_data.binance.btcusdt", data, "feed")
    assert isinstance(message, CandleBatchMessage) and len(message.payload.candles) == 1
    single = outgoing("letrade.events", "market_data.binance.btcusdt", candles(1)[0], "feed")
    assert isinstance(single, MarketDataMessage)
    with pytest.raises(Misrouted):
        outgoing("letrade.events", "market_data.binance.ethusdt", data, "feed")


def test_a_valid_batch_is_received_whole_and_parses_as_one_message() -> None:
    (batch,) = feed.batches(candles(12)[::3], "exchange_connector")  # four BTC candles
    body = encode(batch)
    received = feed.receive(body, batch.routing_key, JSON)
    as_sent = batch.model_dump(mode="json")
    assert received.rejected == [] and received.batch.model_dump(mode="json") == as_sent
    # What a client's subscriber is handed: the batch, as one message.
    assert parse(body, batch.routing_key, JSON).model_dump(mode="json") == as_sent
    singles = list(feed.candles(received.batch))
    assert [m.message_id for m in singles] == [f"{batch.message_id}:{i}" for i in range(4)]
    assert [m.payload.close for m in singles] == [c.close for c in batch.payload.candles]
    assert all(m.routing_key == batch.routing_key for m in singles)


def _body_with(batch: CandleBatchMessage, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode(batch))
    for index, value in changes.items():
        data["payload"]["candles"][int(index.removeprefix("c"))] = value
    return data


def test_an_invalid_candle_is_rejected_alone_as_the_single_candle_message_it_stood_for() -> None:
    (batch,) = feed.batches(candles(12)[::3], "exchange_connector")
    first = batch.payload.candles[1].model_dump(mode="json")
    data = _body_with(batch, c1={**first, "low": first["high"] * 2}, c3="not a candle")
    received = feed.receive(json.dumps(data), batch.routing_key, JSON)
    assert len(received.batch.payload.candles) == 2
    assert [c.close for c in received.batch.payload.candles] == [
        batch.payload.candles[i].close for i in (0, 2)
    ]
    one, three = received.rejected
    assert one.message_id == f"{batch.message_id}:1" and three.message_id == f"{batch.message_id}:3"
    assert one.error.reason == "schema_violation" and "candle 1 of its batch" in str(one.error)
    assert "low <= open, close <= high" in str(one.error)
    # The dead letter is a market_data message of its own: fixed, it parses as one (dlq replay).
    alone = json.loads(one.body)
    assert alone["message_id"] == one.message_id and alone["source"] == "exchange_connector"
    alone["payload"]["low"] = first["low"]
    fixed = parse(json.dumps(alone), batch.routing_key, JSON)
    assert isinstance(fixed, MarketDataMessage) and fixed.payload.symbol == "BTC/USDT"


def test_a_batch_whose_envelope_or_pair_is_wrong_is_refused_whole() -> None:
    (batch,) = feed.batches(candles(1), "exchange_connector")
    with pytest.raises(Misrouted):
        feed.receive(encode(batch), "market_data.binance.ethusdt", JSON)
    data = json.loads(encode(batch))
    data["payload"]["symbol"] = "btc-usdt"
    with pytest.raises(SchemaViolation, match=r"payload\.symbol"):
        feed.receive(json.dumps(data), batch.routing_key, JSON)
    data = json.loads(encode(batch))
    data["payload"]["candles"] = []
    with pytest.raises(SchemaViolation, match=r"payload\.candles"):
        feed.receive(json.dumps(data), batch.routing_key, JSON)


def test_a_single_candle_whose_source_or_id_reads_candles_is_not_a_batch() -> None:
    single = MarketDataMessage(source="candles", message_id="candles", payload=candles(1)[0])
    body = encode(single)
    assert b'"candles"' in body  # the old substring test took this for a batch
    assert not is_batch(body)
    assert isinstance(parse(body, single.routing_key, JSON), MarketDataMessage)
    (batch,) = feed.batches(candles(1), "exchange_connector")
    assert is_batch(encode(batch)) and is_batch(encode(batch).decode())
    for other in ('["candles"]', '{"payload": "candles"}', "{bad candles"):
        assert not is_batch(other)
