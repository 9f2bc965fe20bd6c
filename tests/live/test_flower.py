"""Flower as an operator starts it, ``celery -A tradebus flower``: never open without a login."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.flower import FlowerProcess
from tradebus.errors import FlowerRefused
from tradebus.ops.flower import broker_api, plan
from tradebus.settings import Settings

USER, PASSWORD = "operator", "flower-test-password"
NO_OPTIONS: dict[str, Any] = {
    "basic_auth": [],
    "auth": "",
    "address": "",
    "unix_socket": "",
    "broker_api": None,
}


def settings(**environ: str) -> Settings:
    return Settings.from_env({"TRADEBUS_BROKER_URL": "amqp://svc:s%40cret@rabbit:5672/trading", **environ})


def test_without_any_login_flower_listens_on_loopback_only_and_says_so() -> None:
    decided = plan(NO_OPTIONS, settings(), {})
    assert decided.changes["address"] == "127.0.0.1"
    assert "127.0.0.1 only" in decided.warnings[0]


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.7", "flower.example"])
def test_a_public_address_without_a_login_is_refused(address: str) -> None:
    with pytest.raises(FlowerRefused, match=address):
        plan(NO_OPTIONS | {"address": address}, settings(), {})


def test_an_explicit_loopback_address_without_a_login_is_kept() -> None:
    assert "address" not in plan(NO_OPTIONS | {"address": "::1"}, settings(), {}).changes


def test_the_login_comes_from_tradebus_settings_and_then_any_address_is_allowed() -> None:
    decided = plan(
        NO_OPTIONS | {"address": "0.0.0.0"},
        settings(TRADEBUS_FLOWER_USER=USER, TRADEBUS_FLOWER_PASSWORD=PASSWORD),
        {},
    )
    assert decided.changes["basic_auth"] == [f"{USER}:{PASSWORD}"]
    assert "address" not in decided.changes
    assert PASSWORD not in " ".join(decided.notes + decided.warnings)


def test_flowers_own_login_wins_over_tradebus_settings() -> None:
    decided = plan(
        NO_OPTIONS | {"basic_auth": ["ops:other"]},
        settings(TRADEBUS_FLOWER_USER=USER, TRADEBUS_FLOWER_PASSWORD=PASSWORD),
        {},
    )
    assert "basic_auth" not in decided.changes
    assert "address" not in decided.changes


def test_flowers_switch_for_an_unauthenticated_api_is_refused() -> None:
    with pytest.raises(FlowerRefused, match="FLOWER_UNAUTHENTICATED_API"):
        plan(NO_OPTIONS, settings(), {"FLOWER_UNAUTHENTICATED_API": "true"})


def test_the_broker_view_uses_the_management_api_with_tradebus_login() -> None:
    assert broker_api(settings()) == "http://svc:s%40cret@rabbit:15672/api/"
    explicit = settings(TRADEBUS_MANAGEMENT_URL="https://ops:x@mgmt.example/rabbitmq/")
    assert broker_api(explicit) == "https://ops:x@mgmt.example/rabbitmq/api/"
    assert (
        "broker_api" not in plan(NO_OPTIONS | {"broker_api": "http://u:p@h:1/api/"}, settings(), {}).changes
    )


# --- a real Flower -------------------------------------------------------------------------------------


def get(url: str, login: tuple[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``url``: (status, body), 4xx included."""
    request = urllib.request.Request(url)
    if login is not None:
        token = base64.b64encode(":".join(login).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.broker
@pytest.mark.slow
def test_flower_api_refuses_requests_without_credentials_and_answers_with_them(
    broker: object, start_flower: Callable[..., FlowerProcess]
) -> None:
    flower = start_flower({"TRADEBUS_FLOWER_USER": USER, "TRADEBUS_FLOWER_PASSWORD": PASSWORD})
    assert get(f"{flower.url}/api/workers")[0] == 401
    assert get(f"{flower.url}/api/workers", (USER, "wrong"))[0] == 401
    assert get(f"{flower.url}/workers")[0] == 401
    status, body = get(f"{flower.url}/api/workers", (USER, PASSWORD))
    assert status == 200
    assert body.startswith(b"{")
    assert get(f"{flower.url}/broker", (USER, PASSWORD))[0] == 200
    # Flower 2.2 serves these two without a login (docs/security.md): no contents, no credentials.
    assert get(f"{flower.url}/healthcheck")[0] == 200
    status, metrics = get(f"{flower.url}/metrics")
    assert status == 200 and PASSWORD.encode() not in metrics
    assert PASSWORD not in flower.output()


@pytest.mark.broker
@pytest.mark.slow
def test_flower_without_a_login_listens_on_loopback_only_and_still_refuses_its_api(
    broker: object, start_flower: Callable[..., FlowerProcess]
) -> None:
    flower = start_flower()
    assert listening_addresses(flower.port) == {"0100007F"}  # 127.0.0.1, and nothing else
    assert "listening on 127.0.0.1 only" in flower.output()
    assert get(f"{flower.url}/api/workers")[0] == 401


@pytest.mark.broker
def test_flower_asked_to_listen_publicly_without_a_login_does_not_start(
    broker: object, start_flower: Callable[..., FlowerProcess]
) -> None:
    flower = start_flower(None, "--address=0.0.0.0", wait=False)
    assert flower.process.wait(60) == 2
    assert "refusing to listen on 0.0.0.0 without a login" in flower.output()
    assert listening_addresses(flower.port) == set()


@pytest.mark.parametrize(
    "environ",
    [{"TRADEBUS_FLOWER_USER": USER}, {"TRADEBUS_FLOWER_PASSWORD": PASSWORD}, {"TRADEBUS_FLOWER_USER": "a:b"}],
    ids=["user-only", "password-only", "colon-in-user"],
)
def test_half_a_flower_login_stops_tradebus_at_startup(environ: dict[str, str]) -> None:
    from tradebus.errors import SettingsError

    with pytest.raises(SettingsError):
        Settings.from_env(environ)
