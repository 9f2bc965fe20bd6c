"""Only operators command workers: a service's user cannot stop, starve or slow the order executor.

The exported least-privilege users on a real broker, each pool a ``celery worker`` process running as its
own service's user (tradebus/ops/remote_control.py, docs/security.md "Remote control").
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from amqp.exceptions import AccessRefused
from celery.utils.nodenames import host_format
from kombu import Connection, Exchange, Producer

from tests.fixtures.flower import FlowerProcess
from tests.fixtures.users import ServiceUsers
from tests.live.test_users import service_app
from tests.support.bus import MASTERTRADE, SETTINGS
from tests.support.wait import wait_until
from tradebus.application import TradebusCelery
from tradebus.errors import PublishFailed
from tradebus.mastertrade.samples import order_request
from tradebus.ops.users import accounts
from tradebus.publisher import send
from workers.launch import PoolProcess, start_pool, wait_for_consumers

ACCOUNTS = {a.service: a for a in accounts()}
OPERATORS = {"admin", "flower"}
EXECUTOR, RISK = "order_requests", "trading_signals"
EXECUTE_ORDER = "tradebus.execution.execute_order"
ORDER_ROUTE = {"exchange": "mastertrade.orders", "routing_key": "order.request.BTCUSDT"}


def node(pool: str) -> str:
    """The node name a pool's worker runs as (workers/run.py: ``-n <pool>@%h``)."""
    return host_format(f"{pool}@%h")


def pidbox_queue(pool: str) -> str:
    return f"{node(pool)}.celery.pidbox"


def permitted(service: str, permission: str, name: str) -> bool:
    return bool(re.fullmatch(getattr(ACCOUNTS[service], permission), name))


# --- the permissions, as exported ----------------------------------------------------------------------


def test_only_operators_may_write_the_broadcast_exchange_of_remote_control() -> None:
    assert {s for s in ACCOUNTS if permitted(s, "write", "celery.pidbox")} == OPERATORS


def test_no_service_may_reach_a_worker_by_name_or_the_default_exchange() -> None:
    for service, account in ACCOUNTS.items():
        if account.administrator:
            continue
        own = set(account.consumes)
        for name in ("amq.default", "", "C.dq2", f"{node(EXECUTOR)}.dq2"):
            assert not permitted(service, "write", name), (service, name)
        for pool in MASTERTRADE.pools:
            if pool not in own:  # binding another worker's pidbox queue would route commands into it
                assert not permitted(service, "write", pidbox_queue(pool)), (service, pool)
                assert not permitted(service, "configure", pidbox_queue(pool)), (service, pool)


def test_every_worker_may_declare_bind_and_consume_its_own_pidbox_answer_and_send_events() -> None:
    for pool in MASTERTRADE.pools:
        service = next(s for s, a in ACCOUNTS.items() if not a.administrator and pool in a.consumes)
        for permission in ("configure", "write", "read"):
            assert permitted(service, permission, pidbox_queue(pool)), (service, permission)
        assert permitted(service, "configure", "celery.pidbox") and permitted(
            service, "read", "celery.pidbox"
        )
        assert permitted(service, "write", "reply.celery.pidbox") and permitted(service, "write", "celeryev")
        assert not permitted(service, "read", "celeryev"), service  # events are the monitor's


def test_workers_run_without_mingle_and_gossip_unless_asked_for() -> None:
    from workers.profiled import ProfiledWorker

    worker = object.__new__(ProfiledWorker)  # prepare_args only: no worker started
    assert worker.prepare_args(queues=[EXECUTOR]) == {
        "queues": [EXECUTOR],
        "without_mingle": True,
        "without_gossip": True,
    }
    assert worker.prepare_args(without_mingle=False)["without_mingle"] is False


def test_celerys_direct_worker_queues_are_off() -> None:
    with service_app(SETTINGS.broker_url) as app:
        assert not app.conf.worker_direct


# --- on the broker -------------------------------------------------------------------------------------


@dataclass
class Workers:
    """The executor and the risk pool running as their services' users; what the executor recorded."""

    users: ServiceUsers
    pools: dict[str, PoolProcess]
    received: Callable[[], list[dict[str, Any]]]

    def consumers(self, queue: str) -> int:
        with self.users.vhost.connection() as conn:
            count: int = conn.channel().queue_declare(queue=queue, passive=True)[2]
            return count

    def log(self, pool: str) -> str:
        return self.pools[pool].log.read_text(errors="replace")[-3000:]


