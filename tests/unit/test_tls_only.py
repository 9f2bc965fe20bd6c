"""TLS-only mode (TRADEBUS_REQUIRE_TLS=1): settings without TLS are refused, all at once, before anything
connects, in every entry point (settings, ``with_``, the CLI, ``celery -A tradebus``, Flower, LetradeBus).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from routing import letrade
from tradebus import tls
from tradebus.application import celery_config, create_app, using
from tradebus.errors import InsecureConnection, SettingsError
from tradebus.letrade.bus import LetradeBus
from tradebus.ops import flower
from tradebus.ops.cli import ExitCode
from tradebus.settings import Settings

SECRET = "s3cr3t-pa55"
TLS_ENV = {
    "TRADEBUS_REQUIRE_TLS": "1",
    "TRADEBUS_BROKER_URL": f"amqps://svc:{SECRET}@rabbit:5671//",
    "TRADEBUS_REDIS_URL": f"rediss://:{SECRET}@redis:6379/0?ssl_cert_reqs=required",
}


def refused(**env: str) -> InsecureConnection:
    with pytest.raises(InsecureConnection) as caught:
        Settings.from_env({**TLS_ENV, **env})
    return caught.value


@pytest.mark.parametrize(
    "url",
    [f"amqps://svc:{SECRET}@rabbit:5671//", "pyamqps://rabbit//", "memory://", "amqps://a//;amqps://b//"],
)
def test_a_tls_or_in_process_broker_is_accepted(url: str) -> None:
    assert Settings.from_env({**TLS_ENV, "TRADEBUS_BROKER_URL": url}).tls.required


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        (f"amqp://svc:{SECRET}@rabbit:5672//", "amqp"),
        ("pyamqp://rabbit//", "pyamqp"),
        (f"redis://:{SECRET}@redis:6379/0", "redis"),
        ("amqps://a//;amqp://b//", "amqp"),  # every fail-over URL, not just the first
    ],
)
def test_a_broker_without_tls_is_refused(url: str, scheme: str) -> None:
    error = refused(TRADEBUS_BROKER_URL=url)
    assert error.problems == [f"TRADEBUS_BROKER_URL is {scheme}:// (use amqps://)"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"redis://:{SECRET}@redis:6379/0", "is redis:// (use rediss://)"),
        ("unix:///run/redis.sock", "is unix:// (use rediss://)"),
        (f"rediss://:{SECRET}@redis/0?ssl_cert_reqs=none", "is rediss:// with ssl_cert_reqs=none"),
        ("rediss://redis/0?ssl_cert_reqs=CERT_OPTIONAL", "is rediss:// with ssl_cert_reqs=CERT_OPTIONAL"),
    ],
)
def test_redis_without_tls_or_without_verification_is_refused(url: str, problem: str) -> None:
    (message,) = refused(TRADEBUS_REDIS_URL=url).problems
    assert message.startswith(f"TRADEBUS_REDIS_URL {problem}")


def test_rediss_that_verifies_is_accepted_and_celery_is_told_to_verify_when_the_url_does_not_say() -> None:
    settings = Settings.from_env({**TLS_ENV, "TRADEBUS_REDIS_URL": "rediss://redis/0?ssl_ca_certs=/ca.pem"})
    config = celery_config(letrade.build(), settings)
    assert config["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert "redis_backend_use_ssl" not in celery_config(letrade.build(), Settings.from_env(TLS_ENV))


def test_the_management_api_must_be_https_and_is_derived_as_https_from_an_amqps_broker() -> None:
    assert refused(TRADEBUS_MANAGEMENT_URL="http://rabbit:15672").problems == [
        "TRADEBUS_MANAGEMENT_URL is http:// (use https://)"
    ]
    settings = Settings.from_env({**TLS_ENV, "TRADEBUS_MANAGEMENT_URL": "https://rabbit:15671"})
    assert settings.management.base_url == "https://rabbit:15671"
    assert Settings.from_env(TLS_ENV).management.base_url == "https://rabbit:15671"


def test_one_error_names_every_offending_setting_and_no_password() -> None:
    error = refused(
        TRADEBUS_BROKER_URL=f"amqp://svc:{SECRET}@rabbit:5672//",
        TRADEBUS_REDIS_URL=f"redis://:{SECRET}@redis:6379/0",
        TRADEBUS_MANAGEMENT_URL=f"http://svc:{SECRET}@rabbit:15672",
    )
    assert str(error) == (
        "TRADEBUS_REQUIRE_TLS=1 refuses connections without TLS: "
        "TRADEBUS_BROKER_URL is amqp:// (use amqps://); TRADEBUS_REDIS_URL is redis:// (use rediss://); "
        "TRADEBUS_MANAGEMENT_URL is http:// (use https://)"
    )
    assert SECRET not in str(error) and SECRET not in repr(error)
    assert not isinstance(error, SettingsError)  # its own exit code, not a usage error


def test_without_the_mode_plain_urls_stay_allowed() -> None:
    for value in ("0", "false", "no"):
        assert not Settings.from_env({"TRADEBUS_REQUIRE_TLS": value}).tls.required
    with pytest.raises(SettingsError):
        Settings.from_env({"TRADEBUS_REQUIRE_TLS": "maybe"})


def test_a_changed_broker_is_checked_too_a_demos_or_a_clients() -> None:
    settings = Settings.from_env(TLS_ENV)
    with pytest.raises(InsecureConnection, match="TRADEBUS_BROKER_URL is amqp://"):
        settings.with_(broker_url="amqp://guest:guest@localhost//")
    assert settings.with_(broker_url="memory://").broker_url == "memory://"  # the embedded demo
    with pytest.raises(InsecureConnection):
        tls.broker_connection(settings, "amqp://guest:guest@localhost//")


def test_letrade_client_refuses_a_plain_broker_before_connecting() -> None:
    app = create_app(letrade.build(), Settings.from_env(TLS_ENV), main="tls-only-letrade")
    try:
        with pytest.raises(InsecureConnection):
            LetradeBus("amqp://guest:guest@localhost//", app=app).connect()
        with using(app), pytest.raises(InsecureConnection):
            LetradeBus("amqp://guest:guest@localhost//")
    finally:
        app.close()


def test_flower_refuses_a_plain_broker_api_and_verifies_https_with_the_brokers_ca() -> None:
    settings = Settings.from_env({**TLS_ENV, "TRADEBUS_BROKER_CA_FILE": "/tls/ca.pem"})
    options = {"basic_auth": ["op:pw"], "broker_api": f"http://svc:{SECRET}@rabbit:15672/api/"}
    with pytest.raises(InsecureConnection) as caught:
        flower.plan(options, settings, {})
    assert SECRET not in str(caught.value) and "--broker_api is http://" in str(caught.value)
    decided = flower.plan({**options, "broker_api": None}, settings, {})
    assert decided.changes["broker_api"].startswith("https://")
    assert flower.https_defaults(settings) == {"validate_cert": True, "ca_certs": "/tls/ca.pem"}


@pytest.fixture
def listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that counts who connects to it."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "tradebus.ops.cli", "health"],
        [sys.executable, "-m", "celery", "-A", "tradebus", "worker", "-Q", "order_requests"],
    ],
    ids=["tradebus-health", "celery-worker"],
)
def test_a_plain_url_stops_the_cli_and_the_worker_with_one_line_and_exit_insecure_never_connecting(
    argv: list[str], listener: tuple[int, list[socket.socket]]
) -> None:
    port, accepted = listener
    env = {
        **os.environ,
        "TRADEBUS_REQUIRE_TLS": "1",
        "TRADEBUS_BROKER_URL": f"amqp://svc:{SECRET}@127.0.0.1:{port}//",
        "TRADEBUS_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{port}/0",
    }
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == ExitCode.INSECURE == 7
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TRADEBUS_BROKER_URL is amqp://" in lines[0] and "TRADEBUS_REDIS_URL is redis://" in lines[0]
    assert SECRET not in result.stderr + result.stdout
    assert accepted == []
