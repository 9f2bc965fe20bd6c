"""Encryption on a real broker: exchange credentials in ``system.config.api_key_update`` travel sealed.

The ``system_notifications`` pool runs as its own process with two keys (``new`` first, ``old`` after
it: a rotation in progress), in a vhost and a Redis prefix of its own. The tests read the raw bytes of a
queued message (``basic_get``), watch what the stage recorded (it records right before its handler
runs, after the body was opened), and read its dead-letter queue and ``tradebus dlq list``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from kombu import Connection, Exchange, Producer, Queue
from pydantic import SecretStr

from tests.support.bus import MASTERTRADE, SETTINGS, Vhost
from tests.support.wait import wait_until
from tradebus.application import TradebusCelery, create_app
from tradebus.codec import wire_bytes
from tradebus.encryption import Keyring, new_key, parse_keys
from tradebus.headers import ORIGINAL_MESSAGE_ID, REASON
from tradebus.mastertrade.messages import ConfigChange
from tradebus.mastertrade.wire import encode, publish
from tradebus.ops import dlq
from tradebus.ops.cli import main
from tradebus.settings import Settings
from workers.launch import PoolProcess, start_pool, wait_for_consumers

pytestmark = [pytest.mark.broker, pytest.mark.slow]

QUEUE = "system_notifications"
DLQ = f"dlq.{QUEUE}"
STAGE = "tradebus.alerts.on_system_notification"
OLD, NEW, STRANGER = new_key(), new_key(), new_key()
WORKER_KEYS = f"new:{NEW},old:{OLD}"
SECRET = f"exchange-secret-{uuid.uuid4().hex}"


def api_key_update(secret: str = SECRET) -> ConfigChange:
    return ConfigChange(
        change_type="api_key_update",
        service="order_executor",
        venue="binance",
        api_key=SecretStr(f"public-{uuid.uuid4().hex[:8]}"),
        api_secret=SecretStr(secret),
    )


class Notifier:
    """The system_notifications pool, with the rotated keys, and what it recorded."""

    def __init__(self, vhost: Vhost, process: PoolProcess, prefix: str) -> None:
        self.vhost = vhost
        self.process = process
        self.prefix = prefix
        self.redis = redis.Redis.from_url(SETTINGS.redis_url)
        self.dead: dict[str, tuple[dict[str, Any], bytes]] = {}

    def ran(self, message_id: str) -> int:
        """How many times the stage ran for ``message_id``."""
        entries = self.redis.lrange(f"{self.prefix}:received:{QUEUE}", 0, -1)
        return sum(1 for e in entries if json.loads(e)["id"] == message_id)

    def log(self) -> str:
        return self.process.log.read_text()[-3000:]

    def dead_letter(self, message_id: str, timeout: float = 20.0) -> tuple[dict[str, Any], bytes]:
        """The headers and body of the dead letter of ``message_id``, left in the DLQ (waits for it)."""

        def look() -> bool:
            for letter in dlq.peek(MASTERTRADE, conn, DLQ, 100):
                self.dead[letter.message_id] = (dict(letter.headers), letter.body)
            return message_id in self.dead

        with self.vhost.connection() as conn:
            wait_until(look, timeout)
        if message_id not in self.dead:
            pytest.fail(f"no dead letter for {message_id}; worker log:\n{self.log()}")
        return self.dead[message_id]

    def publish_raw(self, body: bytes) -> str:
        """Publish ``body`` on ``system.config.api_key_update`` as any service could; returns its id."""
        message_id = f"cfg-{uuid.uuid4().hex[:12]}"
        with Connection(self.vhost.url, transport_options={"confirm_publish": True}) as conn:
            Producer(conn.channel()).publish(
                body,
                exchange="mastertrade.system",
                routing_key="system.config.api_key_update",
                content_type="application/json",
                message_id=message_id,
            )
        return message_id


def app_with(vhost: Vhost, keys: str | None, name: str) -> TradebusCelery:
    """An app of a service publishing to ``vhost``, with ``keys`` (None: no encryption configured)."""
    env = {"TRADEBUS_ENCRYPTION_KEYS": keys} if keys else {}
    settings = SETTINGS.with_(broker_url=vhost.url, encryption=Settings.from_env(env).encryption)
    return create_app(MASTERTRADE, settings, main=name)


@pytest.fixture(scope="module")
def notifier(topology_vhost: Vhost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notifier]:
    prefix = f"{SETTINGS.redis_prefix}-enc-{uuid.uuid4().hex[:6]}"
    env = {
        "TRADEBUS_BROKER_URL": topology_vhost.url,
        "TRADEBUS_REDIS_PREFIX": prefix,
        "TRADEBUS_ENCRYPTION_KEYS": WORKER_KEYS,
    }
    process = start_pool(QUEUE, tmp_path_factory.mktemp("encryption"), ["-c", "1"], env=env)
    try:
        with topology_vhost.connection() as conn:
            missing = wait_for_consumers(conn, [QUEUE], 60, [process])
        assert not missing, process.log.read_text()[-3000:]
        yield Notifier(topology_vhost, process, prefix)
    finally:
        process.stop()
        client = redis.Redis.from_url(SETTINGS.redis_url)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


def test_the_queued_bytes_never_hold_the_secret_and_the_consuming_stage_opens_it(notifier: Notifier) -> None:
    app = app_with(notifier.vhost, WORKER_KEYS, "config-service")
    spy = Queue(
        f"spy-{uuid.uuid4().hex[:6]}",
        Exchange("mastertrade.system", type="topic", passive=True),
        routing_key="system.config.#",
        exclusive=True,
    )
    try:
        with notifier.vhost.connection() as conn:
            channel = conn.channel()
            spy(channel).declare()
            message_id = publish(api_key_update(), app=app)
            queued = wait_until(lambda: channel.basic_get(spy.name, no_ack=True), timeout=10)
            assert queued is not None
            raw = wire_bytes(queued.body)  # the bytes as they sat in the queue
            assert SECRET.encode() not in raw
            assert b'"api_secret":"enc:v1:new:' in raw  # sealed with the first key, which names itself
            assert b'"venue":"binance"' in raw  # what is not sensitive stays readable
            # The stage's own decode (what the worker runs) opens it: the handler gets the plaintext.
            opened = app.tasks[STAGE].parse(raw, "application/json")
            assert opened.api_secret.get_secret_value() == SECRET
            assert SECRET not in repr(opened)
        # ...and so did the worker process: its stage ran, after opening the body.
        assert wait_until(lambda: notifier.ran(message_id), timeout=20) == 1, notifier.log()
    finally:
        app.close()


def test_a_message_sealed_with_the_old_key_still_opens_after_the_new_key_comes_first(
    notifier: Notifier,
) -> None:
    app = app_with(notifier.vhost, f"old:{OLD}", "config-service-before-rotation")
    try:
        message_id = publish(api_key_update(), app=app)
    finally:
        app.close()
    assert wait_until(lambda: notifier.ran(message_id), timeout=20) == 1, notifier.log()


def sealed_body(keyring: Keyring) -> bytes:
    return encode(api_key_update(), keyring)


def tampered(body: bytes) -> bytes:
    data = json.loads(body)
    head, sealed = data["api_secret"].rsplit(":", 1)
    data["api_secret"] = f"{head}:{sealed[:20]}{'A' if sealed[20] != 'A' else 'B'}{sealed[21:]}"
    return json.dumps(data).encode()


def test_tampered_unknown_key_and_plaintext_secrets_are_dead_lettered_undecryptable_and_kept(
    notifier: Notifier,
) -> None:
    ours = Keyring(parse_keys(WORKER_KEYS))
    plaintext = json.dumps(api_key_update().model_dump(mode="json") | {"api_secret": SECRET}).encode()
    cases = {
        "tampered": tampered(sealed_body(ours)),
        "unknown key": sealed_body(Keyring(parse_keys(f"stranger:{STRANGER}"))),
        "plaintext": plaintext,
    }
    ids = {what: notifier.publish_raw(body) for what, body in cases.items()}
    # Positive control, published after them: the worker went on and runs a good one.
    control = notifier.publish_raw(sealed_body(ours))
    assert wait_until(lambda: notifier.ran(control), timeout=20) == 1, notifier.log()
    for what, message_id in ids.items():
        headers, body = notifier.dead_letter(message_id)
        assert headers[REASON] == "undecryptable", (what, headers)
        assert headers[ORIGINAL_MESSAGE_ID] == message_id
        assert notifier.ran(message_id) == 0, what
        assert SECRET not in headers["x-tradebus-error"]
        if what != "plaintext":  # the dead letter keeps the original bytes: still sealed
            assert SECRET.encode() not in body
    assert "unknown key id 'stranger'" in notifier.dead[ids["unknown key"]][0]["x-tradebus-error"]
    assert "plaintext" in notifier.dead[ids["plaintext"]][0]["x-tradebus-error"]

    env = {"TRADEBUS_BROKER_URL": notifier.vhost.url, "TRADEBUS_ENCRYPTION_KEYS": WORKER_KEYS}
    listing = CliRunner().invoke(main, ["dlq", "list", QUEUE, "--limit", "100"], env=env)
    assert listing.exit_code == 0, listing.output
    assert listing.output.count("undecryptable") >= 3
    assert SECRET not in listing.output

    # Even an operator holding the keys does not replay them: they stay where they are.
    replay = CliRunner().invoke(main, ["dlq", "replay", QUEUE], env=env)
    assert replay.exit_code == 0, replay.output
    assert SECRET not in replay.output
    for message_id in ids.values():
        (row,) = [line for line in replay.output.splitlines() if line.startswith(message_id)]
        assert "undecryptable" in row and dlq.KEPT in row and "not replayed" in row
    with notifier.vhost.connection() as conn:
        kept = {letter.message_id for letter in dlq.peek(MASTERTRADE, conn, DLQ, 100)}
    assert set(ids.values()) <= kept


def test_a_service_without_a_key_refuses_to_publish_a_secret(notifier: Notifier) -> None:
    from tradebus.errors import EncryptionUnavailable

    app = app_with(notifier.vhost, None, "keyless-service")
    try:
        with pytest.raises(EncryptionUnavailable):
            publish(api_key_update(), app=app)
        # Positive control: the same service publishes a configuration change that carries no secret.
        message_id = publish(ConfigChange(change_type="risk_limits", description="tighter"), app=app)
    finally:
        app.close()
    assert wait_until(lambda: notifier.ran(message_id), timeout=20) == 1, notifier.log()
