"""Routing maths and the topology as data: no broker needed."""

from __future__ import annotations

import dataclasses
import re

import pytest

import routing
from routing import topic_matches
from routing.mastertrade import exchanges
from routing.mastertrade.keys import CANDLE_INTERVALS
from tests.support.bus import MASTERTRADE
from tests.support.contract import CONTRACT, SEED_BINDINGS, UNROUTABLE
from tradebus.topology import policy_diff

route = MASTERTRADE.route
QUEUES_BY_NAME = MASTERTRADE.queues_by_name
STAGE_QUEUES = MASTERTRADE.stage_queues
POOLS = MASTERTRADE.pools


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("signal.*", "signal.BTCUSDT", True),
        ("signal.*", "signal.BTCUSDT.uuid-1234", False),
        ("signal.*.*", "signal.BTCUSDT.uuid-1234", True),
        ("market.#", "market", True),
        ("market.#", "market.data.BTCUSDT.1m", True),
        ("market.data.*", "market.data.BTCUSDT.1m", False),
        ("market.data.*.1m", "market.data.BTCUSDT.1m", True),
        ("market.data.*.1m", "market.data.orderbook.BTCUSDT", False),
        ("#.1m", "market.data.BTCUSDT.1m", True),
        ("order.update.#", "order.update.filled.order-123", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("*", "", True),
        ("#", "anything.at.all", True),
    ],
)
def test_topic_pattern_follows_amqp_word_rules(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def _seed_route(exchange: str, key: str) -> set[str]:
    return {q for ex, pattern, q in SEED_BINDINGS if ex == exchange and topic_matches(pattern, key)}


def test_seed_literal_bindings_deliver_only_13_of_23_documented_routes() -> None:
    documented = [(ex, key, seed) for ex, key, seed, _ in CONTRACT if key.split(".")[0] != "risk" or seed]
    delivered = [(ex, key) for ex, key, seed in documented if seed <= _seed_route(ex, key)]
    assert len(documented) == 23
    assert len(delivered) == 13
    assert (exchanges.TRADING.name, "signal.BTCUSDT.uuid-1234") not in delivered


@pytest.mark.parametrize(("exchange", "key", "seed", "added"), CONTRACT, ids=[c[1] for c in CONTRACT])
def test_documented_key_reaches_documented_queues_and_only_the_documented_additions(
    exchange: str, key: str, seed: set[str], added: set[str]
) -> None:
    assert route(exchange, key) == seed | added


@pytest.mark.parametrize(("exchange", "key", "unrouted"), UNROUTABLE, ids=[u[1] for u in UNROUTABLE])
def test_key_no_binding_matches_is_kept_in_the_unrouted_queue(exchange: str, key: str, unrouted: str) -> None:
    assert route(exchange, key) == {unrouted}


@pytest.mark.parametrize("interval", CANDLE_INTERVALS)
def test_market_data_takes_candles_of_every_interval_and_never_orderbook_or_trades(interval: str) -> None:
    assert "market_data" in route("mastertrade.market", f"market.data.BTCUSDT.{interval}")
    for key in ("market.data.orderbook.BTCUSDT", "market.data.trade.BTCUSDT"):
        assert "market_data" not in route("mastertrade.market", key)


def test_backtest_signal_never_reaches_trading_signals() -> None:
    for strategy in ("uuid-5678", "BTCUSDT", "backtest"):
        assert route("mastertrade.trading", f"signal.backtest.{strategy}") == {"backtest_signals"}


def test_every_dead_letter_routing_key_reaches_a_declared_queue() -> None:
    for queue in MASTERTRADE.queues:
        args = queue.queue_arguments or {}
        if "x-dead-letter-exchange" in args:
            target = route(args["x-dead-letter-exchange"], args["x-dead-letter-routing-key"])
            assert target == {args["x-dead-letter-routing-key"]}, queue.name
            assert args["x-dead-letter-routing-key"] in QUEUES_BY_NAME


def test_every_stage_queue_has_a_dead_letter_queue_and_a_pool() -> None:
    for queue in STAGE_QUEUES:
        assert MASTERTRADE.dead_letter_prefix + queue.name in QUEUES_BY_NAME
        assert queue.name in POOLS


def test_every_topic_exchange_has_an_alternate_exchange_policy_that_ends_in_a_queue() -> None:
    by_exchange = {p.target: p for p in MASTERTRADE.policies if p.apply_to == "exchanges"}
    for exchange in MASTERTRADE.exchanges:
        if exchange.type in {"topic", "direct"}:
            policy = by_exchange[exchange.name]
            assert policy.definition == {"alternate-exchange": MASTERTRADE.alternate_exchanges[exchange.name]}
            reached = route(exchange.name, "no.binding.takes.this.key")
            assert len(reached) == 1 and next(iter(reached)).startswith("unrouted."), exchange.name


@pytest.mark.parametrize("topology", [MASTERTRADE, routing.build("letrade")], ids=lambda t: t.name)
def test_exchanges_are_declared_as_the_seed_declares_them_and_policies_never_overlap(
    topology: routing.Topology,
) -> None:
    """No exchange argument (a seed service's plain declaration must be equivalent); each policy's anchored
    pattern matches its one object and no other object of the bus, of its own kind."""
    assert all(not e.arguments for e in topology.exchanges)
    names = {"queues": [q.name for q in topology.queues], "exchanges": [e.name for e in topology.exchanges]}
    for policy in topology.policies:
        matched = [n for n in names[policy.apply_to] if re.search(policy.pattern, n)]
        assert matched == [policy.target], policy.name
    targets = [(p.apply_to, p.target) for p in topology.policies]
    assert len(targets) == len(set(targets))


def test_a_policy_for_an_object_the_topology_lacks_or_a_second_policy_is_refused() -> None:
    stray = routing.Policy(
        "tradebus-x", "no.such.exchange", {"alternate-exchange": "x"}, apply_to="exchanges"
    )
    with pytest.raises(ValueError, match="applies to no exchange"):
        dataclasses.replace(MASTERTRADE, policies=(*MASTERTRADE.policies, stray))
    twice = dataclasses.replace(MASTERTRADE.policies[0], name="tradebus-again")
    with pytest.raises(ValueError, match="two policies"):
        dataclasses.replace(MASTERTRADE, policies=(*MASTERTRADE.policies, twice))


def test_every_queue_and_exchange_is_durable() -> None:
    assert all(q.durable and not q.auto_delete for q in MASTERTRADE.queues)
    assert all(e.durable and not e.auto_delete for e in MASTERTRADE.exchanges)


def test_seed_pool_profiles_match_the_consumer_table() -> None:
    table = {
        "strategy_market_data": (5, 10),
        "sentiment_data": (2, 5),
        "order_requests": (3, 1),
        "trading_signals": (3, 5),
        "order_updates": (2, 10),
    }
    for queue, (consumers, prefetch) in table.items():
        assert (POOLS[queue].concurrency, POOLS[queue].prefetch_multiplier) == (consumers, prefetch)
    assert {"order_requests", "trading_signals"} <= MASTERTRADE.critical_queues


def test_seed_throughput_table_consumer_totals_hold_for_the_seed_queues() -> None:
    def total(exchange: str, exclude: set[str]) -> int:
        names = {
            q.name for q in STAGE_QUEUES if any(b.exchange.name.startswith(exchange) for b in q.bindings)
        }
        return sum(POOLS[n].concurrency for n in names - exclude)

    added = {
        "alert_whale_alerts",
        "backtest_signals",
        "strategy_order_updates",
        "monitoring_order_updates",
        "alert_risk_events",
    }
    assert total("mastertrade.market", added) == 15
    assert total("mastertrade.trading", added) == 3
    assert total("mastertrade.orders", added) == 5
    assert total("mastertrade.risk", added) == 3
    assert total("mastertrade.system", added) == 2


def test_unrouted_queues_refuse_publishes_past_their_bound_except_the_one_the_broker_dead_letters_into() -> (
    None
):
    for queue in MASTERTRADE.unrouted_queues:
        args = queue.queue_arguments or {}
        if queue.name == "unrouted.dlx":
            assert args == {}
        else:
            assert args == {"x-max-length": 100_000, "x-overflow": "reject-publish"}, queue.name


def _live_policy(
    pattern: str, apply_to: str, priority: int, definition: dict[str, object]
) -> dict[str, object]:
    return {
        "name": "ops",
        "pattern": pattern,
        "apply-to": apply_to,
        "priority": priority,
        "definition": definition,
    }


def test_only_another_policy_that_would_win_on_the_same_kind_of_object_without_our_keys_is_a_difference() -> (
    None
):
    limit = {"max-length": 1}
    ours = {"alternate-exchange": "mastertrade.market.unrouted"}
    market = r"^mastertrade\.market$"
    assert policy_diff(MASTERTRADE, [_live_policy(market, "queues", 99, limit)]) == []  # queues only
    assert policy_diff(MASTERTRADE, [_live_policy(market, "exchanges", 9, limit)]) == []  # below ours
    assert (
        policy_diff(MASTERTRADE, [_live_policy(market, "all", 50, {**limit, **ours})]) == []
    )  # repeats ours
    assert policy_diff(MASTERTRADE, [_live_policy(market, "exchanges", 10, limit)]) == [
        (
            "exchange mastertrade.market",
            "alternate-exchange",
            "(unset) (policy ops, priority 10)",
            "mastertrade.market.unrouted",
        )
    ]
    # Our own policies, found by name, are updated by declaring: not differences, whatever they hold now.
    stale = [{"name": p.name, **p.as_json(), "definition": {}} for p in MASTERTRADE.policies]
    assert policy_diff(MASTERTRADE, stale) == []
