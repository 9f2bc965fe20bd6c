"""TLS: ``amqps://`` and the certificate settings reach Celery and Kombu, against a real TLS listener.

The shared RabbitMQ is never reconfigured: a TLS-terminating proxy on loopback (tests/tls_proxy.py), with a
CA and a server certificate made for the test, forwards to its plain AMQP and management ports.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from kombu import Connection

from routing import letrade
from tests.live.test_stages_live import wait_until
from tests.support.bus import MASTERTRADE, SETTINGS, Vhost
from tests.support.tls_proxy import Certificates, TLSProxy, make_certificates
from tradebus import tls
from tradebus.application import create_app
from tradebus.errors import InsecureConnection, SettingsError
from tradebus.letrade.bus import LetradeBus
from tradebus.management import Management
from tradebus.mastertrade.samples import order_request
from tradebus.mastertrade.wire import publish
from tradebus.ops.cli import ExitCode
from tradebus.settings import ManagementSettings, Settings
from workers.launch import start_pool, wait_for_consumers


def amqps(vhost: Vhost, port: int) -> str:
    return f"amqps://guest:guest@localhost:{port}/{urlsplit(vhost.url).path.lstrip('/')}"


def test_an_amqps_url_always_verifies_the_certificate_and_its_name() -> None:
    settings = Settings.from_env(
        {"TRADEBUS_BROKER_URL": "amqps://u:p@rabbit:5671//", "TRADEBUS_BROKER_CA_FILE": "/etc/ca.pem"}
    )
    options = tls.broker_use_ssl(settings)
    assert options is not None
    assert options["cert_reqs"] == ssl.CERT_REQUIRED
    assert options["ca_certs"] == "/etc/ca.pem"
    assert options["server_hostname"] is None  # Kombu puts the URL's host here: the name is checked
    assert "certfile" not in options


def test_a_client_certificate_goes_with_its_key_and_a_plain_url_takes_no_tls_settings() -> None:
    both = {"TRADEBUS_BROKER_CERT_FILE": "/c.pem", "TRADEBUS_BROKER_KEY_FILE": "/c.key"}
    options = tls.broker_use_ssl(Settings.from_env({"TRADEBUS_BROKER_URL": "amqps://h//", **both}))
    assert options is not None and (options["certfile"], options["keyfile"]) == ("/c.pem", "/c.key")
    with pytest.raises(SettingsError):
        Settings.from_env({"TRADEBUS_BROKER_CERT_FILE": "/c.pem"})
    assert tls.broker_use_ssl(Settings.from_env({})) is None
    with pytest.raises(SettingsError, match="not amqps"):
        tls.broker_use_ssl(Settings.from_env({"TRADEBUS_BROKER_CA_FILE": "/etc/ca.pem"}))


def test_the_celery_app_reads_its_tls_settings_from_the_environment() -> None:
    env = {**os.environ, "TRADEBUS_BROKER_URL": "amqps://u:p@rabbit:5671//", "TRADEBUS_BROKER_CA_FILE": "/ca"}
    script = "from tradebus import app; print(app.conf.broker_use_ssl['ca_certs'], app.conf.broker_url)"
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["/ca", "amqps://u:p@rabbit:5671//"], result.stderr


# --- against a TLS listener ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def amqps_proxy(certificates: Certificates, broker: Vhost) -> Iterator[TLSProxy]:
    """TLS on loopback in front of RabbitMQ's AMQP port."""
    proxy = TLSProxy(certificates, urlsplit(broker.url).port or 5672)
    yield proxy
    proxy.close()


def tls_env(url: str, ca: Path, **extra: str) -> dict[str, str]:
    return {"TRADEBUS_BROKER_URL": url, "TRADEBUS_BROKER_CA_FILE": str(ca), **extra}


