"""Typed settings, read from the environment once, at the edge (pydantic-settings), then passed.

``TRADEBUS_BROKER_URL``      AMQP URL of RabbitMQ (default ``amqp://guest:guest@localhost:5672//``); a
                             cluster's nodes as a ``;``-separated list, tried in turn (tradebus/nodes.py).
``TRADEBUS_REDIS_URL``       Redis URL for results and stage state (default ``redis://localhost:6379/0``).
``TRADEBUS_MANAGEMENT_URL``  RabbitMQ management API (default: the broker's host, port 15672, same login);
                             a cluster's, one per node, ``;``-separated.
``TRADEBUS_REDIS_PREFIX``    Prefix of every Redis key tradebus writes (default ``tradebus``).
``TRADEBUS_DECLARE_TOPOLOGY`` ``0`` for least-privilege workers: they declare nothing (default ``1``).
``TRADEBUS_QUEUE_TYPE``      ``classic`` (one node, the default) or ``quorum``: the critical queues as quorum
                             queues replicated to three nodes (docs/topology.md, "Quorum queues").

TLS (docs/security.md): ``TRADEBUS_BROKER_CA_FILE``, ``TRADEBUS_BROKER_CERT_FILE``,
``TRADEBUS_BROKER_KEY_FILE``, ``TRADEBUS_BROKER_TLS_SERVER_NAME``; ``TRADEBUS_REQUIRE_TLS=1`` refuses every
connection setting without TLS (tradebus/tlsonly.py).
Signing: ``TRADEBUS_SIGNING_SERVICE``, ``TRADEBUS_SIGNING_KEY``, ``TRADEBUS_SIGNING_TRUSTED_KEYS``,
``TRADEBUS_SIGNING_REQUIRED``, ``TRADEBUS_SIGNING_WINDOW``.
Letrade's JWT (tradebus/letrade/tokens.py): ``TRADEBUS_JWT_SERVICE``, ``TRADEBUS_JWT_KEY``,
``TRADEBUS_JWT_TRUSTED_KEYS``, ``TRADEBUS_JWT_REQUIRED``, ``TRADEBUS_JWT_TTL``, ``TRADEBUS_JWT_AUDIENCE``.
Encryption of sensitive fields: ``TRADEBUS_ENCRYPTION_KEYS`` (``kid:base64key,...``, the first encrypts).
Flower: ``TRADEBUS_FLOWER_USER``, ``TRADEBUS_FLOWER_PASSWORD``.
RabbitMQ users (``tradebus topology export --users``): ``TRADEBUS_USER_PASSWORD_<SERVICE>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from tradebus import nodes, tlsonly
from tradebus.encryption import Keyring, parse_keys
from tradebus.environment import (
    DEFAULT_BROKER_URL as DEFAULT_BROKER_URL,
)
from tradebus.environment import (
    DEFAULT_JWT_AUDIENCE,
    DEFAULT_JWT_TTL,
    DEFAULT_REDIS_URL,
    DEFAULT_SIGNING_WINDOW,
    ENV_PREFIX,
    MANAGEMENT_PORT,
    MANAGEMENT_TLS_PORT,
    MIN_SIGNING_KEY_CHARS,
    Environment,
    reading,
)
from tradebus.environment import (
    USER_PASSWORD_PREFIX as USER_PASSWORD_PREFIX,
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
        return Settings.from_env(environ).signing

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
        return Settings.from_env(environ).jwt

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


class TLSSettings(BaseModel):
    """Certificates for ``amqps://`` (and the management API over https), and whether TLS is required."""

    model_config = _FROZEN

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    #: ``TRADEBUS_REQUIRE_TLS=1``: every connection setting must name TLS (tradebus/tlsonly.py).
    required: bool = False

    @property
    def has_certificates(self) -> bool:
        """Whether any certificate setting is given (they only make sense with ``amqps://``)."""
        return any((self.ca_file, self.cert_file, self.key_file, self.server_name))


class FlowerSettings(BaseModel):
    """Flower's login; with none, Flower listens on 127.0.0.1 only."""

    model_config = _FROZEN

    user: str | None = None
    password: SecretStr | None = None


