"""Typed settings, read from the environment at the edge.

``TRADEBUS_BROKER_URL``      AMQP URL of RabbitMQ (default ``amqp://guest:guest@localhost:5672//``).
``TRADEBUS_REDIS_URL``       Redis URL for results and stage state (default ``redis://localhost:6379/0``).
``TRADEBUS_MANAGEMENT_URL``  RabbitMQ management API (default: the broker's host, port 15672, same login).
``TRADEBUS_REDIS_PREFIX``    Prefix of every Redis key tradebus writes (default ``tradebus``).
``TRADEBUS_DECLARE_TOPOLOGY`` ``0`` for least-privilege workers: they declare nothing (default ``1``).

TLS (docs/security.md): ``TRADEBUS_BROKER_CA_FILE``, ``TRADEBUS_BROKER_CERT_FILE``,
``TRADEBUS_BROKER_KEY_FILE``, ``TRADEBUS_BROKER_TLS_SERVER_NAME``.
Signing: ``TRADEBUS_SIGNING_SERVICE``, ``TRADEBUS_SIGNING_KEY``, ``TRADEBUS_SIGNING_TRUSTED_KEYS``,
``TRADEBUS_SIGNING_REQUIRED``, ``TRADEBUS_SIGNING_WINDOW``.
Flower: ``TRADEBUS_FLOWER_USER``, ``TRADEBUS_FLOWER_PASSWORD``.
RabbitMQ users (``tradebus topology export --users``): ``TRADEBUS_USER_PASSWORD_<SERVICE>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from tradebus.errors import SettingsError

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671
#: Seconds a signature stays valid on either side of its timestamp (docs/security.md).
DEFAULT_SIGNING_WINDOW = 300.0
#: Shortest signing secret accepted: 32 characters, e.g. ``secrets.token_urlsafe(32)``.
MIN_SIGNING_KEY_CHARS = 32
#: Prefix of the variables holding RabbitMQ user passwords: ``TRADEBUS_USER_PASSWORD_STRATEGY``.
USER_PASSWORD_PREFIX = "TRADEBUS_USER_PASSWORD_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: use 1 or 0")


def _secret(name: str, value: str) -> str:
    if len(value) < MIN_SIGNING_KEY_CHARS:
        raise SettingsError(f"{name}: a signing key needs at least {MIN_SIGNING_KEY_CHARS} characters")
    return value


@dataclass(frozen=True)
class SigningSettings:
    """This service's signing key, the keys it trusts, and whether it refuses unsigned messages."""

    service: str | None = None
    key: str | None = field(default=None, repr=False)
    trusted: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    required: bool = False
    window: float = DEFAULT_SIGNING_WINDOW

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SigningSettings:
        """Read ``TRADEBUS_SIGNING_*``; refuses half a configuration rather than guessing."""
        service = environ.get("TRADEBUS_SIGNING_SERVICE") or None
        key = environ.get("TRADEBUS_SIGNING_KEY") or None
        if (service is None) != (key is None):
            raise SettingsError(
                "TRADEBUS_SIGNING_SERVICE and TRADEBUS_SIGNING_KEY are set together or not at all"
            )
        if key is not None:
            key = _secret("TRADEBUS_SIGNING_KEY", key)
        trusted: dict[str, str] = {}
        for item in (environ.get("TRADEBUS_SIGNING_TRUSTED_KEYS") or "").split(","):
            if not item.strip():
                continue
            name, sep, secret = item.strip().partition(":")
            if not sep or not name:
                raise SettingsError("TRADEBUS_SIGNING_TRUSTED_KEYS is a comma-separated list of service:key")
            trusted[name] = _secret(f"TRADEBUS_SIGNING_TRUSTED_KEYS ({name})", secret)
        if service is not None and key is not None:
            trusted[service] = key  # a service always trusts itself: it re-signs its own retries
        required = _flag(environ, "TRADEBUS_SIGNING_REQUIRED", False)
        if required and key is None:
            raise SettingsError(
                "TRADEBUS_SIGNING_REQUIRED=1 needs TRADEBUS_SIGNING_SERVICE and TRADEBUS_SIGNING_KEY: "
                "a worker re-signs the retries it schedules"
            )
        try:
            window = float(environ.get("TRADEBUS_SIGNING_WINDOW") or DEFAULT_SIGNING_WINDOW)
        except ValueError as exc:
            raise SettingsError(f"TRADEBUS_SIGNING_WINDOW: {exc}") from exc
        if window <= 0:
            raise SettingsError("TRADEBUS_SIGNING_WINDOW must be a positive number of seconds")
        return cls(service, key, MappingProxyType(trusted), required, window)


