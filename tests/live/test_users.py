"""Least privilege: one RabbitMQ user per service, derived from the topology, applied to a real broker."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.fixtures.users import ServiceUsers
from tests.live.test_cli import run
from tests.support.bus import MASTERTRADE, SETTINGS
from tests.support.wait import wait_until
from tradebus.application import TradebusCelery, create_app
from tradebus.errors import PublishFailed
from tradebus.mastertrade.samples import order_request, signal
from tradebus.ops.cli import ExitCode, main
from tradebus.ops.users import UserDefinitions, accounts, hash_password, key_pattern
from tradebus.publisher import send
from workers.launch import start_pool, wait_for_consumers

POOLS = MASTERTRADE.pools

ACCOUNTS = {a.service: a for a in accounts()}


def may_publish(service: str, exchange: str, key: str) -> bool:
    """What RabbitMQ will allow, computed from the account: write on the exchange and a matching key."""
    account = ACCOUNTS[service]
    if not re.fullmatch(account.write, exchange):
        return False
    topics = account.topic_permissions()
    return exchange not in topics or bool(re.fullmatch(topics[exchange], key))


def test_every_pool_runs_as_one_service_that_reads_its_queue_and_no_other_service_does() -> None:
    readers = {
        pool: [
            s for s, a in ACCOUNTS.items() if not a.administrator and re.fullmatch(a.read, POOLS[pool].queue)
        ]
        for pool in POOLS
    }
    assert all(len(services) == 1 for services in readers.values()), readers
    assert readers["order_requests"] == ["execution"]
    assert readers["trading_signals"] == ["risk"]


def test_strategy_may_publish_signals_and_risk_checks_but_never_order_requests() -> None:
    assert may_publish("strategy", "mastertrade.trading", "signal.BTCUSDT.s1")
    assert may_publish("strategy", "mastertrade.trading", "signal.backtest.s1")
    assert may_publish("strategy", "mastertrade.risk", "risk.check.s1")
    assert not may_publish("strategy", "mastertrade.orders", "order.request.BTCUSDT")
    assert not may_publish("strategy", "mastertrade.trading", "order.request.BTCUSDT")
    assert not may_publish("strategy", "mastertrade.risk", "risk.breach.drawdown")
    assert may_publish("risk", "mastertrade.orders", "order.request.BTCUSDT")
    assert not may_publish("risk", "mastertrade.orders", "order.update.filled.o-1")
    assert may_publish("execution", "mastertrade.orders", "order.update.filled.o-1")


def test_a_service_reports_only_its_own_health_and_configuration_changes_are_the_admins() -> None:
    assert may_publish("strategy", "mastertrade.system", "system.health.strategy")
    assert not may_publish("strategy", "mastertrade.system", "system.health.risk")
    assert not may_publish("strategy", "mastertrade.system", "system.config.api_key_update")
    assert key_pattern("system_health", "risk") == r"system\.health\.risk"


def test_no_service_may_configure_the_topology_and_only_admin_may_do_everything() -> None:
    names = [e.name for e in MASTERTRADE.exchanges] + [q.name for q in MASTERTRADE.queues]
    for service, account in ACCOUNTS.items():
        declarable = [n for n in names if re.fullmatch(account.configure, n)]
        assert declarable == ([] if service != "admin" else names), service


def test_passwords_are_exported_only_as_rabbitmq_salted_sha256_hashes() -> None:
    users = UserDefinitions("/", "tradebus-")
    passwords = {a.service: f"pw-{a.service}" for a in users.accounts}
    exported = users.as_json(passwords)
    text = json.dumps(exported)
    assert not any(p in text for p in passwords.values())
    strategy = next(u for u in exported["users"] if u["name"] == "tradebus-strategy")
    salt = __import__("base64").b64decode(strategy["password_hash"])[:4]
    assert strategy["password_hash"] == hash_password("pw-strategy", salt)


def test_export_with_users_names_every_missing_password_and_exits_with_usage() -> None:
    result = run("topology", "export", "--users", env={"TRADEBUS_USER_PASSWORD_RISK": "x"})
    assert result.returncode == ExitCode.USAGE
    assert "TRADEBUS_USER_PASSWORD_STRATEGY" in result.stderr
    assert "TRADEBUS_USER_PASSWORD_RISK" not in result.stderr


def test_export_with_users_writes_a_private_file_holding_topology_and_users(tmp_path: Path) -> None:
    env = {f"TRADEBUS_USER_PASSWORD_{a.service.upper()}": "secret-" + a.service for a in accounts()}
    out = tmp_path / "definitions.json"
    result = run("topology", "export", "--users", "--vhost", "/", "--output", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    data = json.loads(out.read_text())
    topology = json.loads(CliRunner().invoke(main, ["topology", "export", "--vhost", "/"]).output)
    assert {k: data[k] for k in topology} == topology
    assert {u["name"] for u in data["users"]} == {f"tradebus-{a.service}" for a in accounts()}
    assert "secret-" not in out.read_text()


# --- on the broker -------------------------------------------------------------------------------------


@contextmanager
def service_app(url: str) -> Iterator[TradebusCelery]:
    """A MasterTrade app publishing with confirms as one service's user."""
    app = create_app(MASTERTRADE, SETTINGS.with_(broker_url=url), main="service")
    app.conf.broker_transport_options = {"confirm_publish": True}
    try:
        yield app
    finally:
        app.close()


