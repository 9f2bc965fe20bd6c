"""Who a service is and which keys it holds: HMAC signing, Letrade's JWT and field-encryption keys.

Part of the typed settings (tradebus/settings.py builds them into ``Settings``); each is checked as a whole,
so half a configuration is refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from tradebus.encryption import Keyring, parse_keys
from tradebus.environment import (
    DEFAULT_JWT_AUDIENCE,
    DEFAULT_JWT_TTL,
    DEFAULT_SIGNING_WINDOW,
    MIN_SIGNING_KEY_CHARS,
    Environment,
    read,
)
from tradebus.errors import SettingsError

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _secret(name: str, value: SecretStr) -> SecretStr:
    if len(value.get_secret_value()) < MIN_SIGNING_KEY_CHARS:
        raise SettingsError(f"{name}: a signing key needs at least {MIN_SIGNING_KEY_CHARS} characters")
    return value


def _service_keys(
    scheme: str,
    service: str | None,
    key: SecretStr | None,
    listed: SecretStr | None,
    required: bool,
    why: str,
) -> tuple[SecretStr | None, dict[str, SecretStr]]:
    """This service's key and the keys it trusts, from ``TRADEBUS_<scheme>_*``, checked as a whole: the
    name and key together, each key long enough, ``service:key`` pairs, and a key when ``required`` (``why``).
    A service trusts itself."""
    prefix = f"TRADEBUS_{scheme}"
    if (service is None) != (key is None):
        raise SettingsError(f"{prefix}_SERVICE and {prefix}_KEY are set together or not at all")
    if key is not None:
        key = _secret(f"{prefix}_KEY", key)
    trusted: dict[str, SecretStr] = {}
    for item in filter(
        None, (part.strip() for part in (listed.get_secret_value() if listed else "").split(","))
    ):
        name, sep, secret = item.partition(":")
        if not sep or not name:
            raise SettingsError(f"{prefix}_TRUSTED_KEYS is a comma-separated list of service:key")
        trusted[name] = _secret(f"{prefix}_TRUSTED_KEYS ({name})", SecretStr(secret))
    if service is not None and key is not None:
        trusted[service] = key
    if required and key is None:
        raise SettingsError(f"{prefix}_REQUIRED=1 needs {prefix}_SERVICE and {prefix}_KEY: {why}")
    return key, trusted


class SigningSettings(BaseModel):
    """This service's signing key, the keys it trusts, and whether it refuses unsigned messages."""

    model_config = _FROZEN

    service: str | None = None
    key: SecretStr | None = None
    trusted: Mapping[str, SecretStr] = Field(default_factory=dict, repr=False)
    required: bool = False
    window: float = DEFAULT_SIGNING_WINDOW

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SigningSettings:
        """Read ``TRADEBUS_SIGNING_*``; refuses half a configuration rather than guessing."""
        return cls.from_environment(read(environ))

    @classmethod
    def from_environment(cls, env: Environment) -> SigningSettings:
        """The signing part of ``env``, checked as a whole."""
        service = env.signing_service
        key, trusted = _service_keys(
            "SIGNING",
            service,
            env.signing_key,
            env.signing_trusted_keys,
            env.signing_required,
            "a worker re-signs the retries it schedules",
        )
        if env.signing_window <= 0:
            raise SettingsError("TRADEBUS_SIGNING_WINDOW must be a positive number of seconds")
        return cls(
            service=service,
            key=key,
            trusted=trusted,
            required=env.signing_required,
            window=env.signing_window,
        )


class JWTSettings(BaseModel):
    """Letrade's per-message JWT (HS256): its key, the issuers it trusts, whether it is required."""

    model_config = _FROZEN

    service: str | None = None
    key: SecretStr | None = None
    trusted: Mapping[str, SecretStr] = Field(default_factory=dict, repr=False)
    required: bool = False
    ttl: float = DEFAULT_JWT_TTL
    audience: str = DEFAULT_JWT_AUDIENCE

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> JWTSettings:
        """Read ``TRADEBUS_JWT_*``; refuses half a configuration rather than guessing."""
        return cls.from_environment(read(environ))

    @classmethod
    def from_environment(cls, env: Environment) -> JWTSettings:
        """The JWT part of ``env``, checked as a whole (the same rules as the HMAC signing keys)."""
        service = env.jwt_service
        key, trusted = _service_keys(
            "JWT",
            service,
            env.jwt_key,
            env.jwt_trusted_keys,
            env.jwt_required,
            "a worker issues the tokens of the retries it schedules",
        )
        if env.jwt_ttl <= 0:
            raise SettingsError("TRADEBUS_JWT_TTL must be a positive number of seconds")
        if not env.jwt_audience.strip():
            raise SettingsError("TRADEBUS_JWT_AUDIENCE cannot be blank")
        return cls(
            service=service,
            key=key,
            trusted=trusted,
            required=env.jwt_required,
            ttl=env.jwt_ttl,
            audience=env.jwt_audience,
        )


class EncryptionSettings(BaseModel):
    """The keys that seal and open sensitive fields (tradebus/encryption.py): the first one encrypts,
    every one decrypts, so a key rotates without downtime."""

    model_config = _FROZEN

    keys: Mapping[str, SecretStr] = Field(default_factory=dict, repr=False)

    @classmethod
    def from_environment(cls, env: Environment) -> EncryptionSettings:
        """``TRADEBUS_ENCRYPTION_KEYS``, checked (key ids, base64, 32 bytes each)."""
        listed = env.encryption_keys.get_secret_value() if env.encryption_keys else ""
        parse_keys(listed)  # SettingsError on anything malformed, before pydantic sees it
        items = (item.strip().partition(":") for item in listed.split(",") if item.strip())
        return cls(keys={kid: SecretStr(key) for kid, _, key in items})

    @model_validator(mode="after")
    def _keys_are_usable(self) -> EncryptionSettings:
        parse_keys(",".join(f"{kid}:{key.get_secret_value()}" for kid, key in self.keys.items()))
        return self

    @property
    def enabled(self) -> bool:
        """Whether this service can seal and open sensitive fields."""
        return bool(self.keys)

    @cached_property
    def keyring(self) -> Keyring | None:
        """The keys as a Keyring (built once), or None when none is configured."""
        if not self.keys:
            return None
        listed = ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in self.keys.items())
        return Keyring(parse_keys(listed))
