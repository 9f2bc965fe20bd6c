"""Signing on a real broker: a worker that requires signatures runs signed orders and nothing else.

The executor pool runs as its own process, configured only by its environment (its key, the risk
service's key it trusts, ``TRADEBUS_SIGNING_REQUIRED=1``), in a vhost and a Redis prefix of its own. The
tests publish like any MasterTrade service would; what the stage recorded (it records right before its
handler runs) shows whether the handler ran.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Producer

from tests.live.test_stages_live import wait_until
from tests.support.bus import MASTERTRADE, SETTINGS, Vhost
from tradebus import signing
from tradebus.application import create_app
from tradebus.errors import Replayed
from tradebus.headers import ORIGINAL_MESSAGE_ID, REASON
from tradebus.mastertrade.samples import order_request, signal
from tradebus.mastertrade.wire import publish
from tradebus.settings import SigningSettings
from workers.launch import PoolProcess, start_pool, wait_for_consumers

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RISK_KEY = "risk-test-key-" + "r" * 32
STRATEGY_KEY = "strategy-test-key-" + "s" * 32
EXECUTOR_KEY = "execution-test-key-" + "e" * 32
QUEUE = "order_requests"


class Executor:
    """The order executor pool, signing required, and what it recorded and dead-lettered."""

    def __init__(self, vhost: Vhost, process: PoolProcess, prefix: str) -> None:
        self.vhost = vhost
        self.process = process
        self.prefix = prefix
        self.redis = redis.Redis.from_url(SETTINGS.redis_url)
        self.dead: dict[str, dict[str, Any]] = {}

    def ran(self, message_id: str) -> int:
        """How many times the stage of order_requests ran for ``message_id``."""
        entries = self.redis.lrange(f"{self.prefix}:received:{QUEUE}", 0, -1)
        return sum(1 for e in entries if json.loads(e)["id"] == message_id)

    def dead_letter(self, message_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The headers of the dead letter of ``message_id`` (waits for it)."""
        with self.vhost.connection() as conn:
            channel = conn.channel()

            def take() -> bool:
                while (m := channel.basic_get(f"dlq.{QUEUE}", no_ack=True)) is not None:
                    self.dead[m.headers[ORIGINAL_MESSAGE_ID]] = dict(m.headers)
                return message_id in self.dead

            wait_until(take, timeout)
        if message_id not in self.dead:
            pytest.fail(
                f"no dead letter for {message_id}; worker log:\n{self.process.log.read_text()[-3000:]}"
            )
        return self.dead[message_id]

    def publish(self, body: bytes, message_id: str, headers: dict[str, Any] | None = None) -> None:
        """Publish an order request as a non-Celery service would: raw JSON, its own headers."""
        with Connection(self.vhost.url, transport_options={"confirm_publish": True}) as conn:
            Producer(conn.channel()).publish(
                body,
                exchange="mastertrade.orders",
                routing_key="order.request.BTCUSDT",
                content_type="application/json",
                message_id=message_id,
                headers=headers or {},
                delivery_mode=2,  # persistent, as orders are
            )


