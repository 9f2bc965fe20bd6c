"""Field-level encryption of the sensitive fields a message type declares (AES-256-GCM, docs/security.md).

A sensitive value travels as one string, ``enc:v1:<kid>:<base64url(nonce || ciphertext || tag)>``: the key
id says which key opens it, the 12-byte nonce is random per value, and the plaintext is the value's JSON
(a string, a number, an object). The associated data binds the ciphertext to where it belongs,
``tradebus-enc-v1|<bus>|<message type>|<field path>|<sha256 of the rest of the message>``: moved to another
field, another message type, or another message (a credential copied into a change for another service or
venue, or an old one sent again under a new timestamp), it no longer opens. "The rest" is the message's
JSON object without its sensitive fields, canonical (sorted keys, no spaces), which publisher and consumer
compute alike.

A ``Keyring`` holds every key a service accepts; the first one encrypts. Rotation: put the new key first
and keep the old one after it until nothing encrypted with it is left in a queue or a DLQ, then drop it.

``seal`` and ``unseal`` work on a message's JSON object, between the pydantic model and the bytes on the
wire, so the models stay the contract: a handler gets the validated model with its plaintext values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, SecretBytes, SecretStr

from tradebus.errors import EncryptionUnavailable, SettingsError, Undecryptable

SCHEME = "enc:v1:"
#: AES-256: every key is 32 random bytes, e.g. ``base64.b64encode(os.urandom(32))``.
KEY_BYTES = 32
NONCE_BYTES = 12
KID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,32}$")
_AAD_PREFIX = "tradebus-enc-v1"


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not."""
    text = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def new_key() -> str:
    """A fresh key, base64, for ``TRADEBUS_ENCRYPTION_KEYS``."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_keys(listed: str) -> dict[str, bytes]:
    """``kid1:base64key,kid2:base64key`` as {kid: key}, in order; SettingsError names what is wrong
    (never the key itself)."""
    keys: dict[str, bytes] = {}
    for item in listed.split(","):
        if not item.strip():
            continue
        kid, sep, encoded = item.strip().partition(":")
        if not sep or not KID_PATTERN.match(kid):
            raise SettingsError(
                "TRADEBUS_ENCRYPTION_KEYS is a comma-separated list of kid:base64key "
                "(a kid is 1-32 letters, digits, '_' or '-')"
            )
        if kid in keys:
            raise SettingsError(f"TRADEBUS_ENCRYPTION_KEYS: key id {kid!r} is listed twice")
        try:
            key = _b64decode(encoded)
        except (binascii.Error, ValueError):
            raise SettingsError(f"TRADEBUS_ENCRYPTION_KEYS ({kid}): the key is not base64") from None
        if len(key) != KEY_BYTES:
            raise SettingsError(
                f"TRADEBUS_ENCRYPTION_KEYS ({kid}): a key is {KEY_BYTES} bytes (AES-256), not {len(key)}"
            )
        keys[kid] = key
    return keys


def associated_data(bus: str, message_type: str, path: str, context: str = "") -> bytes:
    """What a ciphertext is bound to: its bus, its message type, its field and (``context``) the digest of
    the rest of its message (``context_of``)."""
    return f"{_AAD_PREFIX}|{bus}|{message_type}|{path}|{context}".encode()


def context_of(data: Mapping[str, Any], fields: Iterable[str]) -> str:
    """The SHA-256 of ``data`` without its sensitive ``fields``, as canonical JSON: what binds a sealed
    value to the message around it."""
    rest = json.loads(json.dumps(data))
    for path in fields:
        holder, name = _parent(rest, path)
        if holder is not None:
            holder.pop(name, None)
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_sealed(value: Any) -> bool:
    """Whether ``value`` looks like a sealed value (not whether it opens)."""
    return isinstance(value, str) and value.startswith(SCHEME)


class Keyring:
    """The keys a service accepts for decryption, by key id; the first one encrypts."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise SettingsError("a keyring needs at least one key")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self.current = next(iter(keys))

    def __repr__(self) -> str:
        return f"Keyring(current={self.current!r}, kids={list(self._ciphers)!r})"

    @property
    def kids(self) -> tuple[str, ...]:
        """The key ids accepted, the encrypting one first."""
        return tuple(self._ciphers)

    def encrypt(self, plaintext: bytes, aad: bytes) -> str:
        """``plaintext`` sealed with the current key, bound to ``aad``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._ciphers[self.current].encrypt(nonce, plaintext, aad)
        return f"{SCHEME}{self.current}:{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"

    def decrypt(self, token: str, aad: bytes) -> bytes:
        """The plaintext of ``token``, or Undecryptable (which never quotes the token)."""
        if not is_sealed(token):
            raise Undecryptable("not a sealed value")
        kid, sep, encoded = token.removeprefix(SCHEME).partition(":")
        if not sep:
            raise Undecryptable("malformed sealed value")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise Undecryptable(f"unknown key id {kid[:32]!r}; this service has {', '.join(self.kids)}")
        try:
            sealed = _b64decode(encoded)
        except (binascii.Error, ValueError):
            raise Undecryptable(f"sealed value under key {kid!r} is not base64") from None
        if len(sealed) < NONCE_BYTES + 16:
            raise Undecryptable(f"sealed value under key {kid!r} is too short")
        try:
            return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise Undecryptable(
                f"sealed value under key {kid!r} does not authenticate (tampered, or not for this field)"
            ) from None


def _parent(data: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, str]:
    """The object holding the last part of dotted ``path`` in ``data``, and that part's name."""
    *parents, name = path.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), name