def _take(users: ServiceUsers, queue: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Every message waiting on ``queue`` (read as the admin): (body, headers)."""
    with users.vhost.connection() as conn:
        channel = conn.channel()
        taken = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            body = message.body if isinstance(message.body, bytes) else message.body.encode()
            taken.append((body, dict(message.headers or {})))
    return taken


@pytest.mark.broker
def test_strategy_user_publishes_a_signal_and_is_refused_an_order_request(
    service_users: ServiceUsers,
) -> None:
    with service_app(service_users.url("strategy")) as app:
        live = signal("s1")
        send(app, live.model_dump_json().encode(), exchange=live.exchange, routing_key="signal.BTCUSDT.s1")
        assert [json.loads(body)["strategy_id"] for body, _ in _take(service_users, "trading_signals")] == [
            "s1"
        ]
        order = order_request().model_dump_json().encode()
        with pytest.raises(PublishFailed, match="ACCESS_REFUSED"):
            send(app, order, exchange="mastertrade.orders", routing_key="order.request.BTCUSDT")
        with pytest.raises(PublishFailed, match="ACCESS_REFUSED"):
            send(app, order, exchange="mastertrade.trading", routing_key="order.request.BTCUSDT")
    assert _take(service_users, "order_requests") == []
    assert _take(service_users, "unrouted.trading") == []


@pytest.mark.broker
def test_a_service_user_cannot_delete_or_redeclare_the_topology(service_users: ServiceUsers) -> None:
    from amqp.exceptions import AccessRefused
    from kombu import Connection

    with Connection(service_users.url("execution")) as conn:
        with pytest.raises(AccessRefused):
            conn.channel().queue_delete("order_requests")
        with pytest.raises(AccessRefused):
            MASTERTRADE.queues_by_name["order_requests"](conn.channel()).declare()


@pytest.mark.broker
@pytest.mark.slow
def test_a_least_privilege_worker_consumes_its_queue_and_dead_letters_what_it_cannot_take(
    service_users: ServiceUsers, tmp_path: Path
) -> None:
    import redis

    prefix = f"{SETTINGS.redis_prefix}-users-{uuid.uuid4().hex[:6]}"
    env = {
        "TRADEBUS_BROKER_URL": service_users.url("execution"),
        "TRADEBUS_DECLARE_TOPOLOGY": "0",
        "TRADEBUS_REDIS_PREFIX": prefix,
    }
    worker = start_pool("order_requests", tmp_path, ["-c", "1"], env=env)
    client = redis.Redis.from_url(SETTINGS.redis_url)
    try:
        with service_users.vhost.connection() as conn:
            assert not wait_for_consumers(conn, ["order_requests"], 60, [worker]), worker.log.read_text()[
                -3000:
            ]
        route = {"exchange": "mastertrade.orders", "routing_key": "order.request.BTCUSDT"}
        with service_app(service_users.url("risk")) as app:
            good = send(app, order_request("req-lp").model_dump_json().encode(), **route)
            send(app, b"{not json", **route)
        ran = wait_until(lambda: client.lrange(f"{prefix}:received:order_requests", 0, -1), timeout=30)
        assert [json.loads(e)["id"] for e in ran] == [good], worker.log.read_text()[-3000:]
        dead = wait_until(lambda: _take(service_users, "dlq.order_requests"), timeout=30)
        assert [(body, headers["x-tradebus-reason"]) for body, headers in dead] == [
            (b"{not json", "invalid_json")
        ]
        log = worker.log.read_text()
        assert "ACCESS_REFUSED" not in log, log[-3000:]
        assert "TRADEBUS_DECLARE_TOPOLOGY=0" in log
    finally:
        worker.stop()
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


@pytest.mark.broker
def test_a_service_retries_into_its_own_queues_only_and_never_through_the_default_exchange(
    service_users: ServiceUsers,
) -> None:
    body = order_request().model_dump_json().encode()
    with service_app(service_users.url("execution")) as app:
        send(app, body, exchange="mastertrade.retry", routing_key="order_requests")
        with pytest.raises(PublishFailed, match="ACCESS_REFUSED"):
            send(app, body, exchange="mastertrade.retry", routing_key="trading_signals")
    with service_app(service_users.url("strategy")) as app:
        with pytest.raises(PublishFailed, match="ACCESS_REFUSED"):
            send(app, body, exchange="", routing_key="order_requests")
        with pytest.raises(PublishFailed, match="ACCESS_REFUSED"):
            send(app, body, exchange="mastertrade.retry", routing_key="order_requests")
    assert len(_take(service_users, "order_requests")) == 1
    assert _take(service_users, "trading_signals") == []


@pytest.mark.broker
@pytest.mark.slow
def test_a_worker_whose_user_may_not_declare_fails_on_access_refused_and_consumes_nothing(
    service_users: ServiceUsers, tmp_path: Path
) -> None:
    url = service_users.url("execution")
    worker = start_pool("order_requests", tmp_path, ["-c", "1"], env={"TRADEBUS_BROKER_URL": url})
    try:
        with service_app(service_users.url("risk")) as app:
            send(app, order_request("req-refused").model_dump_json().encode(), exchange="mastertrade.orders",
                 routing_key="order.request.BTCUSDT")  # fmt: skip
        refused = wait_until(lambda: "ACCESS_REFUSED" in worker.log.read_text(), timeout=60)
        assert refused, worker.log.read_text()[-3000:]
        assert len(_take(service_users, "order_requests")) == 1  # still there: nothing consumed it
    finally:
        worker.stop()
