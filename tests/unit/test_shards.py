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
from tradebus.application import create_app, topology_for
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
        assert queue.queue_arguments == {**replaced.queue_arguments, "x-single-active-consumer": True}
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
    for wrong in ("-1", "1000"):
        with pytest.raises(SettingsError, match="TRADEBUS_MARKET_DATA_SHARDS"):
            Settings.from_env({"TRADEBUS_MARKET_DATA_SHARDS": wrong})
    with pytest.raises(ValueError, match="between 0"):
        routing.build("mastertrade", market_data_shards=1000)


def test_letrade_ignores_the_shard_count_one_environment_serves_both_buses() -> None:
    settings = Settings.from_env({"TRADEBUS_MARKET_DATA_SHARDS": "4"})
    plain = routing.build("letrade")
    bus = topology_for("letrade", settings)
    assert bus.options.market_data_shards == 0 and not bus.shards
    assert [q.name for q in bus.stage_queues] == [q.name for q in plain.stage_queues]
    assert set(bus.pools) == set(plain.pools)
    assert topology_for("mastertrade", settings).options.market_data_shards == 4


@pytest.mark.parametrize(
    ("env", "code", "says"),
    [
        ({"TRADEBUS_TOPOLOGY": "letrade", "TRADEBUS_MARKET_DATA_SHARDS": "4"}, 0, "letrade.strategy"),
        ({"TRADEBUS_MARKET_DATA_SHARDS": "1000"}, 2, "TRADEBUS_MARKET_DATA_SHARDS"),
        ({"TRADEBUS_TOPOLOGY": "nosuch"}, 2, "TRADEBUS_TOPOLOGY"),
    ],
)
def test_the_cli_runs_letrade_with_shards_set_and_names_the_wrong_variable(
    env: dict[str, str], code: int, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from tradebus.ops.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["topology", "show"])
    assert result.exit_code == code, result.output
    assert says in result.output


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


def test_a_worker_on_a_shard_runs_one_process() -> None:
    from tradebus.errors import ShardConcurrency
    from workers.profiles import check_shard_concurrency

    check_shard_concurrency(SHARDED, [SHARDS[0]], 1)
    check_shard_concurrency(SHARDED, ["order_requests"], 3)
    check_shard_concurrency(MASTERTRADE, ["strategy_market_data"], 5)
    wrong = (([SHARDS[0]], 2), ([SHARDS[0], SHARDS[1]], 2), (["order_requests", SHARDS[3]], 4))
    for queues, processes in wrong:
        with pytest.raises(ShardConcurrency, match="one process"):
            check_shard_concurrency(SHARDED, queues, processes)


def test_a_consistent_hash_binding_of_another_weight_or_order_is_refused() -> None:
    from dataclasses import replace

    from routing.build import durable_queue

    def with_shard_1(weight: str) -> tuple[object, ...]:
        heavy = durable_queue(SHARDS[1], [(STRATEGY_SHARDS, weight)], {})
        return tuple(heavy if q.name == SHARDS[1] else q for q in SHARDED.stage_queues)

    with pytest.raises(ValueError, match="weight other than 1"):
        replace(SHARDED, stage_queues=with_shard_1("2"))
    replace(SHARDED, stage_queues=with_shard_1("1"))  # the positive control: weight 1 is accepted
    swapped = list(SHARDED.stage_queues)
    i, j = (next(n for n, q in enumerate(swapped) if q.name == s) for s in SHARDS[:2])
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(ValueError, match="in that order"):
        replace(SHARDED, stage_queues=tuple(swapped))
    assert headers.SYMBOL is SYMBOL_HEADER  # one definition, in routing


def test_a_ring_out_of_the_shards_order_is_a_difference_bucket_by_bucket() -> None:
    from tradebus.ops.ring import ring_differences

    exchange = STRATEGY_SHARDS.name
    assert ring_differences(SHARDED, {exchange: dict(enumerate(SHARDS))}) == []
    assert ring_differences(SHARDED, {}) == []  # not read: nothing to compare
    drifted = dict(enumerate([SHARDS[0], SHARDS[2], SHARDS[3], SHARDS[1]]))
    rows = ring_differences(SHARDED, {exchange: drifted})
    assert [(r[0].rsplit(" ", 1)[1], r[2], r[3]) for r in rows] == [
        ("1", SHARDS[2], SHARDS[1]),
        ("2", SHARDS[3], SHARDS[2]),
        ("3", SHARDS[1], SHARDS[3]),
    ]
    assert len(ring_differences(SHARDED, {exchange: dict(enumerate(SHARDS[:3]))})) == 1


def test_a_shard_counts_deliveries_without_the_symbol_and_those_its_hash_puts_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tradebus import sharding

    counted: list[str] = []

    def check(queue: str, exchange: str, hdrs: dict[str, str]) -> str | None:
        return sharding.check_delivery(SHARDED, queue, exchange, hdrs, lambda _, name: counted.append(name))

    eth = {SYMBOL_HEADER: "ETHUSDT"}  # shard 2
    assert check(SHARDS[2], "mastertrade.market", eth) is None  # where it belongs
    assert check(SHARDS[1], "mastertrade.retry", eth) is None  # a retry comes back by name
    assert check("order_requests", "mastertrade.orders", {}) is None  # not a shard
    with caplog.at_level("WARNING", logger="tradebus.sharding"):
        assert check(SHARDS[0], "mastertrade.market", eth) == sharding.MISPLACED
        assert check(SHARDS[0], "mastertrade.market", eth) == sharding.MISPLACED
        assert check(SHARDS[1], "mastertrade.market", {}) == sharding.NO_SYMBOL
    assert counted == [
        f"shard_misplaced:{SHARDS[0]}",
        f"shard_misplaced:{SHARDS[0]}",
        f"shard_no_symbol:{SHARDS[1]}",
    ]
    # One warning for the first of each kind, not one per delivery.
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "misplaced delivery" in warnings[0] and "without" in warnings[1]


def test_the_stage_counts_a_misplaced_delivery_in_prometheus_even_with_redis_down() -> None:
    """Through the stage's own bookkeeping (tradebus/stage.py ``_record``), Redis unreachable: the Redis
    count raises, the Prometheus one is taken first."""
    import redis
    from prometheus_client import CollectorRegistry

    from tests.support.bus import SETTINGS, free_port
    from tradebus import metrics, stage, store
    from tradebus.mastertrade.samples import candle

    settings = SETTINGS.with_(broker_url="memory://")
    app = create_app(SHARDED, settings, main="shard-metrics")
    (task,) = stages_of_queues(app)[SHARDS[0]]
    before = list(store._override)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    down = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0), retry_on_error=[])
    store.use(down)  # nothing listens there
    registry = metrics.enable(CollectorRegistry())
    try:
        for symbol, exchange in (("ETHUSDT", "mastertrade.market"), ("ETHUSDT", "mastertrade.retry")):
            task.push_request(
                id="tick", headers={SYMBOL_HEADER: symbol}, delivery_info={"exchange": exchange}, retries=0
            )
            try:
                stage._record(task, candle("ETHUSDT"))  # ETHUSDT hashes to shard 2
            finally:
                task.pop_request()
        labels = {"queue": SHARDS[0], "stage": task.name, "kind": "misplaced"}
        # Once: the retry (back by name through mastertrade.retry) is not checked.
        assert registry.get_sample_value("tradebus_shard_deliveries_total", labels) == 1
        with pytest.raises(redis.ConnectionError):
            store.client().ping()  # positive control: Redis was down all along
    finally:
        metrics.disable()
        store._override[:] = before
        app.close()