@pytest.mark.broker
@pytest.mark.slow
def test_a_message_is_published_and_consumed_over_amqps_with_the_ca_from_the_environment(
    declared_vhost: Vhost, amqps_proxy: TLSProxy, certificates: Certificates, tmp_path: Path
) -> None:
    env = tls_env(amqps(declared_vhost, amqps_proxy.port), certificates.ca)
    prefix = f"{SETTINGS.redis_prefix}-tls-{uuid.uuid4().hex[:6]}"
    worker = start_pool("order_requests", tmp_path, ["-c", "1"], env={**env, "TRADEBUS_REDIS_PREFIX": prefix})
    client = redis.Redis.from_url(SETTINGS.redis_url)
    # A tradebus app of its own: amqps:// with the CA from the environment, confirms on (as tradebus's).
    app = create_app(MASTERTRADE, Settings.from_env(env), main="tls-publisher")
    assert app.conf.broker_use_ssl == tls.broker_use_ssl(Settings.from_env(env))
    try:
        with declared_vhost.connection() as conn:
            assert not wait_for_consumers(conn, ["order_requests"], 60, [worker]), worker.log.read_text()[
                -3000:
            ]
        message_id = publish(order_request("req-tls"), app=app)
        ran = wait_until(lambda: client.lrange(f"{prefix}:received:order_requests", 0, -1), timeout=30)
        assert [json.loads(e)["id"] for e in ran] == [message_id], worker.log.read_text()[-3000:]
        assert amqps_proxy.handshakes >= 2  # the worker's connection and the publisher's, both TLS
    finally:
        app.close()
        worker.stop()
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


@pytest.mark.broker
@pytest.mark.parametrize(
    ("ca", "extra", "error"),
    [
        ("other_ca", {}, "certificate verify failed"),
        ("ca", {"TRADEBUS_BROKER_TLS_SERVER_NAME": "rabbit.example"}, "Hostname mismatch"),
    ],
    ids=["wrong-ca", "wrong-name"],
)
def test_a_broker_whose_certificate_does_not_verify_is_refused(
    declared_vhost: Vhost,
    amqps_proxy: TLSProxy,
    certificates: Certificates,
    ca: str,
    extra: dict[str, str],
    error: str,
) -> None:
    settings = Settings.from_env(
        tls_env(amqps(declared_vhost, amqps_proxy.port), getattr(certificates, ca), **extra)
    )
    connection = Connection(settings.broker_url, ssl=tls.broker_use_ssl(settings), connect_timeout=5)
    with pytest.raises(Exception, match=error):
        connection.ensure_connection(max_retries=1)
    connection.release()
    assert amqps_proxy.handshakes == 0


