"""Letrade's JWT as data: what a token claims, what verification refuses and why, the settings."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tradebus.errors import (
    BadSignature,
    Reason,
    SettingsError,
    StaleSignature,
    Unsigned,
    UntrustedSigner,
)
from tradebus.letrade import tokens
from tradebus.settings import JWTSettings, Settings

STRATEGY_KEY = "s" * 40
CONNECTOR_KEY = "x" * 40
BODY = b'{"message_id":"m-1","timestamp":"2024-01-01T10:00:00.000Z","source":"strategy_900","payload":{}}'
CONNECTOR = JWTSettings.from_env(
    {
        "TRADEBUS_JWT_SERVICE": "exchange_connector",
        "TRADEBUS_JWT_KEY": CONNECTOR_KEY,
        "TRADEBUS_JWT_TRUSTED_KEYS": f"strategy_900:{STRATEGY_KEY}",
        "TRADEBUS_JWT_REQUIRED": "1",
    }
)


def token(body: bytes = BODY, key: str = STRATEGY_KEY, issuer: str = "strategy_900", **overrides: Any) -> str:
    fields: dict[str, Any] = {"message_id": "m-1", "audience": "letrade", "ttl": 60.0, **overrides}
    return tokens.issue(body, issuer=issuer, key=key, **fields)


def verify(tok: Any, body: bytes = BODY, **overrides: Any) -> Any:
    fields: dict[str, Any] = {"message_id": "m-1", "attempt": 0, "source": "strategy_900", **overrides}
    return tokens.verify(tok, body, settings=CONNECTOR, **fields)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": "strategy_900", "aud": "letrade", "iat": now, "exp": now + 60, "jti": "m-1"}
    return {**base, "body_sha256": tokens.digest(BODY), **changes}


def test_a_token_names_its_issuer_audience_message_body_and_a_short_life() -> None:
    got = verify(token(now=1_000_000.0), now=1_000_010.0)
    assert got == {
        "iss": "strategy_900",
        "aud": "letrade",
        "iat": 1_000_000,
        "exp": 1_000_060,
        "jti": "m-1",
        "body_sha256": tokens.digest(BODY),
    }
    assert jwt.get_unverified_header(token())["alg"] == "HS256"


def test_a_missing_token_is_unsigned() -> None:
    for missing in (None, ""):
        with pytest.raises(Unsigned) as caught:
            verify(missing)
        assert caught.value.reason == Reason.UNSIGNED


def test_alg_none_is_refused_even_with_every_claim_right() -> None:
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    with pytest.raises(BadSignature, match="algorithm 'none' refused"):
        verify(unsigned)


def test_rs256_is_refused_whatever_key_signed_it() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BadSignature, match="algorithm 'RS256' refused"):
        verify(jwt.encode(claims(), pem, algorithm="RS256"))


def test_other_hmac_algorithms_are_refused_too() -> None:
    with pytest.raises(BadSignature, match="'HS512' refused"):
        verify(jwt.encode(claims(), STRATEGY_KEY + "x" * 30, algorithm="HS512"))


def test_an_expired_token_is_stale() -> None:
    with pytest.raises(StaleSignature, match="expired") as caught:
        verify(token(now=time.time() - 120))
    assert caught.value.reason == Reason.STALE_SIGNATURE
    # Within the leeway it still passes.
    verify(token(now=time.time() - 60 - tokens.LEEWAY + 2))


def test_a_token_from_the_future_or_living_longer_than_we_accept_is_stale() -> None:
    with pytest.raises(StaleSignature, match="in the future"):
        verify(token(now=time.time() + 30))
    with pytest.raises(StaleSignature, match="lives 3600s"):
        verify(token(ttl=3600.0))


def test_a_token_for_another_audience_is_refused() -> None:
    with pytest.raises(BadSignature, match="not for audience 'letrade'"):
        verify(token(audience="mastertrade"))


def test_an_issuer_whose_key_is_not_trusted_is_refused() -> None:
    with pytest.raises(UntrustedSigner, match="'intruder'") as caught:
        verify(token(issuer="intruder", key="i" * 40), source="intruder")
    assert caught.value.reason == Reason.UNTRUSTED_SIGNER


def test_a_token_under_the_wrong_key_is_a_bad_signature() -> None:
    with pytest.raises(BadSignature, match="does not verify"):
        verify(token(key="w" * 40))


def test_a_tampered_body_fails_its_digest() -> None:
    tampered = BODY.replace(b'"payload":{}', b'"payload":{"amount":100}')
    with pytest.raises(BadSignature, match="does not match the message body"):
        verify(token(), tampered)


def test_a_token_cannot_be_moved_to_another_message_id_or_attempt() -> None:
    with pytest.raises(BadSignature, match="for message 'm-1', not 'm-2'"):
        verify(token(), message_id="m-2")
    with pytest.raises(BadSignature, match="for attempt 0, not 1"):
        verify(token(), attempt=1)


def test_the_issuer_must_be_the_envelopes_source() -> None:
    # A trusted service's token on a message that claims to come from another service.
    with pytest.raises(BadSignature, match="issued by 'strategy_900' for a message from 'capital_manager'"):
        verify(token(), source="capital_manager")


def test_a_retry_carries_the_workers_own_token_for_its_attempt() -> None:
    retry = token(issuer="exchange_connector", key=CONNECTOR_KEY, attempt=2)
    assert verify(retry, attempt=2)["attempt"] == 2
    # The worker's token is no good for a first delivery (its issuer is not the source) ...
    with pytest.raises(BadSignature):
        verify(token(issuer="exchange_connector", key=CONNECTOR_KEY))
    # ... and a publisher's token cannot pass for a retry.
    with pytest.raises(BadSignature, match="by 'strategy_900' for a message from 'exchange_connector'"):
        verify(token(attempt=1), attempt=1)


def test_a_missing_claim_or_garbage_is_a_bad_signature() -> None:
    without_digest = {k: v for k, v in claims().items() if k != "body_sha256"}
    with pytest.raises(BadSignature, match="body_sha256"):
        verify(jwt.encode(without_digest, STRATEGY_KEY, algorithm="HS256"))
    with pytest.raises(BadSignature, match="malformed"):
        verify("not.a.token")
    with pytest.raises(BadSignature):
        verify(12)


def test_outgoing_issues_for_this_service_only_and_nothing_without_a_key() -> None:
    keyed = JWTSettings(service="strategy_900", key=STRATEGY_KEY)  # type: ignore[arg-type]
    headers = tokens.outgoing(BODY, message_id="m-1", source="strategy_900", settings=keyed)
    assert verify(headers[tokens.TOKEN_HEADER])["iss"] == "strategy_900"
    assert tokens.outgoing(BODY, message_id="m-1", source="strategy_900", settings=JWTSettings()) == {}
    with pytest.raises(SettingsError, match="cannot issue the token of a message from 'other'"):
        tokens.outgoing(BODY, message_id="m-1", source="other", settings=keyed)


def test_admit_does_nothing_unless_required_and_refuses_what_is_not_a_raw_body() -> None:
    tokens.admit(JWTSettings(), "q", b"anything", {}, message_id="m")
    with pytest.raises(Unsigned, match="only a message from the broker"):
        tokens.admit(CONNECTOR, "q", {"already": "decoded"}, {}, message_id="m")


def test_settings_mirror_signing_and_hide_keys() -> None:
    assert CONNECTOR.trusted.keys() == {"strategy_900", "exchange_connector"}  # it trusts itself
    assert (CONNECTOR.ttl, CONNECTOR.audience, CONNECTOR.required) == (60.0, "letrade", True)
    keyed = Settings.from_env({"TRADEBUS_JWT_SERVICE": "a", "TRADEBUS_JWT_KEY": "k" * 40})
    assert "k" * 40 not in repr(keyed)
    bad = [
        ({"TRADEBUS_JWT_KEY": "k" * 40}, "set together"),
        ({"TRADEBUS_JWT_SERVICE": "a", "TRADEBUS_JWT_KEY": "short"}, "at least 32"),
        ({"TRADEBUS_JWT_REQUIRED": "1"}, "TRADEBUS_JWT_REQUIRED=1 needs"),
        ({"TRADEBUS_JWT_TRUSTED_KEYS": "no-colon"}, "service:key"),
        ({"TRADEBUS_JWT_TTL": "0"}, "TRADEBUS_JWT_TTL"),
    ]
    for environ, message in bad:
        with pytest.raises(SettingsError, match=message):
            JWTSettings.from_env(environ)
    assert JWTSettings.from_env({"TRADEBUS_JWT_TTL": "120"}).ttl == 120.0


def test_the_worker_issues_its_retry_a_token_of_its_own_for_the_next_attempt() -> None:
    from types import SimpleNamespace

    request = SimpleNamespace(id="m-1", retries=1, args=(BODY,))
    task = SimpleNamespace(app=SimpleNamespace(settings=SimpleNamespace(jwt=CONNECTOR)), request=request)
    retry = tokens.retry_headers(task)[tokens.TOKEN_HEADER]
    got = verify(retry, attempt=2)
    assert (got["iss"], got["attempt"]) == ("exchange_connector", 2)
    assert (
        tokens.retry_headers(
            SimpleNamespace(app=SimpleNamespace(settings=SimpleNamespace(jwt=JWTSettings())), request=request)
        )
        == {}
    )
