"""Sharding by symbol as data: the plugin's hash, the sharded topology, its stages, users and settings.

The broker's own answer to the hash is checked in tests/live/test_shards_live.py.
"""

from __future__ import annotations

import json

import pytest

import routing
from routing import consistent_hash as ch
from routing.mastertrade.keys import CANDLE_INTERVALS, SYMBOL_HEADER, symbol_of
from routing.mastertrade.shards import STRATEGY_SHARDS
from tests.support.bus import MASTERTRADE
from tradebus import headers
from tradebus.application import create_app
from tradebus.errors import SettingsError
from tradebus.ops.report import route_report
from tradebus.ops.users import accounts, export_definitions
from tradebus.registry import stages_of_queues
from tradebus.settings import Settings

SHARDED = routing.build("mastertrade", market_data_shards=4)
SHARDS = tuple(f"strategy_market_data.{i}" for i in range(4))


# What OTP 25 computes (erlang:phash2/1 and the plugin's jump_consistent_hash/2, run in `erl`).
@pytest.mark.parametrize(
    ("value", "phash2_binary", "phash2_header", "of_4", "of_7", "key_of_4"),
    [
        ("", 13708901, 116351706, 1, 1, 0),
        ("A", 104444590, 121968653, 3, 3, 1),
        ("BTCUSDT", 18131426, 68408799, 0, 0, 2),
        ("ETHUSDT", 38878741, 12563360, 2, 2, 1),
        ("SYM00", 14501225, 15530638, 1, 1, 2),
    ],
)
def test_the_hash_is_the_plugins(
    value: str, phash2_binary: int, phash2_header: int, of_4: int, of_7: int, key_of_4: int
) -> None:
    assert ch.phash2_binary(value.encode()) == phash2_binary
    assert ch.phash2_tagged(ch.LONGSTR, value.encode()) == phash2_header
    assert (ch.header_bucket(value, 4), ch.header_bucket(value, 7)) == (of_4, of_7)
    assert ch.routing_key_bucket(value, 4) == key_of_4


def test_a_message_without_the_header_hashes_as_undefined() -> None:
    assert ch.phash2_atom("undefined") == 45914356
    assert (ch.header_bucket(None, 4), ch.header_bucket(None, 7)) == (1, 1)


def test_symbols_spread_over_the_shards_and_one_bucket_is_every_message() -> None:
    counts = [0] * 4
    for i in range(400):
        counts[ch.header_bucket(f"SYM{i:03d}", 4)] += 1
    assert all(60 < c < 140 for c in counts), counts
    assert ch.header_bucket("BTCUSDT", 1) == 0


def test_off_by_default_the_topology_is_the_seeds() -> None:
    assert MASTERTRADE.shards == () and MASTERTRADE.exchange_bindings == ()
    assert "strategy_market_data" in MASTERTRADE.queues_by_name
    assert STRATEGY_SHARDS.name not in {e.name for e in MASTERTRADE.exchanges}


def test_shards_replace_the_queue_with_its_arguments_dead_letters_policies_and_pools() -> None:
    replaced = MASTERTRADE.queues_by_name["strategy_market_data"]
    assert "strategy_market_data" not in SHARDED.queues_by_name
    assert "dlq.strategy_market_data" not in SHARDED.queues_by_name
    policies = {(p.apply_to, p.target): p.definition for p in SHARDED.policies}
    for name in SHARDS:
        queue = SHARDED.queues_by_name[name]
        assert queue.queue_arguments == replaced.queue_arguments
        assert {(b.exchange.name, b.routing_key) for b in queue.bindings} == {
            (STRATEGY_SHARDS.name, "1"),
            ("mastertrade.retry", name),
        }
        dead = SHARDED.queues_by_name[f"dlq.{name}"]
        assert dead.queue_arguments == MASTERTRADE.queues_by_name["dlq.strategy_market_data"].queue_arguments
        assert policies[("queues", name)] == {
            "dead-letter-exchange": "mastertrade.dlx",
            "dead-letter-routing-key": f"dlq.{name}",
        }
        assert SHARDED.pools[name].concurrency == 1 and SHARDED.pools[name].prefetch_multiplier == 10
        assert name in SHARDED.market_data_queues and name not in SHARDED.critical_queues
    assert policies[("exchanges", STRATEGY_SHARDS.name)] == {
        "alternate-exchange": "mastertrade.market.unrouted"
    }
    assert STRATEGY_SHARDS.type == "x-consistent-hash"
    assert STRATEGY_SHARDS.arguments == {"hash-header": SYMBOL_HEADER} and SYMBOL_HEADER == headers.SYMBOL
    # The shards are bound in order: bucket i is shard i.
    assert [q.name for q in SHARDED.queues if q.name.startswith("strategy_market_data.")] == list(SHARDS)


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT"])
def test_every_market_message_of_a_symbol_reaches_one_shard_its_hash(symbol: str) -> None:
    keys = [f"market.data.{symbol}.{i}" for i in CANDLE_INTERVALS] + [
        f"market.data.orderbook.{symbol}",
        f"market.data.trade.{symbol}",
    ]
    wanted = SHARDS[ch.header_bucket(symbol, 4)]
    for key in keys:
        assert symbol_of(key) == symbol
        reached = SHARDED.route("mastertrade.market", key)
        assert reached & set(SHARDS) == {wanted}, key
        unsharded = MASTERTRADE.route("mastertrade.market", key)
        assert reached - {wanted} == unsharded - {"strategy_market_data"}, key
        assert all(SHARDED.reaches("mastertrade.market", key, shard) for shard in SHARDS)
    assert not SHARDED.reaches("mastertrade.market", f"ticker.{symbol}", wanted)