@pytest.mark.broker
def test_the_management_api_is_reached_over_https_with_the_brokers_ca(
    declared_vhost: Vhost, certificates: Certificates
) -> None:
    api_port = urlsplit(SETTINGS.management.base_url).port or 15672
    proxy = TLSProxy(certificates, api_port)
    try:
        vhost = declared_vhost.name
        trusted = Settings.from_env(tls_env("amqps://localhost//", certificates.ca)).tls
        https = ManagementSettings(f"https://localhost:{proxy.port}", "guest", "guest", vhost)
        assert {q["name"] for q in Management(https, tls=trusted).queues()} >= {"order_requests"}
        untrusted = Settings.from_env(tls_env("amqps://localhost//", certificates.other_ca)).tls
        from tradebus.errors import BrokerUnreachable

        with pytest.raises(BrokerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            Management(https, tls=untrusted).queues()
    finally:
        proxy.close()


# --- TLS-only mode (TRADEBUS_REQUIRE_TLS=1) ---------------------------------------------------------------


@pytest.fixture
def tls_only_env(
    declared_vhost: Vhost, amqps_proxy: TLSProxy, certificates: Certificates
) -> Iterator[tuple[dict[str, str], TLSProxy, TLSProxy]]:
    """Every connection over TLS: amqps:// to the broker, rediss:// to Redis, https:// to the management API
    (each a TLS proxy on loopback), and TRADEBUS_REQUIRE_TLS=1."""
    plain_redis = urlsplit(SETTINGS.redis_url)
    rediss = TLSProxy(certificates, plain_redis.port or 6379)
    api = TLSProxy(certificates, urlsplit(SETTINGS.management.base_url).port or 15672)
    login = plain_redis.netloc.rpartition("@")[0]
    query = f"ssl_cert_reqs=required&ssl_ca_certs={certificates.ca}"
    rediss_url = f"rediss://{login + '@' if login else ''}localhost:{rediss.port}{plain_redis.path}?{query}"
    env = tls_env(
        amqps(declared_vhost, amqps_proxy.port),
        certificates.ca,
        TRADEBUS_REQUIRE_TLS="1",
        TRADEBUS_REDIS_URL=rediss_url,
        TRADEBUS_MANAGEMENT_URL=f"https://localhost:{api.port}",
        TRADEBUS_REDIS_PREFIX=f"{SETTINGS.redis_prefix}-tlsonly-{uuid.uuid4().hex[:6]}",
    )
    yield env, rediss, api
    rediss.close()
    api.close()


@pytest.mark.broker
@pytest.mark.slow
def test_tls_only_mode_publishes_consumes_and_checks_health_over_amqps_rediss_and_https(
    declared_vhost: Vhost,
    amqps_proxy: TLSProxy,
    tls_only_env: tuple[dict[str, str], TLSProxy, TLSProxy],
    tmp_path: Path,
) -> None:
    env, rediss, api = tls_only_env
    prefix = env["TRADEBUS_REDIS_PREFIX"]
    settings = Settings.from_env(env)
    assert settings.tls.required
    worker = start_pool("order_requests", tmp_path, ["-c", "1"], env=env)
    client = redis.Redis.from_url(SETTINGS.redis_url)
    app = create_app(MASTERTRADE, settings, main="tls-only-publisher")
    try:
        with declared_vhost.connection() as conn:
            missing = wait_for_consumers(conn, ["order_requests"], 60, [worker])
            assert not missing, worker.log.read_text()[-3000:]
        message_id = publish(order_request("req-tls-only"), app=app)
        ran = wait_until(lambda: client.lrange(f"{prefix}:received:order_requests", 0, -1), timeout=30)
        assert [json.loads(e)["id"] for e in ran] == [message_id], worker.log.read_text()[-3000:]
        assert amqps_proxy.handshakes >= 2  # the worker's and the publisher's connections
        assert rediss.handshakes >= 1  # the worker recorded the delivery in Redis over TLS
        assert api.handshakes >= 1  # the worker applied the policies over https
        # The CLI in the same mode reaches the broker through the CA of the environment.
        tradebus = str(Path(sys.executable).with_name("tradebus"))
        health = subprocess.run(
            [tradebus, "health", "--json"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert health.returncode in {ExitCode.OK, ExitCode.UNHEALTHY}, health.stderr
        assert json.loads(health.stdout.splitlines()[-1])["queues"]["order_requests"]["consumers"] == 1
        # The Letrade client, in the same mode, connects over amqps with the CA from the settings.
        letrade_app = create_app(letrade.build(), settings, main="tls-only-letrade")
        try:
            bus = LetradeBus(app=letrade_app).connect()
            bus.close()
        finally:
            letrade_app.close()
    finally:
        app.close()
        worker.stop()
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


@pytest.mark.broker
def test_tls_only_mode_refuses_the_plain_local_broker_before_connecting(
    tls_only_env: tuple[dict[str, str], TLSProxy, TLSProxy], amqps_proxy: TLSProxy, tmp_path: Path
) -> None:
    env, rediss, api = tls_only_env
    plain = {**env, "TRADEBUS_BROKER_URL": SETTINGS.broker_url, "TRADEBUS_REDIS_URL": SETTINGS.redis_url}
    with pytest.raises(InsecureConnection) as caught:
        Settings.from_env(plain)
    assert [p.split(" is ")[0] for p in caught.value.problems] == [
        "TRADEBUS_BROKER_URL",
        "TRADEBUS_REDIS_URL",
    ]
    worker = start_pool("order_requests", tmp_path, ["-c", "1"], env=plain)
    assert worker.process.wait(timeout=60) == ExitCode.INSECURE
    assert "TRADEBUS_REQUIRE_TLS=1 refuses" in worker.log.read_text()
    assert (amqps_proxy.handshakes, rediss.handshakes, api.handshakes) == (0, 0, 0)