@pytest.fixture
def workers(service_users: ServiceUsers, tmp_path: Path) -> Iterator[Workers]:
    prefix = f"{SETTINGS.redis_prefix}-rc-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(SETTINGS.redis_url)
    pools: dict[str, PoolProcess] = {}
    try:
        for pool, service in ((EXECUTOR, "execution"), (RISK, "risk")):
            env = {
                "TRADEBUS_BROKER_URL": service_users.url(service),
                "TRADEBUS_DECLARE_TOPOLOGY": "0",
                "TRADEBUS_REDIS_PREFIX": prefix,
            }
            pools[pool] = start_pool(pool, tmp_path, ["-c", "1"], env=env)
        with service_users.vhost.connection() as conn:
            waiting = wait_for_consumers(conn, list(pools), 90, list(pools.values()))
            assert not waiting, {p: pools[p].log.read_text()[-3000:] for p in waiting}
        yield Workers(
            service_users,
            pools,
            lambda: [json.loads(e) for e in client.lrange(f"{prefix}:received:{EXECUTOR}", 0, -1)],
        )
    finally:
        for pool in pools.values():
            pool.stop()
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


def refused(name: str, attempt: Callable[[], Any], resource: str) -> None:
    """``attempt`` is refused ACCESS_REFUSED on ``resource`` (``exchange 'celery.pidbox'``)."""
    try:
        attempt()
    except (AccessRefused, PublishFailed) as exc:
        assert "ACCESS_REFUSED" in str(exc) and f"access to {resource} " in str(exc), (name, exc)
        return
    raise AssertionError(f"the broker allowed {name}")


def broadcast(url: str, command: str, **arguments: Any) -> Callable[[], Any]:
    """A remote-control broadcast to every worker as ``url``'s user, from an app of its own."""

    def attempt() -> Any:
        with service_app(url) as app:
            return app.control.broadcast(command, arguments=arguments, reply=False)

    return attempt


def publish_raw(url: str, exchange: str, key: str, body: dict[str, Any]) -> Callable[[], Any]:
    def attempt() -> None:
        with Connection(url, transport_options={"confirm_publish": True}) as conn:
            Producer(conn.channel()).publish(body, exchange=exchange, routing_key=key, serializer="json")

    return attempt


def route_commands_through_an_exchange_of_its_own(url: str) -> Callable[[], Any]:
    """Declare an exchange the user may write and bind the executor's pidbox queue to it."""

    def attempt() -> None:
        with Connection(url) as conn:
            channel = conn.channel()
            own = Exchange(f"{node('market_data')}-relay.celery.pidbox", "fanout", auto_delete=True)
            own(channel).declare()
            channel.queue_bind(pidbox_queue(EXECUTOR), own.name)

    return attempt


def answered(app: TradebusCelery, pool: str, method: str, **arguments: Any) -> Any:
    """What ``pool``'s worker answers to ``method`` (an inspect or control command), as ``app``'s user."""
    replies = app.control.broadcast(
        method, arguments=arguments, destination=[node(pool)], reply=True, timeout=15, limit=1
    )
    return next((r[node(pool)] for r in replies if node(pool) in r), None)


def rate_limits(app: TradebusCelery, pool: str) -> list[str]:
    """The tasks ``pool``'s worker runs, each with its rate limit if it has one."""
    return list(answered(app, pool, "registered", taskinfoitems=["rate_limit"]))