@dataclass(frozen=True)
class TLSSettings:
    """Certificates for ``amqps://`` (and the management API over https)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TLSSettings:
        """Read ``TRADEBUS_BROKER_*_FILE`` and ``TRADEBUS_BROKER_TLS_SERVER_NAME``."""
        tls = cls(
            ca_file=environ.get("TRADEBUS_BROKER_CA_FILE") or None,
            cert_file=environ.get("TRADEBUS_BROKER_CERT_FILE") or None,
            key_file=environ.get("TRADEBUS_BROKER_KEY_FILE") or None,
            server_name=environ.get("TRADEBUS_BROKER_TLS_SERVER_NAME") or None,
        )
        if (tls.cert_file is None) != (tls.key_file is None):
            raise SettingsError("TRADEBUS_BROKER_CERT_FILE and TRADEBUS_BROKER_KEY_FILE go together")
        return tls


@dataclass(frozen=True)
class FlowerSettings:
    """Flower's login; with none, Flower listens on 127.0.0.1 only."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FlowerSettings:
        """Read ``TRADEBUS_FLOWER_USER`` and ``TRADEBUS_FLOWER_PASSWORD`` (both or neither)."""
        user = environ.get("TRADEBUS_FLOWER_USER") or None
        password = environ.get("TRADEBUS_FLOWER_PASSWORD") or None
        if (user is None) != (password is None):
            raise SettingsError("TRADEBUS_FLOWER_USER and TRADEBUS_FLOWER_PASSWORD are set together")
        if user is not None and ":" in user:
            raise SettingsError("TRADEBUS_FLOWER_USER cannot contain ':'")
        return cls(user, password)


@dataclass(frozen=True)
class ManagementSettings:
    """Where the RabbitMQ management API is, and the vhost tradebus lives in."""

    base_url: str
    username: str
    password: str
    vhost: str

    @classmethod
    def from_broker_url(cls, broker_url: str, management_url: str | None = None) -> ManagementSettings:
        """Derive the API address and login from the AMQP URL, unless ``management_url`` names one.

        An explicit ``management_url`` is used as written (scheme, host, port, path prefix); its login, when
        it has one, replaces the broker's. Otherwise the API is on the broker's host, port 15672 (15671
        with TLS when the broker URL is ``amqps``).
        """
        amqp = urlsplit(broker_url)
        vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
        username, password = amqp.username or "guest", amqp.password or "guest"
        if management_url:
            api = urlsplit(management_url)
            if api.username:
                username, password = api.username, api.password or ""
            netloc = api.netloc.rpartition("@")[2]
            base = urlunsplit((api.scheme or "http", netloc, api.path.rstrip("/"), "", ""))
        else:
            host = amqp.hostname or "localhost"
            if ":" in host:
                host = f"[{host}]"
            tls = amqp.scheme == "amqps"
            base = f"{'https' if tls else 'http'}://{host}:{MANAGEMENT_TLS_PORT if tls else MANAGEMENT_PORT}"
        return cls(base, unquote(username), unquote(password), vhost)

    @property
    def quoted_vhost(self) -> str:
        """The vhost as it appears in an API path."""
        return quote(self.vhost, safe="")


@dataclass(frozen=True)
class Settings:
    """tradebus's settings; build them with :meth:`from_env`."""

    broker_url: str = DEFAULT_BROKER_URL
    redis_url: str = DEFAULT_REDIS_URL
    management_url: str | None = None
    redis_prefix: str = "tradebus"
    declare_topology: bool = True
    tls: TLSSettings = field(default_factory=TLSSettings)
    signing: SigningSettings = field(default_factory=SigningSettings)
    flower: FlowerSettings = field(default_factory=FlowerSettings)
    user_passwords: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read ``TRADEBUS_*`` variables; unset ones keep their defaults."""
        return cls(
            broker_url=environ.get("TRADEBUS_BROKER_URL") or DEFAULT_BROKER_URL,
            redis_url=environ.get("TRADEBUS_REDIS_URL") or DEFAULT_REDIS_URL,
            management_url=environ.get("TRADEBUS_MANAGEMENT_URL") or None,
            redis_prefix=environ.get("TRADEBUS_REDIS_PREFIX") or "tradebus",
            declare_topology=_flag(environ, "TRADEBUS_DECLARE_TOPOLOGY", True),
            tls=TLSSettings.from_env(environ),
            signing=SigningSettings.from_env(environ),
            flower=FlowerSettings.from_env(environ),
            user_passwords=MappingProxyType(
                {
                    name.removeprefix(USER_PASSWORD_PREFIX).lower(): value
                    for name, value in environ.items()
                    if name.startswith(USER_PASSWORD_PREFIX) and value
                }
            ),
        )

    @property
    def management(self) -> ManagementSettings:
        """The management API settings that go with this broker."""
        return ManagementSettings.from_broker_url(self.broker_url, self.management_url)


@cache
def _from_env() -> Settings:
    return Settings.from_env()


def current_settings() -> Settings:
    """The settings of the app this code runs under: the running task's app, else Celery's current app.

    Code outside any tradebus app (a bare script) gets the settings of the environment, read once.
    """
    from celery import current_app, current_task

    for app in (getattr(current_task, "app", None), current_app):
        settings = getattr(app, "settings", None)
        if isinstance(settings, Settings):
            return settings
    return _from_env()
