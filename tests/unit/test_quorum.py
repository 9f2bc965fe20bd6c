"""The quorum topology as data: which queues are replicated, their arguments and policies, the retry delay
queues, the users' grants, the settings, and the stage's delivery count (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

import routing
from routing.mastertrade.quorum import REPLICATED, RETRY_DELAYS_SECONDS
from routing.quorum import BROKER_DELIVERY_LIMIT, DEAD_LETTER_DELIVERY_LIMIT
from tradebus.ops.migrate import plan
from tradebus.redeliveries import MAX_REDELIVERIES
from tradebus.retries import SEED_POLICY
from tradebus.settings import Settings
from tradebus.topology import definitions, queue_kind

CLASSIC = routing.build("mastertrade")
QUORUM = routing.build("mastertrade", queue_type="quorum")
SHARDED_QUORUM = routing.build("mastertrade", market_data_shards=4, queue_type="quorum")


def test_classic_stays_the_default_and_builds_no_quorum_queue() -> None:
    assert Settings.from_env({}).queue_type == "classic"
    assert Settings.from_env({"TRADEBUS_QUEUE_TYPE": "quorum"}).queue_type == "quorum"
    assert CLASSIC.quorum_queues == frozenset() and CLASSIC.retry_delay is None
    with pytest.raises(Exception, match="TRADEBUS_QUEUE_TYPE"):
        Settings.from_env({"TRADEBUS_QUEUE_TYPE": "mirrored"})


def test_the_critical_queues_their_dead_letters_and_the_archive_are_quorum_queues_on_three_nodes() -> None:
    critical = {"trading_signals", "order_requests", "risk_checks", "alert_risk_events"}
    copies = {"order_updates", "strategy_order_updates", "monitoring_order_updates"}
    assert critical | copies == REPLICATED
    assert CLASSIC.critical_queues <= REPLICATED  # what docs/reliability.md calls critical
    delays = {q.name for q in QUORUM.delay_queues}
    assert QUORUM.quorum_queues == REPLICATED | {f"dlq.{q}" for q in REPLICATED} | {"dlq.archive"} | delays
    for name in QUORUM.quorum_queues:
        arguments = QUORUM.queues_by_name[name].queue_arguments
        assert arguments["x-queue-type"] == "quorum" and arguments["x-quorum-initial-group-size"] == 3
    # Everything else keeps the classic topology's arguments exactly (the seed's, for seed queues).
    for queue in CLASSIC.queues:
        if queue.name not in QUORUM.quorum_queues:
            assert QUORUM.queues_by_name[queue.name].queue_arguments == queue.queue_arguments
        else:
            wanted = {**queue.queue_arguments, "x-queue-type": "quorum", "x-quorum-initial-group-size": 3}
            assert QUORUM.queues_by_name[queue.name].queue_arguments == wanted
    assert not QUORUM.market_data_queues & QUORUM.quorum_queues


def test_each_quorum_queue_has_one_policy_pushing_back_with_at_least_once_dead_letters() -> None:
    by_target = {p.target: p for p in QUORUM.policies if p.apply_to == "queues"}
    for name in REPLICATED:
        policy = by_target[name]
        assert policy.name == f"tradebus-quorum.{name}"
        assert policy.definition["overflow"] == "reject-publish"
        assert policy.definition["dead-letter-strategy"] == "at-least-once"
        assert policy.definition["delivery-limit"] == BROKER_DELIVERY_LIMIT
        declared = "x-dead-letter-exchange" in QUORUM.queues_by_name[name].queue_arguments
        assert declared != ("dead-letter-exchange" in policy.definition), name
    archive = by_target["dlq.trading_signals"].definition
    assert archive["dead-letter-routing-key"] == "dlq.archive"
    # A DLQ is read by taking and giving back (tradebus dlq list): in effect no delivery limit on any (an
    # explicit one: RabbitMQ 4 would give each 20).
    dead_letters = [p for p in QUORUM.policies if p.target.startswith("dlq.") and p.apply_to == "queues"]
    quorum_dead_letters = QUORUM.quorum_queues & {q.name for q in QUORUM.dead_letter_queues}
    assert {p.target for p in dead_letters} == quorum_dead_letters
    assert {p.definition["delivery-limit"] for p in dead_letters} == {DEAD_LETTER_DELIVERY_LIMIT}


def test_the_brokers_delivery_limit_is_one_above_the_stages_so_the_stage_says_why_first() -> None:
    assert BROKER_DELIVERY_LIMIT == MAX_REDELIVERIES + 1


@pytest.mark.parametrize("topology", [QUORUM, SHARDED_QUORUM], ids=["unsharded", "4-shards"])
def test_retries_wait_in_one_delay_queue_per_seed_delay_and_come_back_to_their_queue(
    topology: routing.Topology,
) -> None:
    """Every worker queue, market-data shards (``strategy_market_data.0``: a name with a dot) included."""
    assert SEED_POLICY.delays == RETRY_DELAYS_SECONDS
    names = {q.name for q in topology.worker_queues}
    assert topology is QUORUM or {"strategy_market_data.0", "strategy_market_data.3"} <= names
    for queue in topology.worker_queues:
        for delay in SEED_POLICY.delays:
            route = topology.retry_delay_route(queue.name, delay)
            assert route is not None, f"{queue.name}: no delay queue holds its {delay}s retry"
            exchange, key = route
            (held,) = topology.route(exchange, key)
            assert queue_kind(topology, held) == "delay"
            ttl = topology.queues_by_name[held].queue_arguments["x-message-ttl"]
            assert ttl == delay * 1000
            # Dead-lettered with its own key to mastertrade.retry: its queue and nothing else.
            assert topology.route(
                topology.queues_by_name[held].queue_arguments["x-dead-letter-exchange"], key
            ) == {queue.name}
    assert QUORUM.retry_delay_route("order_requests", 7.0) is None  # no such delay queue: Celery's countdown
    assert CLASSIC.retry_delay_route("order_requests", 5.0) is None


def test_workers_may_publish_their_retries_to_the_delay_exchange_for_their_own_queues_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tradebus.ops import users

    monkeypatch.setattr(users, "_mastertrade_app", lambda *_: type("App", (), {"topology": QUORUM})())
    execution = next(a for a in users.accounts({"order_requests": "execution"}) if a.service == "execution")
    assert "mastertrade\\.retry\\.delay" in execution.write
    assert execution.topic_permissions()["mastertrade.retry.delay"] == r"^(order_requests\.[^.]+)$"


def test_export_carries_the_queue_type_and_a_migration_plan_lists_what_changes() -> None:
    exported = {q["name"]: q for q in definitions(QUORUM)["queues"]}
    assert exported["order_requests"]["arguments"]["x-queue-type"] == "quorum"
    live = [{"name": q.name, "type": "classic"} for q in CLASSIC.queues]
    assert {q.name for q, _ in plan(QUORUM, live)} == QUORUM.quorum_queues - {
        q.name for q in QUORUM.delay_queues
    }
    assert plan(CLASSIC, live) == []


def test_letrade_keeps_its_priority_inboxes_classic_and_replicates_its_dead_letters() -> None:
    letrade = routing.build("letrade", queue_type="quorum")
    inboxes = {q.name for q in letrade.stage_queues}
    assert not inboxes & letrade.quorum_queues
    assert {q.name for q in letrade.dead_letter_queues} == letrade.quorum_queues
    assert all("x-max-priority" in q.queue_arguments for q in letrade.stage_queues)
    # Each quorum DLQ with an explicit, in effect unlimited, delivery limit (RabbitMQ 4's default is 20).
    limits = {p.target: p.definition for p in letrade.policies if p.apply_to == "queues"}
    assert limits == {q: {"delivery-limit": DEAD_LETTER_DELIVERY_LIMIT} for q in letrade.quorum_queues}
    assert not [p for p in routing.build("letrade").policies if p.apply_to == "queues"]


@pytest.mark.parametrize(("count", "over"), [(None, False), (5, False), (6, True)])
def test_a_stage_counts_redeliveries_from_the_quorum_queues_header(
    count: int | None, over: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a quorum queue the broker's ``x-delivery-count`` is the count (no Redis round trip); without it
    the Redis count applies (here unreachable: not over)."""
    from tasks.execution import execute_order

    monkeypatch.setattr(execute_order.app, "topology", QUORUM)
    headers = {} if count is None else {"x-delivery-count": count}
    execute_order.push_request(id="m-1", retries=0, delivery_info={"redelivered": True}, headers=headers)
    try:
        assert execute_order.over_redelivery_limit() is over
    finally:
        execute_order.pop_request()


