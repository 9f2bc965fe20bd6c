"""Letrade_v1 as data and rules: its routing, envelope, subscriptions, capital rules and strategy.
No broker needed; the live behaviour is in test_letrade_live.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from celery import _state
from click.testing import CliRunner, Result
from kombu.message import Message

from routing import PoolProfile, letrade
from routing.model import PREFORK, THREADS
from tests.support.bus import LETRADE, MASTERTRADE
from tests.support.letrade_samples import CONSUMERS, PAYLOADS, body
from tradebus import consumer
from tradebus.codec import MAX_MESSAGE_BYTES
from tradebus.consumer import stage_for_key
from tradebus.errors import (
    BadSubscription,
    InvalidJSON,
    MessageTooLarge,
    Misrouted,
    SchemaViolation,
    UnknownMessageType,
)
from tradebus.headers import ORIGINAL_ROUTING_KEY
from tradebus.letrade import capital
from tradebus.letrade import strategy as rule
from tradebus.letrade.bus import qualify
from tradebus.letrade.messages import MarketDataResponseMessage, build, class_for_key, encode, parse
from tradebus.letrade.paper import Account, Position
from tradebus.letrade.payloads import MAX_CANDLES
from tradebus.letrade.subscriptions import compile_pattern
from tradebus.ops.cli import ExitCode, main
from tradebus.ops.report import topology_tables
from workers.profiles import pool_type


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_every_documented_key_reaches_the_services_that_consume_it(name: str) -> None:
    key, _ = PAYLOADS[name]
    assert LETRADE.route(letrade.ROUTES[name].exchange, key) == CONSUMERS[name]


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_the_seeds_example_of_every_message_validates_and_computes_its_own_key(name: str) -> None:
    key, _ = PAYLOADS[name]
    message = parse(json.dumps(body(name)), key)
    assert message.routing_key == key
    assert message.exchange == letrade.ROUTES[name].exchange
    assert message.message_id == "550e8400-e29b-41d4-a716-446655440000"


def test_timestamps_go_out_as_the_seed_writes_them() -> None:
    message = parse(json.dumps(body("trade_executed")), "events.trade_executed")
    sent = json.loads(encode(message))
    assert sent["timestamp"] == "2024-01-01T10:00:00.000Z"
    assert sent["payload"]["timestamp"] == "2024-01-01T10:00:00.000Z"


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_a_dead_letter_key_is_the_original_key_plus_dead_and_reaches_its_dead_letter_queue(name: str) -> None:
    key, _ = PAYLOADS[name]
    exchange, dead_key = letrade.dead_letter_route(f"letrade.{name}", key)
    assert (exchange, dead_key) == ("letrade.dlq", f"{key}.dead")
    expected = {letrade.ROUTES[name].dead_letter_queue}
    assert LETRADE.route(exchange, dead_key) == expected
    # What RabbitMQ dead-letters itself (a rejection) keeps its key, and lands in the same queue.
    assert LETRADE.route(exchange, key) == expected


def test_a_key_no_binding_takes_is_kept_in_letrade_unrouted() -> None:
    for exchange in ("letrade.commands", "letrade.events", "letrade.requests", "letrade.dlq"):
        assert LETRADE.route(exchange, "commands.launch_rocket") == {"letrade.unrouted"}


def test_trade_commands_outrank_market_data_in_every_inbox() -> None:
    assert letrade.ROUTES["execute_trade"].priority > letrade.ROUTES["market_data"].priority
    assert letrade.ROUTES["cancel_order"].priority == letrade.PRIORITY_HIGH
    for queue in LETRADE.worker_queues:
        assert queue.queue_arguments["x-max-priority"] >= letrade.PRIORITY_HIGH


def test_pools_that_receive_trade_messages_prefetch_one_so_priority_holds() -> None:
    assert set(LETRADE.pools) == {q.name for q in LETRADE.worker_queues}
    for name in ("letrade.exchange_connector", "letrade.capital_manager", "letrade.strategy"):
        assert LETRADE.pools[name].prefetch_multiplier == 1
        assert name in LETRADE.critical_queues


def test_the_exchange_connector_runs_two_threads_and_every_other_pool_processes() -> None:
    connector = LETRADE.pools[letrade.EXCHANGE_CONNECTOR.name]
    assert (connector.pool, connector.concurrency, connector.prefetch_multiplier) == (THREADS, 2, 1)
    others = [p for p in (*LETRADE.pools.values(), *MASTERTRADE.pools.values()) if p is not connector]
    assert {p.pool for p in others} == {PREFORK}
    # What a worker runs (workers/profiled.py): the queues' shared type, prefork when they differ.
    assert pool_type(LETRADE, [connector.name]) == THREADS
    assert pool_type(LETRADE, [letrade.CAPITAL_MANAGER.name]) == PREFORK
    assert pool_type(LETRADE, [connector.name, letrade.CAPITAL_MANAGER.name]) == PREFORK
    assert pool_type(LETRADE, [connector.name, "not.a.pool"]) == PREFORK
    assert pool_type(LETRADE, []) is None
    assert "2 threads x prefetch 1" in topology_tables(LETRADE, {})  # tradebus topology show
    with pytest.raises(ValueError, match="prefork, or threads and not batched"):
        PoolProfile("q", concurrency=1, prefetch_multiplier=1, pool="gevent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefork, or threads and not batched"):  # batches settle off-loop
        PoolProfile("q", concurrency=1, prefetch_multiplier=10, batch_size=5, batch_ms=25, pool=THREADS)


def test_market_data_key_uses_the_pair_without_its_slash_in_lower_case() -> None:
    assert parse(json.dumps(body("market_data")), "market_data.binance.btcusdt").routing_key == (
        "market_data.binance.btcusdt"
    )


def test_a_message_whose_payload_routes_elsewhere_than_its_key_is_refused() -> None:
    with pytest.raises(Misrouted):
        parse(json.dumps(body("market_data")), "market_data.kraken.btcusdt")


def test_invalid_payload_names_the_field() -> None:
    bad = body("execute_trade")
    bad["payload"] = {**bad["payload"], "amount": -1}
    with pytest.raises(SchemaViolation, match=r"payload\.amount"):
        parse(json.dumps(bad), "commands.execute_trade")


def test_envelope_without_source_is_refused() -> None:
    bad = body("cancel_order")
    del bad["source"]
    with pytest.raises(SchemaViolation, match="source"):
        parse(json.dumps(bad), "commands.cancel_order")


def test_a_limit_order_without_a_price_is_refused() -> None:
    bad = body("execute_trade")
    bad["payload"] = {**bad["payload"], "type": "limit", "price": None}
    with pytest.raises(SchemaViolation, match="limit order needs a price"):
        parse(json.dumps(bad), "commands.execute_trade")


def test_unknown_key_and_broken_json_get_their_own_errors() -> None:
    with pytest.raises(UnknownMessageType):
        class_for_key("commands.launch_rocket")
    with pytest.raises(InvalidJSON):
        parse(b"{not json", "commands.cancel_order")


def test_messages_over_128_kb_are_refused_both_ways() -> None:
    candle = PAYLOADS["market_data_response"][1]["data"][0]
    payload = {**PAYLOADS["market_data_response"][1], "data": [candle] * 1200}
    too_big = build(MarketDataResponseMessage, payload, "market_data_service")
    assert len(too_big.model_dump_json()) > MAX_MESSAGE_BYTES
    with pytest.raises(MessageTooLarge, match=r"limit is 131072"):
        encode(too_big)
    with pytest.raises(MessageTooLarge):
        parse(b" " * (MAX_MESSAGE_BYTES + 1), "commands.cancel_order")


def test_the_most_candles_a_request_may_ask_for_fit_in_one_message() -> None:
    candle = {**PAYLOADS["market_data_response"][1]["data"][0], "close": 50050.123456, "volume": 1234.5678}
    payload = {**PAYLOADS["market_data_response"][1], "data": [candle] * MAX_CANDLES}
    assert len(encode(build(MarketDataResponseMessage, payload, "market_data_service"))) <= MAX_MESSAGE_BYTES


def test_the_seeds_short_key_is_qualified_by_its_exchange() -> None:
    assert qualify("letrade.commands", "execute_trade") == "commands.execute_trade"
    assert qualify("letrade.events", "trade_executed") == "events.trade_executed"
    assert qualify("letrade.commands", "commands.cancel_order") == "commands.cancel_order"


def test_market_data_binance_wildcard_is_bound_as_written() -> None:
    plan = compile_pattern("market_data.binance.*")
    assert plan.bindings == (("letrade.events", "market_data.binance.*"),)
    assert plan.accepts("market_data.binance.ethusdt")


def test_trade_star_is_bound_one_word_wide_and_filtered_within_the_word() -> None:
    plan = compile_pattern("events.trade_*")
    assert plan.bindings == (("letrade.events", "events.*"),)
    assert plan.accepts("events.trade_executed")
    assert not plan.accepts("events.error")


def test_strategy_pattern_follows_the_strategy_header_on_every_exchange() -> None:
    plan = compile_pattern("*.strategy_123.*")
    assert {exchange for exchange, _ in plan.bindings} == {
        "letrade.commands",
        "letrade.events",
        "letrade.requests",
    }
    assert plan.accepts("commands.execute_trade", {"x-letrade-strategy-id": 123})
    assert not plan.accepts("commands.execute_trade", {"x-letrade-strategy-id": 124})
    assert not plan.accepts("events.error", {})


@pytest.mark.parametrize("pattern", ["", "orders.#", "events..x", "events.trade executed"])
def test_a_pattern_that_cannot_match_a_letrade_key_is_refused(pattern: str) -> None:
    with pytest.raises(BadSubscription):
        compile_pattern(pattern)


def _request(**changes: object) -> object:
    from tradebus.letrade.payloads import CapitalAllocationRequest

    data = {**PAYLOADS["capital_allocation_request"][1], **changes}
    return CapitalAllocationRequest.model_validate(data)


def test_the_seeds_allocation_request_is_approved_with_every_documented_field() -> None:
    answer = capital.allocate(_request(), "req_123", Account(10_000.0), {})  # type: ignore[arg-type]
    assert (answer.request_id, answer.result, answer.approved_quantity) == ("req_123", "approved", 0.01)
    assert answer.suggested_stop_loss == 49000.0 and answer.suggested_take_profit == 52000.0
    assert answer.portfolio_impact.position_size_percent == pytest.approx(5.0)
    assert answer.portfolio_impact.available_capital_after == pytest.approx(10_000 - 500 * 1.001)
    assert answer.risk_level == "low" and answer.reasons == []


def test_a_buy_larger_than_a_tenth_of_equity_is_reduced_and_says_why() -> None:
    answer = capital.allocate(_request(quantity=1.0), "r", Account(10_000.0), {})  # type: ignore[arg-type]
    assert answer.result == "reduced"
    assert answer.approved_quantity == pytest.approx(1_000 / 50_000)
    assert answer.reasons


def test_a_buy_without_cash_and_a_sell_without_position_are_rejected() -> None:
    broke = capital.allocate(_request(), "r", Account(0.0), {})  # type: ignore[arg-type]
    assert (broke.result, broke.approved_quantity, broke.reasons) == (
        "rejected",
        0.0,
        ["insufficient capital"],
    )
    sell = capital.allocate(_request(side="sell", stop_loss=None, take_profit=None), "r", Account(1e4), {})  # type: ignore[arg-type]
    assert sell.result == "rejected" and sell.reasons == ["no position to sell"]


def test_a_sell_is_capped_at_the_position_held() -> None:
    account = Account(0.0, {"BTC/USDT": Position(0.004, 50_000.0)})
    answer = capital.allocate(_request(side="sell", stop_loss=None, take_profit=None), "r", account, {})  # type: ignore[arg-type]
    assert (answer.result, answer.approved_quantity) == ("reduced", 0.004)
    assert answer.suggested_stop_loss > 50_000 > answer.suggested_take_profit


def test_moving_averages_crossing_up_buy_and_crossing_down_sell() -> None:
    flat = [100.0] * rule.LONG_WINDOW
    assert rule.crossover([*flat, 110.0]) == "buy"
    assert rule.crossover([*flat, 90.0]) == "sell"
    assert rule.crossover([*flat, 100.0]) is None
    assert rule.crossover([100.0, 110.0]) is None


def _run(*argv: str, topology: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRADEBUS_TOPOLOGY"}
    if topology is not None:
        env["TRADEBUS_TOPOLOGY"] = topology
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=120)


def test_mastertrade_is_the_profile_when_none_is_chosen_and_an_unknown_one_is_refused() -> None:
    show = ("-c", "from tradebus import app; print(app.topology.name, len(app.topology.worker_queues))")
    assert _run(*show).stdout.split()[0] == "mastertrade"
    assert _run(*show, topology="letrade").stdout.split() == ["letrade", str(len(LETRADE.worker_queues))]
    refused = _run(*show, topology="nasdaq")
    assert refused.returncode != 0 and "choose one of mastertrade, letrade" in refused.stderr


@pytest.fixture
def celery_apps_kept() -> Iterator[None]:
    """Celery's current and default apps as they were before the test.

    ``tradebus`` makes the app it builds Celery's current and default one (and importing the benchmark
    makes its own app current): left so, the task proxies of later tests in this process would look on it.
    """
    current, default = _state.get_current_app(), _state.default_app
    try:
        yield
    finally:
        current.set_current()
        _state.set_default_app(default)


@pytest.mark.usefixtures("celery_apps_kept")
def test_the_cli_routes_shows_and_exports_the_letrade_topology() -> None:
    # In process: this process's default app is MasterTrade's; --topology builds Letrade's for the command.
    def cli(*args: str) -> Result:
        return CliRunner().invoke(main, ["--topology", "letrade", *args])

    routed = cli("route", "letrade.events", "market_data.binance.btcusdt")
    assert routed.exit_code == 0, routed.output
    assert routed.output.splitlines()[-1] == (
        "queues: letrade.exchange_connector, letrade.market_data, letrade.strategy"
    )
    shown = cli("topology", "show")
    assert "tradebus.letrade_strategy.on_allocation" in shown.output
    exported = json.loads(cli("topology", "export", "--vhost", "/").output)
    assert {e["name"] for e in exported["exchanges"]} == {e.name for e in letrade.EXCHANGES}
    assert {p["name"]: p["definition"] for p in exported["policies"]} == {
        f"tradebus-alternate-exchange.{e.name}": {"alternate-exchange": "letrade.unrouted"}
        for e in letrade.EXCHANGES
        if e.name != "letrade.unrouted"
    }
    assert all(e["arguments"] == {} for e in exported["exchanges"])
    assert cli("bench").exit_code == ExitCode.USAGE  # MasterTrade's benchmark, and it says so


def _delivery(exchange: str, routing_key: str, headers: dict[str, object] | None = None) -> Message:
    delivery_info = {"exchange": exchange, "routing_key": routing_key}
    return Message(body=b"{}", delivery_info=delivery_info, headers=headers)


def test_a_retried_message_goes_back_to_the_stage_of_its_original_key_in_a_shared_inbox() -> None:
    # The first stage is also where a key no stage takes falls back to: the retry must not end there.
    stages = [(("commands.execute_trade",), "execute_trade"), (("market_data.*.*",), "track_price")]
    # A retry arrives keyed by its queue's name, through this profile's retry exchange.
    headers = {ORIGINAL_ROUTING_KEY: "market_data.binance.btcusdt"}
    retry = LETRADE.retry.name
    retried = _delivery(retry, "letrade.exchange_connector", headers)
    assert stage_for_key(stages, consumer.original_routing_key(retried, retry)) == "track_price"
    direct = _delivery("letrade.events", "market_data.binance.btcusdt")
    assert stage_for_key(stages, consumer.original_routing_key(direct, retry)) == "track_price"
    # Only a retry may say where it came from: the same header on a direct delivery is ignored.
    forged = _delivery("letrade.commands", "commands.execute_trade", headers)
    assert stage_for_key(stages, consumer.original_routing_key(forged, retry)) == "execute_trade"
    assert stage_for_key(stages, "commands.unknown") == "execute_trade"