@pytest.mark.broker
@pytest.mark.slow
def test_market_data_cannot_stop_starve_or_slow_the_executor_and_operators_still_command_workers(
    workers: Workers,
) -> None:
    users = workers.users
    market_data = users.url("market_data")
    order_id = f"order-{uuid.uuid4().hex[:8]}"
    with service_app(users.url("admin")) as admin, service_app(users.url("flower")) as flower:
        assert answered(admin, EXECUTOR, "ping") == {"ok": "pong"}, workers.log(EXECUTOR)
        queues = answered(flower, EXECUTOR, "active_queues")
        assert [q["name"] for q in queues] == [EXECUTOR]

        pidbox = "exchange 'celery.pidbox'"
        attempts = {
            "shutdown": (broadcast(market_data, "shutdown"), pidbox),
            "cancel_consumer": (broadcast(market_data, "cancel_consumer", queue=EXECUTOR), pidbox),
            "revoke": (broadcast(market_data, "revoke", task_id=[order_id]), pidbox),
            "rate_limit": (
                broadcast(market_data, "rate_limit", task_name=EXECUTE_ORDER, rate_limit="1/h"),
                pidbox,
            ),
            "the executor's pidbox queue through the default exchange": (
                publish_raw(market_data, "", pidbox_queue(EXECUTOR), {"method": "shutdown", "arguments": {}}),
                "exchange 'amq.default'",
            ),
            "worker_direct": (
                publish_raw(market_data, "C.dq2", f"{node(EXECUTOR)}.dq2", {}),
                "exchange 'C.dq2'",
            ),
            "a relay exchange": (
                route_commands_through_an_exchange_of_its_own(market_data),
                f"queue '{pidbox_queue(EXECUTOR)}'",
            ),
        }
        for name, (attempt, resource) in attempts.items():
            refused(name, attempt, resource)
        order = order_request(f"req-{order_id}").model_dump_json().encode()
        for exchange, key, resource in (
            ("mastertrade.orders", "order.request.BTCUSDT", "exchange 'mastertrade.orders'"),
            ("", EXECUTOR, "exchange 'amq.default'"),
            ("mastertrade.retry", EXECUTOR, f"topic '{EXECUTOR}' in exchange 'mastertrade.retry'"),
        ):
            with service_app(market_data) as attacker:
                forge = partial(send, attacker, order, exchange=exchange, routing_key=key)
                refused(f"an order on {exchange!r} {key}", forge, resource)

        # Positive controls: an operator's commands take effect, and this test sees them.
        assert "ok" in answered(admin, EXECUTOR, "revoke", task_id=["control-id"])
        assert answered(admin, EXECUTOR, "revoked") == ["control-id"]  # and not the attacker's order_id
        assert "ok" in answered(
            admin, RISK, "rate_limit", task_name="tradebus.risk.evaluate_signal", rate_limit="5/s"
        )
        assert "tradebus.risk.evaluate_signal [rate_limit=5/s]" in rate_limits(admin, RISK)
        assert f"{EXECUTE_ORDER} [rate_limit=1/h]" not in rate_limits(admin, EXECUTOR)
        assert EXECUTE_ORDER in rate_limits(admin, EXECUTOR)  # listed, with no rate limit
        assert "ok" in answered(flower, RISK, "cancel_consumer", queue=RISK), workers.log(RISK)
        assert wait_until(lambda: workers.consumers(RISK) == 0, timeout=30)
        admin.control.broadcast("shutdown", destination=[node(RISK)])
        assert wait_until(lambda: workers.pools[RISK].process.poll() is not None, timeout=60)

        # The executor is still there, consuming, and runs the order the attacker tried to revoke.
        assert workers.pools[EXECUTOR].process.poll() is None, workers.log(EXECUTOR)
        assert workers.consumers(EXECUTOR) == 1
        assert answered(flower, EXECUTOR, "ping") == {"ok": "pong"}
        with service_app(users.url("risk")) as risk:
            send(risk, order, message_id=order_id, **ORDER_ROUTE)
        ran = wait_until(workers.received, timeout=60)
        assert [e["id"] for e in ran] == [order_id], workers.log(EXECUTOR)
    log = workers.log(EXECUTOR)
    assert "ACCESS_REFUSED" not in log and "mingle: searching" not in log, log


FLOWER_LOGIN = ("operator", uuid.uuid4().hex)


def flower_api(flower: FlowerProcess, path: str) -> Any:
    """GET Flower's API with its login; the decoded JSON (None while it errors)."""
    request = urllib.request.Request(f"{flower.url}/api/{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(FLOWER_LOGIN).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


@pytest.mark.broker
@pytest.mark.slow
def test_flower_as_its_own_user_lists_the_workers_their_tasks_and_queues(
    workers: Workers, start_flower: Callable[..., FlowerProcess]
) -> None:
    users = workers.users
    flower = start_flower(
        {
            "TRADEBUS_BROKER_URL": users.url("flower"),
            "TRADEBUS_FLOWER_USER": FLOWER_LOGIN[0],
            "TRADEBUS_FLOWER_PASSWORD": FLOWER_LOGIN[1],
        }
    )
    listed = wait_until(lambda: node(EXECUTOR) in (flower_api(flower, "workers?refresh=1") or {}), 60)
    assert listed, flower.output()[-3000:]

    def executed() -> list[str]:
        tasks = (flower_api(flower, "tasks") or {}).values()
        return [t["uuid"] for t in tasks if t.get("name") == EXECUTE_ORDER and t.get("state") == "SUCCESS"]

    # Flower turns task events on with a broadcast (enable_events) when it starts: orders sent before the
    # executor heard it leave no event, so send one until Flower shows one run.
    deadline = time.monotonic() + 90
    sent: list[str] = []
    with service_app(users.url("risk")) as risk:
        while not set(executed()) & set(sent) and time.monotonic() < deadline:
            order = order_request(f"req-{uuid.uuid4().hex[:8]}").model_dump_json().encode()
            sent.append(send(risk, order, **ORDER_ROUTE))
            wait_until(lambda: set(executed()) & set(sent), timeout=5)
    assert set(executed()) & set(sent), flower.output()[-3000:]

    lengths = flower_api(flower, "queues/length") or {}
    assert EXECUTOR in [q["name"] for q in lengths.get("active_queues", [])], (
        lengths,
        flower.output()[-3000:],
    )
    assert "ACCESS_REFUSED" not in flower.output() + workers.log(EXECUTOR)
