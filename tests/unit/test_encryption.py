"""Field-level encryption: the keyring (AES-256-GCM), sealing and opening a message's sensitive fields,
the settings that carry the keys, and both buses' wire paths."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import SecretStr

from tradebus.encryption import (
    Keyring,
    associated_data,
    is_sealed,
    new_key,
    parse_keys,
    seal,
    unseal,
)
from tradebus.errors import EncryptionUnavailable, Reason, SettingsError, Undecryptable
from tradebus.letrade import messages as letrade
from tradebus.letrade.payloads import ErrorReport
from tradebus.mastertrade.messages import ConfigChange, OrderRequest
from tradebus.mastertrade.wire import encode, parse_wire, to_message
from tradebus.ops.dlq import NEVER_REPLAYED
from tradebus.settings import EncryptionSettings, Settings

SECRET = "sk-live-0123456789abcdefSECRET"
OLD, NEW = new_key(), new_key()
AAD = associated_data("mastertrade", "config_change", "api_key")


def keyring(listed: str) -> Keyring:
    return Keyring(parse_keys(listed))


def api_key_update(**fields: str) -> ConfigChange:
    return ConfigChange(
        change_type="api_key_update",
        service="order_executor",
        venue="binance",
        api_key=SecretStr(fields.get("api_key", "AKIA-public-part")),
        api_secret=SecretStr(fields.get("api_secret", SECRET)),
    )


# --- the keyring -------------------------------------------------------------------------------------


def test_a_sealed_value_names_its_key_and_opens_only_with_its_associated_data() -> None:
    ring = keyring(f"k1:{OLD}")
    token = ring.encrypt(SECRET.encode(), AAD)
    assert token.startswith("enc:v1:k1:") and is_sealed(token)
    assert SECRET not in token
    assert ring.decrypt(token, AAD) == SECRET.encode()
    with pytest.raises(Undecryptable, match="does not authenticate"):
        ring.decrypt(token, associated_data("mastertrade", "config_change", "api_secret"))
    assert ring.encrypt(SECRET.encode(), AAD) != token  # a fresh nonce every time


def test_tampered_truncated_or_unknown_key_values_are_undecryptable_without_quoting_them() -> None:
    ring = keyring(f"k1:{OLD}")
    token = ring.encrypt(SECRET.encode(), AAD)
    head, body = token.rsplit(":", 1)
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad, why in (
        (f"{head}:{flipped}", "does not authenticate"),
        (f"{head}:{body[:10]}", "too short"),
        (token.replace("enc:v1:k1:", "enc:v1:k9:"), "unknown key id 'k9'"),
        ("enc:v1:nocolon", "malformed"),
        (f"{head}:***", "not base64"),
    ):
        with pytest.raises(Undecryptable, match=why) as caught:
            ring.decrypt(bad, AAD)
        assert body not in str(caught.value)


def test_rotation_the_first_key_encrypts_and_every_listed_key_decrypts() -> None:
    old = keyring(f"old:{OLD}")
    rotated = keyring(f"new:{NEW},old:{OLD}")
    assert rotated.current == "new" and rotated.kids == ("new", "old")
    from_old = old.encrypt(b'"x"', AAD)
    assert rotated.decrypt(from_old, AAD) == b'"x"'
    assert rotated.encrypt(b'"x"', AAD).startswith("enc:v1:new:")
    with pytest.raises(Undecryptable, match="unknown key id 'new'"):
        old.decrypt(rotated.encrypt(b'"x"', AAD), AAD)


@pytest.mark.parametrize(
    ("listed", "why"),
    [
        ("k1", "kid:base64key"),
        ("bad kid:" + OLD, "kid:base64key"),
        ("k1:!!!", "not base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "32 bytes"),
        (f"k1:{OLD},k1:{NEW}", "listed twice"),
    ],
    # The keys are random per run: stable ids keep collection identical across pytest-xdist workers.
    ids=["no colon", "bad kid", "not base64", "short key", "listed twice"],
)
def test_malformed_keys_are_refused_without_echoing_the_key(listed: str, why: str) -> None:
    with pytest.raises(SettingsError, match=why) as caught:
        parse_keys(listed)
    assert OLD not in str(caught.value) and NEW not in str(caught.value)


def test_urlsafe_and_unpadded_base64_keys_are_accepted() -> None:
    raw = base64.urlsafe_b64encode(base64.b64decode(OLD)).decode().rstrip("=")
    assert parse_keys(f"k1:{raw}") == {"k1": base64.b64decode(OLD)}


# --- sealing a message's JSON object ------------------------------------------------------------------


def test_seal_then_unseal_round_trips_any_json_value_and_leaves_null_fields_alone() -> None:
    ring = keyring(f"k1:{OLD}")
    data = {"a": {"b": SECRET, "n": 1.5}, "c": None, "d": [1, 2]}
    sealed = seal(data, ("a.b", "a.n", "c", "d", "missing.x"), "bus", "t", ring)
    assert sealed["c"] is None and data["a"]["b"] == SECRET  # the input is left as it was
    assert all(is_sealed(v) for v in (sealed["a"]["b"], sealed["a"]["n"], sealed["d"]))
    assert SECRET not in json.dumps(sealed)
    assert unseal(sealed, ("a.b", "a.n", "c", "d"), "bus", "t", ring) == data


def test_unseal_refuses_plaintext_a_value_moved_to_another_field_and_a_missing_keyring() -> None:
    ring = keyring(f"k1:{OLD}")
    sealed = seal({"api_key": "k", "api_secret": SECRET}, ("api_key", "api_secret"), "b", "t", ring)
    with pytest.raises(Undecryptable, match=r"t\.api_key is sensitive and arrived in plaintext"):
        unseal({"api_key": "k"}, ("api_key",), "b", "t", ring)
    swapped = {"api_key": sealed["api_secret"], "api_secret": sealed["api_key"]}
    with pytest.raises(Undecryptable, match="does not authenticate"):
        unseal(swapped, ("api_key", "api_secret"), "b", "t", ring)
    with pytest.raises(Undecryptable, match="does not authenticate"):  # another message type
        unseal(sealed, ("api_key",), "b", "other", ring)
    with pytest.raises(Undecryptable, match="no key"):
        unseal(sealed, ("api_key",), "b", "t", None)


def test_sealing_a_value_without_a_key_is_refused() -> None:
    with pytest.raises(EncryptionUnavailable, match="TRADEBUS_ENCRYPTION_KEYS"):
        seal({"api_key": "k"}, ("api_key",), "b", "t", None)
    assert seal({"api_key": None}, ("api_key",), "b", "t", None) == {"api_key": None}


# --- settings -----------------------------------------------------------------------------------------


def test_settings_read_the_keys_in_order_and_never_show_them() -> None:
    settings = Settings.from_env({"TRADEBUS_ENCRYPTION_KEYS": f"new:{NEW}, old:{OLD}"})
    assert settings.encryption.enabled
    assert settings.encryption.keyring is not None
    assert settings.encryption.keyring.kids == ("new", "old")
    assert settings.encryption.keyring is settings.encryption.keyring  # built once
    assert NEW not in repr(settings) and OLD not in repr(settings) and NEW not in str(settings.encryption)
    assert Settings.from_env({}).encryption.keyring is None
    with pytest.raises(SettingsError, match="32 bytes"):
        Settings.from_env({"TRADEBUS_ENCRYPTION_KEYS": "k1:YWJj"})


# --- MasterTrade's wire -------------------------------------------------------------------------------


def test_mastertrade_api_key_update_is_sealed_on_the_wire_and_opened_by_parse() -> None:
    ring = keyring(f"k1:{OLD}")
    body = encode(to_message(api_key_update()), ring)
    assert SECRET.encode() not in body and b"AKIA-public-part" not in body
    assert json.loads(body)["venue"] == "binance"  # what is not sensitive stays readable
    message = parse_wire(body, "application/json", ring)
    assert isinstance(message, ConfigChange)
    assert message.api_secret is not None and message.api_secret.get_secret_value() == SECRET
    assert SECRET not in repr(message)  # a handler's log line does not show it


def test_mastertrade_refuses_to_encode_a_secret_without_a_key_and_to_parse_one_in_plaintext() -> None:
    with pytest.raises(EncryptionUnavailable):
        encode(api_key_update(), None)
    ring = keyring(f"k1:{OLD}")
    plain = json.dumps(api_key_update().model_dump(mode="json") | {"api_secret": SECRET}).encode()
    with pytest.raises(Undecryptable) as caught:
        parse_wire(plain, "application/json", ring)
    assert caught.value.reason == Reason.UNDECRYPTABLE and SECRET not in str(caught.value)
    with pytest.raises(Undecryptable, match="no key"):
        parse_wire(encode(api_key_update(), ring), "application/json", None)


def test_messages_without_sensitive_values_need_no_key() -> None:
    change = ConfigChange(change_type="risk_limits", description="max drawdown 10%")
    assert parse_wire(encode(change), "application/json") == change
    order = OrderRequest(request_id="r1", strategy_id="s1", symbol="BTCUSDT", side="BUY", quantity=1.0)
    assert parse_wire(encode(order), "application/json") == order


def test_to_message_keeps_the_secret_of_a_model_it_revalidates() -> None:
    message = to_message(api_key_update())
    assert isinstance(message, ConfigChange) and message.api_secret is not None
    assert message.api_secret.get_secret_value() == SECRET


# --- Letrade's wire (no seed payload is sensitive: a payload that declares a field is sealed) ----------


def test_letrade_seals_what_a_payload_declares_sensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = keyring(f"k1:{OLD}")
    message = letrade.build(letrade.ErrorMessage, {"error_type": "auth", "error_message": SECRET}, "engine")
    # Nothing declared sensitive: readable (and the payload's sensitive paths remembered, messages.py).
    assert SECRET.encode() in letrade.encode(message, ring)
    with monkeypatch.context() as patch:
        patch.setattr(ErrorReport, "sensitive", ("error_message",))
        body = letrade.encode(message, ring)
        assert SECRET.encode() not in body
        parsed = letrade.parse(body, "events.error", "application/json", ring)
        assert isinstance(parsed.payload, ErrorReport) and parsed.payload.error_message == SECRET
        with pytest.raises(Undecryptable, match="no key"):
            letrade.parse(body, "events.error", "application/json", None)
        with pytest.raises(EncryptionUnavailable):
            letrade.encode(message, None)
    assert SECRET.encode() in letrade.encode(message, ring)  # the declaration undone: readable again


def test_dlq_replay_never_sends_an_undecryptable_message_again() -> None:
    assert Reason.UNDECRYPTABLE in NEVER_REPLAYED


def test_encryption_settings_reject_bad_keys_given_in_code() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        EncryptionSettings(keys={"k1": SecretStr("YWJj")})


@pytest.mark.parametrize(
    "field, value", [("venue", "kraken"), ("service", "order_execution"), ("timestamp", 1.0)]
)
def test_a_sealed_credential_copied_into_another_message_does_not_open(field: str, value: object) -> None:
    # A broker operator (or anyone who can publish) lifts the sealed secret out of one key update and puts
    # it into a change for another venue or service, or sends it again later: the rest of the message is
    # part of what the ciphertext is bound to.
    ring = Keyring({"new": base64.b64decode(NEW)})
    sealed = json.loads(encode(to_message(api_key_update()), ring))
    assert parse_wire(json.dumps(sealed).encode(), "application/json", ring).api_secret is not None
    moved = sealed | {field: value}
    with pytest.raises(Undecryptable, match="does not authenticate"):
        parse_wire(json.dumps(moved).encode(), "application/json", ring)
