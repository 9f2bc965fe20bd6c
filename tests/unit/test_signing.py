"""Message signing as data: the canonical form, what a signature covers, the window, the replay nonce."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tradebus import signing
from tradebus.errors import (
    BadSignature,
    SettingsError,
    SignatureCheckUnavailable,
    StaleSignature,
    Unsigned,
    UntrustedSigner,
)
from tradebus.settings import Settings, SigningSettings

RISK_KEY = "r" * 40
STRATEGY_KEY = "s" * 40
BODY = b'{"type":"order_request","symbol":"BTCUSDT"}'
ROUTE = {"exchange": "mastertrade.orders", "routing_key": "order.request.BTCUSDT"}
EXECUTOR = SigningSettings.from_env(
    {
        "TRADEBUS_SIGNING_SERVICE": "execution",
        "TRADEBUS_SIGNING_KEY": "e" * 40,
        "TRADEBUS_SIGNING_TRUSTED_KEYS": f"risk:{RISK_KEY}",
        "TRADEBUS_SIGNING_REQUIRED": "1",
    }
)


def signed(
    body: bytes = BODY, key: str = RISK_KEY, service: str = "risk", **overrides: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {"message_id": "m-1", "content_type": "application/json", **ROUTE, **overrides}
    return signing.sign(body, service=service, key=key, **fields)


def check(headers: dict[str, Any], body: bytes = BODY, **overrides: Any) -> str:
    fields: dict[str, Any] = {
        "message_id": "m-1",
        "attempt": 0,
        "content_type": "application/json",
        **ROUTE,
        **overrides,
    }
    return signing.verify(body, headers, settings=EXECUTOR, **fields)


def test_a_message_signed_by_a_trusted_key_verifies_and_names_its_signer() -> None:
    headers = signed()
    assert set(headers) == {"x-tradebus-signer", "x-tradebus-signed-at", "x-tradebus-signature"}
    assert headers["x-tradebus-signature"].startswith("v1=")
    assert check(headers) == "risk"


def test_the_canonical_form_is_the_documented_lines() -> None:
    form = signing.canonical(
        signer="risk",
        message_id="m-1",
        attempt=0,
        signed_at=1700000000000,
        exchange="mastertrade.orders",
        routing_key="order.request.BTCUSDT",
        content_type="application/json",
        body=b"{}",
    )
    assert form.decode().split("\n") == [
        "tradebus-v1",
        "risk",
        "m-1",
        "0",
        "1700000000000",
        "mastertrade.orders",
        "order.request.BTCUSDT",
        "application/json",
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    ]


def test_a_body_changed_after_signing_is_a_bad_signature() -> None:
    with pytest.raises(BadSignature, match="does not match"):
        check(signed(), body=BODY.replace(b"BTCUSDT", b"ETHUSDT"))


@pytest.mark.parametrize(
    "change",
    [
        {"routing_key": "order.request.ETHUSDT"},
        {"exchange": "mastertrade.trading"},
        {"message_id": "m-2"},
        {"attempt": 1},
        {"content_type": "application/x-python-serialize"},
    ],
    ids=["routing-key", "exchange", "message-id", "attempt", "content-type"],
)
def test_every_field_of_the_canonical_form_is_covered(change: dict[str, Any]) -> None:
    with pytest.raises(BadSignature):
        check(signed(), **change)


def test_a_signature_made_with_another_key_under_a_trusted_name_is_bad() -> None:
    with pytest.raises(BadSignature):
        check(signed(key=STRATEGY_KEY, service="risk"))


def test_a_signer_whose_key_is_not_trusted_is_refused_by_name() -> None:
    with pytest.raises(UntrustedSigner, match="strategy"):
        check(signed(key=STRATEGY_KEY, service="strategy"))


def test_no_signature_at_all_is_unsigned_and_half_a_signature_is_bad() -> None:
    with pytest.raises(Unsigned):
        check({})
    headers = signed()
    del headers["x-tradebus-signed-at"]
    with pytest.raises(BadSignature, match="incomplete"):
        check(headers)


@pytest.mark.parametrize("offset", [-400.0, 400.0], ids=["too-old", "from-the-future"])
def test_a_signature_outside_the_window_is_stale(offset: float) -> None:
    headers = signed(now=time.time() + offset)
    with pytest.raises(StaleSignature):
        check(headers)


def test_a_field_with_a_line_break_cannot_be_signed_or_verified() -> None:
    with pytest.raises(BadSignature, match="line break"):
        signed(message_id="m-1\nrisk")


def test_a_service_without_a_key_adds_no_signature_and_one_with_a_key_signs() -> None:
    fields: dict[str, Any] = {"message_id": "m-1", "content_type": "application/json", **ROUTE}
    assert signing.outgoing(BODY, settings=SigningSettings(), **fields) == {}
    headers = signing.outgoing(BODY, settings=EXECUTOR, **fields)
    assert headers["x-tradebus-signer"] == "execution"


def test_signing_settings_come_from_the_environment_and_a_service_trusts_itself() -> None:
    assert EXECUTOR.required
    assert {name: key.get_secret_value() for name, key in EXECUTOR.trusted.items()} == {
        "risk": RISK_KEY,
        "execution": "e" * 40,
    }
    assert EXECUTOR.window == 300.0
    assert "e" * 40 not in repr(EXECUTOR)


@pytest.mark.parametrize(
    "environ",
    [
        {"TRADEBUS_SIGNING_SERVICE": "risk", "TRADEBUS_SIGNING_KEY": "short"},
        {"TRADEBUS_SIGNING_SERVICE": "risk"},
        {"TRADEBUS_SIGNING_REQUIRED": "1"},
        {"TRADEBUS_SIGNING_TRUSTED_KEYS": "risk=" + RISK_KEY},
        {"TRADEBUS_SIGNING_REQUIRED": "maybe"},
        {"TRADEBUS_SIGNING_WINDOW": "0"},
    ],
    ids=["short-key", "name-without-key", "required-without-own-key", "bad-list", "bad-flag", "no-window"],
)
def test_a_signing_configuration_that_cannot_work_is_refused_at_startup(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(environ)


def test_redis_unreachable_during_the_replay_check_is_transient_never_a_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    from tradebus import store
    from tradebus.retries import is_transient

    monkeypatch.setattr(store, "_override", [redis.Redis(port=1, socket_connect_timeout=0.5)])
    with pytest.raises(SignatureCheckUnavailable) as caught:
        signing.claim("order_requests", "risk", "m-1", 0, window=300, redelivered=False)
    assert is_transient(caught.value)


def test_retry_headers_vouch_for_the_next_attempt_with_the_workers_own_key() -> None:
    class Request:
        id = "m-1"
        retries = 0
        args = (BODY.decode(),)

    class App:
        settings = Settings().with_(signing=EXECUTOR)

    class Task:
        app = App()
        request = Request()

        def origin(self) -> tuple[str, str]:
            return ROUTE["exchange"], ROUTE["routing_key"]

    headers = signing.retry_headers(Task(), "application/json")
    assert headers["x-tradebus-signer"] == "execution"
    assert check(headers, attempt=1) == "execution"
    with pytest.raises(BadSignature):
        check(headers, attempt=0)