def test_route_explains_the_shard_and_where_a_message_without_the_header_goes() -> None:
    report = route_report(SHARDED.trace("mastertrade.market", "market.data.ETHUSDT.1m"))
    assert (
        "mastertrade.market: executor_market_data, market_data, exchange mastertrade.market.strategy"
        in report
    )
    assert (
        "strategy_market_data.2 (shard 2 of 4: consistent hash of header x-tradebus-symbol=ETHUSDT)" in report
    )
    assert "sets no x-tradebus-symbol header (plain JSON) reaches shard 1" in report
    assert symbol_of("market.foo") is None
    assert SHARDED.route("mastertrade.market", "market.foo") & set(SHARDS) == {SHARDS[1]}


def test_one_stage_task_per_shard_and_delay_still_names_the_stage() -> None:
    app = create_app(SHARDED, Settings(market_data_shards=4), main="sharded-unit")
    stages = {q: [t.name for t in tasks] for q, tasks in stages_of_queues(app).items()}
    assert stages[SHARDS[0]] == ["tradebus.strategy.on_market_data"]
    assert [stages[q] for q in SHARDS[1:]] == [[f"tradebus.strategy.on_market_data.{i}"] for i in (1, 2, 3)]
    assert "strategy_market_data" not in stages


def test_the_strategy_user_reads_and_retries_into_every_shard() -> None:
    (strategy,) = [a for a in accounts(shards=4) if a.service == "strategy"]
    for name in SHARDS:
        assert name in strategy.consumes
    assert "strategy_market_data" not in strategy.consumes
    retry = strategy.topic_permissions()["mastertrade.retry"]
    assert all(name.replace(".", r"\.") in retry for name in SHARDS)


def test_definitions_bind_the_consistent_hash_exchange_and_its_shards_in_order() -> None:
    data = json.loads(export_definitions(SHARDED, "/"))
    assert {
        "source": "mastertrade.market",
        "vhost": "/",
        "destination": STRATEGY_SHARDS.name,
        "destination_type": "exchange",
        "routing_key": "market.#",
        "arguments": {},
    } in data["bindings"]
    to_shards = [b["destination"] for b in data["bindings"] if b["source"] == STRATEGY_SHARDS.name]
    assert to_shards == list(SHARDS)


def test_the_number_of_shards_comes_from_the_environment_and_only_mastertrade_builds_them() -> None:
    assert Settings.from_env({"TRADEBUS_MARKET_DATA_SHARDS": "4"}).market_data_shards == 4
    assert Settings.from_env({}).market_data_shards == 0
    with pytest.raises(SettingsError, match="TRADEBUS_MARKET_DATA_SHARDS"):
        Settings.from_env({"TRADEBUS_MARKET_DATA_SHARDS": "-1"})
    with pytest.raises(ValueError, match="Letrade"):
        routing.build("letrade", market_data_shards=2)
    with pytest.raises(ValueError, match="between 0"):
        routing.build("mastertrade", market_data_shards=1000)


def test_a_dead_letter_of_any_shard_is_replayed_straight_back_to_that_shard() -> None:
    from tradebus.mastertrade.samples import candle
    from tradebus.mastertrade.wire import encode
    from tradebus.ops.dlq import DeadLetter, destination

    message = candle("ETHUSDT")  # hashes to shard 2; a header-less copy reached shard 1
    body = encode(message)
    for shard in (SHARDS[1], SHARDS[2]):
        route = (message.exchange, message.routing_key)
        letter = DeadLetter(
            f"dlq.{shard}", shard, "stage_error", "", *route, 1, None, "m", body, "application/json"
        )
        assert destination(SHARDED, letter, body, "application/json") == ("mastertrade.retry", shard)