def revealed(model: BaseModel, fields: Iterable[str]) -> dict[str, Any]:
    """``model``'s JSON object with its sensitive ``fields`` in plaintext (a SecretStr dumps as stars)."""
    data = model.model_dump(mode="json")
    for path in fields:
        holder, name = _parent(data, path)
        value: Any = model
        for part in path.split("."):
            value = getattr(value, part, None)
        if holder is None or value is None:
            continue
        if isinstance(value, SecretStr | SecretBytes):
            secret = value.get_secret_value()
            holder[name] = secret.decode() if isinstance(secret, bytes) else secret
    return data


def seal(
    data: dict[str, Any], fields: Iterable[str], bus: str, message_type: str, keyring: Keyring | None
) -> dict[str, Any]:
    """A copy of ``data`` with every sensitive field that holds a value sealed; EncryptionUnavailable when
    there is a value and no key (a sensitive value is never sent in plaintext)."""
    data = json.loads(json.dumps(data))  # a deep copy, as JSON
    fields = tuple(fields)
    context = context_of(data, fields)
    for path in fields:
        holder, name = _parent(data, path)
        if holder is None or holder.get(name) is None:
            continue
        if keyring is None:
            raise EncryptionUnavailable(
                f"{message_type}.{path} is sensitive and no encryption key is configured "
                "(TRADEBUS_ENCRYPTION_KEYS): not sent"
            )
        plaintext = json.dumps(holder[name], separators=(",", ":")).encode()
        holder[name] = keyring.encrypt(plaintext, associated_data(bus, message_type, path, context))
    return data


def unseal(
    data: dict[str, Any], fields: Iterable[str], bus: str, message_type: str, keyring: Keyring | None
) -> dict[str, Any]:
    """A copy of ``data`` with every sensitive field opened; Undecryptable when one is in plaintext, under
    an unknown key, tampered with, or moved from another field."""
    data = json.loads(json.dumps(data))
    fields = tuple(fields)
    context = context_of(data, fields)
    for path in fields:
        holder, name = _parent(data, path)
        if holder is None or holder.get(name) is None:
            continue
        value = holder[name]
        if not is_sealed(value):
            raise Undecryptable(f"{message_type}.{path} is sensitive and arrived in plaintext")
        if keyring is None:
            raise Undecryptable(f"{message_type}.{path} is encrypted and this service has no key")
        try:
            plaintext = keyring.decrypt(value, associated_data(bus, message_type, path, context))
        except Undecryptable as exc:
            raise Undecryptable(f"{message_type}.{path}: {exc}") from None
        try:
            holder[name] = json.loads(plaintext)
        except ValueError:
            raise Undecryptable(f"{message_type}.{path}: the plaintext is not JSON") from None
    return data