def test_on_a_classic_queue_the_delivery_count_header_is_the_publishers_and_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing but the publisher sets ``x-delivery-count`` on a classic queue: a huge one does not dead-letter
    (and a 0 could not turn the Redis count off); the Redis count is used (here unreachable: not over)."""
    from tasks.execution import execute_order
    from tradebus import redeliveries

    monkeypatch.setattr(execute_order.app, "topology", CLASSIC)
    counted: list[bool] = []
    real = redeliveries.over_limit
    monkeypatch.setattr(redeliveries, "over_limit", lambda *a, **k: counted.append(a[-1]) or real(*a, **k))
    execute_order.push_request(
        id="m-1", retries=0, delivery_info={"redelivered": True}, headers={"x-delivery-count": 99}
    )
    try:
        assert execute_order.over_redelivery_limit() is False
    finally:
        execute_order.pop_request()
    assert counted == [False]
    assert redeliveries.over_limit("q", "m-1:0", True, {"x-delivery-count": 99}, quorum=True)


def test_moving_messages_leaves_the_source_queues_delivery_count_behind() -> None:
    from tradebus.ops.migrate import _without_delivery_count

    properties = {"message_id": "m", "application_headers": {"x-delivery-count": 3, "task": "t"}}
    assert _without_delivery_count(properties) == {"message_id": "m", "application_headers": {"task": "t"}}
    assert properties["application_headers"] == {"x-delivery-count": 3, "task": "t"}  # not changed in place
    assert _without_delivery_count({"message_id": "m"}) == {"message_id": "m"}


def test_the_committed_quorum_definitions_are_what_the_export_produces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from tradebus.ops.cli import main

    monkeypatch.setenv("TRADEBUS_QUEUE_TYPE", "quorum")
    exported = CliRunner().invoke(main, ["topology", "export", "--vhost", "/"])
    assert exported.exit_code == 0
    committed = (Path(__file__).resolve().parents[2] / "deploy/rabbitmq/topology-quorum.json").read_text()
    assert committed == exported.output, (
        "regenerate: TRADEBUS_QUEUE_TYPE=quorum tradebus topology export --vhost / "
        "> deploy/rabbitmq/topology-quorum.json"
    )