@dataclass(frozen=True)
class ManagementSettings:
    """Where the RabbitMQ management API is (one per node of a cluster), and the vhost tradebus lives in."""

    base_url: str
    username: str
    password: str
    vhost: str
    #: The other nodes' APIs, tried in turn when ``base_url`` does not answer (tradebus/management.py).
    others: tuple[str, ...] = ()

    @classmethod
    def from_broker_url(cls, broker_url: str, management_url: str | None = None) -> ManagementSettings:
        """Derive the API addresses and login from the AMQP URL(s), unless ``management_url`` names them.

        An explicit ``management_url`` (``;``-separated: one per node) is used as written (scheme, host,
        port, path prefix); the login of its first URL, when it has one, replaces the broker's. Otherwise
        each broker node's API is on its host, port 15672 (15671 with TLS when the broker URL is ``amqps``).
        The vhost and login come from the first broker URL (tradebus/nodes.py: the nodes share them).
        """
        amqp = urlsplit(nodes.first(broker_url))
        vhost = nodes.vhost(nodes.first(broker_url))
        username, password = amqp.username or "guest", amqp.password or "guest"
        bases: list[str] = []
        if management_url:
            for number, url in enumerate(nodes.split(management_url)):
                api = urlsplit(url)
                if number == 0 and api.username:
                    username, password = api.username, api.password or ""
                netloc = api.netloc.rpartition("@")[2]
                bases.append(urlunsplit((api.scheme or "http", netloc, api.path.rstrip("/"), "", "")))
        else:
            for node in map(urlsplit, nodes.split(broker_url) or (broker_url,)):
                host = node.hostname or "localhost"
                if ":" in host:
                    host = f"[{host}]"
                tls = node.scheme == "amqps"
                port = MANAGEMENT_TLS_PORT if tls else MANAGEMENT_PORT
                bases.append(f"{'https' if tls else 'http'}://{host}:{port}")
        bases = list(dict.fromkeys(bases))  # one per host, in the order given
        return cls(bases[0], unquote(username), unquote(password), vhost, tuple(bases[1:]))

    @property
    def base_urls(self) -> tuple[str, ...]:
        """Every node's API, the first one first."""
        return (self.base_url, *self.others)

    @property
    def quoted_vhost(self) -> str:
        """The vhost as it appears in an API path."""
        return quote(self.vhost, safe="")


class Settings(BaseModel):
    """tradebus's settings: built once at the edge (:meth:`from_env`), then handed to the app."""

    model_config = _FROZEN

    broker_url: str = Field(default=DEFAULT_BROKER_URL, repr=False)
    redis_url: str = Field(default=DEFAULT_REDIS_URL, repr=False)
    management_url: str | None = Field(default=None, repr=False)
    redis_prefix: str = "tradebus"
    declare_topology: bool = True
    #: The type of the critical queues the topology is built with (``routing.TopologyOptions``).
    queue_type: Literal["classic", "quorum"] = "classic"
    tls: TLSSettings = Field(default_factory=TLSSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    jwt: JWTSettings = Field(default_factory=JWTSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    user_passwords: Mapping[str, SecretStr] = Field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``TRADEBUS_*`` from the process environment (or ``environ``); SettingsError says what is
        wrong. Unset and empty variables keep their defaults."""
        with reading(environ):
            try:
                env = Environment()
            except ValidationError as exc:
                problems = "; ".join(
                    f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                    for err in exc.errors()
                )
                raise SettingsError(problems) from None
        if (env.broker_cert_file is None) != (env.broker_key_file is None):
            raise SettingsError("TRADEBUS_BROKER_CERT_FILE and TRADEBUS_BROKER_KEY_FILE go together")
        if (env.flower_user is None) != (env.flower_password is None):
            raise SettingsError("TRADEBUS_FLOWER_USER and TRADEBUS_FLOWER_PASSWORD are set together")
        if env.flower_user is not None and ":" in env.flower_user:
            raise SettingsError("TRADEBUS_FLOWER_USER cannot contain ':'")
        names = os.environ if environ is None else environ
        settings = cls(
            broker_url=env.broker_url,
            redis_url=env.redis_url,
            management_url=env.management_url,
            redis_prefix=env.redis_prefix,
            declare_topology=env.declare_topology,
            queue_type=env.queue_type,
            tls=TLSSettings(
                ca_file=env.broker_ca_file,
                cert_file=env.broker_cert_file,
                key_file=env.broker_key_file,
                server_name=env.broker_tls_server_name,
                required=env.require_tls,
            ),
            signing=SigningSettings.from_environment(env),
            jwt=JWTSettings.from_environment(env),
            flower=FlowerSettings(user=env.flower_user, password=env.flower_password),
            encryption=EncryptionSettings.from_environment(env),
            user_passwords={
                name.removeprefix(USER_PASSWORD_PREFIX).lower(): SecretStr(value)
                for name, value in names.items()
                if name.startswith(USER_PASSWORD_PREFIX) and value
            },
        )
        # A cluster's nodes (tradebus/nodes.py) share one vhost, and TLS or not.
        nodes.check_brokers("TRADEBUS_BROKER_URL", settings.broker_url)
        return settings

    @model_validator(mode="after")
    def _tls_only(self) -> Settings:
        """Under ``TRADEBUS_REQUIRE_TLS=1``, refuse (InsecureConnection) every URL without TLS, all at once:
        built from the environment or changed with :meth:`with_` (a demo's or a client's broker)."""
        if self.tls.required:
            tlsonly.require(
                tlsonly.broker_problems("TRADEBUS_BROKER_URL", self.broker_url)
                + tlsonly.redis_problems("TRADEBUS_REDIS_URL", self.redis_url)
                + tlsonly.management_problems("TRADEBUS_MANAGEMENT_URL", self.management_url)
            )
        return self

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (a demo's prefix, a test's broker), validated like the original."""
        return type(self).model_validate({**dict(self), **changes})

    @property
    def management(self) -> ManagementSettings:
        """The management API settings that go with this broker."""
        return ManagementSettings.from_broker_url(self.broker_url, self.management_url)