@pytest.fixture(scope="module")
def executor(topology_vhost: Vhost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    """The order_requests pool (one process), requiring signatures and trusting the risk service."""
    prefix = f"{SETTINGS.redis_prefix}-signing-{uuid.uuid4().hex[:6]}"
    env = {
        "TRADEBUS_BROKER_URL": topology_vhost.url,
        "TRADEBUS_REDIS_PREFIX": prefix,
        "TRADEBUS_SIGNING_SERVICE": "execution",
        "TRADEBUS_SIGNING_KEY": EXECUTOR_KEY,
        "TRADEBUS_SIGNING_TRUSTED_KEYS": f"risk:{RISK_KEY}",
        "TRADEBUS_SIGNING_REQUIRED": "1",
    }
    process = start_pool(QUEUE, tmp_path_factory.mktemp("signing"), ["-c", "1"], env=env)
    try:
        with topology_vhost.connection() as conn:
            missing = wait_for_consumers(conn, [QUEUE], 60, [process])
        assert not missing, process.log.read_text()[-3000:]
        executor = Executor(topology_vhost, process, prefix)
        yield executor
    finally:
        process.stop()
        client = redis.Redis.from_url(SETTINGS.redis_url)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


def order(message_id: str) -> bytes:
    return order_request(message_id).model_dump_json().encode()


def sign(
    body: bytes, message_id: str, key: str = RISK_KEY, service: str = "risk", **extra: Any
) -> dict[str, Any]:
    return signing.sign(
        body,
        service=service,
        key=key,
        message_id=message_id,
        exchange="mastertrade.orders",
        routing_key="order.request.BTCUSDT",
        content_type="application/json",
        **extra,
    )


def new_id() -> str:
    return f"req-{uuid.uuid4().hex[:12]}"


def test_order_published_by_a_service_with_a_key_is_signed_and_runs(executor: Executor) -> None:
    risk = SigningSettings.from_env({"TRADEBUS_SIGNING_SERVICE": "risk", "TRADEBUS_SIGNING_KEY": RISK_KEY})
    # The risk service's own app: its settings carry its key, and it publishes to the executor's vhost.
    settings = SETTINGS.with_(broker_url=executor.vhost.url, signing=risk)
    app = create_app(MASTERTRADE, settings, main="risk-service")
    try:
        message_id = publish(order_request(new_id()), app=app)
    finally:
        app.close()
    assert wait_until(lambda: executor.ran(message_id), timeout=20), executor.process.log.read_text()[-3000:]


def test_order_signed_by_the_trusted_risk_service_runs_once(executor: Executor) -> None:
    message_id = new_id()
    body = order(message_id)
    executor.publish(body, message_id, sign(body, message_id))
    assert wait_until(lambda: executor.ran(message_id), timeout=20) == 1


def test_unsigned_order_is_dead_lettered_never_executed(executor: Executor) -> None:
    message_id = new_id()
    executor.publish(order(message_id), message_id)
    assert executor.dead_letter(message_id)[REASON] == "unsigned"
    assert executor.ran(message_id) == 0


def test_order_tampered_after_signing_is_dead_lettered_never_executed(executor: Executor) -> None:
    message_id = new_id()
    body = order(message_id)
    headers = sign(body, message_id)
    tampered = body.replace(b'"quantity":0.5', b'"quantity":50.0')
    assert tampered != body
    executor.publish(tampered, message_id, headers)
    assert executor.dead_letter(message_id)[REASON] == "bad_signature"
    assert executor.ran(message_id) == 0


def test_replayed_order_is_dead_lettered_and_runs_only_once(executor: Executor) -> None:
    message_id = new_id()
    body = order(message_id)
    headers = sign(body, message_id)
    executor.publish(body, message_id, headers)
    assert wait_until(lambda: executor.ran(message_id), timeout=20) == 1
    executor.publish(body, message_id, headers)
    assert executor.dead_letter(message_id)[REASON] == "replayed"
    assert executor.ran(message_id) == 1


def test_a_republished_outcome_with_signing_required_is_dropped_as_a_repeat_not_dead_lettered(
    executor: Executor,
) -> None:
    # The risk service died after publishing this order and before noting it: its redelivered signal makes
    # it publish the order again, same derived id and body (tradebus/outcomes.py), signed anew. The executor
    # runs it once and drops the copy as a repeat; a forgery (the same signed bytes) stays a replay.
    def repeats() -> int:
        return int(executor.redis.hget(f"{executor.prefix}:metrics", f"repeats_dropped:{QUEUE}") or 0)

    before = repeats()
    message_id = new_id()
    body = order(message_id)
    executor.publish(body, message_id, sign(body, message_id, now=time.time() - 2))
    assert wait_until(lambda: executor.ran(message_id), timeout=20) == 1
    executor.publish(body, message_id, sign(body, message_id))
    # Positive control, behind it on the one-process pool: an unsigned order's dead letter. Once it is in,
    # a dead letter of the republished copy would be too.
    control = new_id()
    executor.publish(order(control), control)
    assert executor.dead_letter(control)[REASON] == "unsigned"
    assert message_id not in executor.dead, executor.dead.get(message_id)
    assert executor.ran(message_id) == 1
    assert repeats() - before == 1, executor.process.log.read_text()[-3000:]


def test_order_signed_by_the_strategy_service_is_dead_lettered_never_executed(executor: Executor) -> None:
    message_id = new_id()
    body = order(message_id)
    executor.publish(body, message_id, sign(body, message_id, key=STRATEGY_KEY, service="strategy"))
    headers = executor.dead_letter(message_id)
    assert headers[REASON] == "untrusted_signer"
    assert "strategy" in headers["x-tradebus-error"]
    assert executor.ran(message_id) == 0


def test_order_signed_too_long_ago_is_dead_lettered_never_executed(executor: Executor) -> None:
    message_id = new_id()
    body = order(message_id)
    executor.publish(body, message_id, sign(body, message_id, now=time.time() - 3600))
    assert executor.dead_letter(message_id)[REASON] == "stale_signature"
    assert executor.ran(message_id) == 0


BACKTEST_KEY = "backtest-test-key-" + "b" * 32


def service_env(**signing: str) -> dict[str, str]:
    """A service's environment: this session's broker and Redis, and its own ``TRADEBUS_SIGNING_*``."""
    shared = {k: v for k, v in os.environ.items() if k.startswith("TRADEBUS_") and "SIGNING" not in k}
    return shared | {f"TRADEBUS_SIGNING_{name.upper()}": value for name, value in signing.items()}


@pytest.mark.usefixtures("celery_session_worker")
def test_a_retried_message_is_re_signed_by_the_worker_and_not_taken_for_a_replay(
    broker: Vhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two services, two environments: the strategy service signs with its key; the backtest worker knows
    only its own key and trusts the strategy's. Its retry is its own message, signed with its own key."""
    from tasks.backtest import record_signal
    from tradebus import app
    from tradebus.headers import SIGNER
    from tradebus.settings import Settings

    strategy = Settings.from_env(service_env(service="strategy", key=STRATEGY_KEY))
    backtest = Settings.from_env(
        service_env(
            service="backtest", key=BACKTEST_KEY, trusted_keys=f"strategy:{STRATEGY_KEY}", required="1"
        )
    )
    assert set(strategy.signing.trusted) == {"strategy"} and not strategy.signing.required
    assert set(backtest.signing.trusted) == {"strategy", "backtest"} and backtest.signing.required
    # The session worker runs the default app: it becomes the backtest service. The publisher is an app of
    # its own, as the strategy service's process would be.
    monkeypatch.setattr(app, "settings", backtest)
    publisher = create_app(MASTERTRADE, strategy, main="strategy-service")
    deliveries: list[tuple[int, str | None]] = []

    def failing_once(message: object) -> None:
        deliveries.append((record_signal.request.retries or 0, record_signal.headers.get(SIGNER)))
        if len(deliveries) == 1:
            raise redis.ConnectionError("redis is down")

    monkeypatch.setattr(record_signal, "handler", failing_once)
    try:
        message_id = publish(signal(f"bt-{uuid.uuid4().hex[:8]}", backtest=True), app=publisher)
    finally:
        publisher.close()
    assert wait_until(lambda: len(deliveries) >= 2, timeout=25), "the signed retry did not run"
    # Checked on arrival as the strategy's, then as the worker's own retry; neither was refused.
    assert deliveries == [(0, "strategy"), (1, "backtest")]
    with broker.connection() as conn:
        channel = conn.channel()
        letters = []
        while (m := channel.basic_get("dlq.backtest_signals", no_ack=True)) is not None:
            letters.append(m.headers.get(ORIGINAL_MESSAGE_ID))
    assert message_id not in letters


@pytest.mark.usefixtures("broker")
def test_the_first_acceptance_is_claimed_and_a_second_one_is_a_replay() -> None:
    message_id = f"m-{uuid.uuid4()}"
    signing.claim("order_requests", "risk", message_id, 0, window=300, redelivered=False)
    with pytest.raises(Replayed):
        signing.claim("order_requests", "risk", message_id, 0, window=300, redelivered=False)
    # The worker's own retry is a new attempt, a fan-out copy is another queue, a redelivery is not a replay.
    signing.claim("order_requests", "risk", message_id, 1, window=300, redelivered=False)
    signing.claim("executor_market_data", "risk", message_id, 0, window=300, redelivered=False)
    signing.claim("order_requests", "risk", message_id, 0, window=300, redelivered=True)
