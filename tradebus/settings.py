"""Typed settings, read from the environment at the edge.

``TRADEBUS_BROKER_URL``      AMQP URL of RabbitMQ (default ``amqp://guest:guest@localhost:5672//``).
``TRADEBUS_REDIS_URL``       Redis URL for results and stage state (default ``redis://localhost:6379/0``).
``TRADEBUS_MANAGEMENT_URL``  RabbitMQ management API (default: the broker's host, port 15672, same login).
``TRADEBUS_REDIS_PREFIX``    Prefix of every Redis key tradebus writes (default ``tradebus``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from urllib.parse import quote, unquote, urlsplit, urlunsplit

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read ``TRADEBUS_*`` variables; unset ones keep their defaults."""
        return cls(
            broker_url=environ.get("TRADEBUS_BROKER_URL") or DEFAULT_BROKER_URL,
            redis_url=environ.get("TRADEBUS_REDIS_URL") or DEFAULT_REDIS_URL,
            management_url=environ.get("TRADEBUS_MANAGEMENT_URL") or None,
            redis_prefix=environ.get("TRADEBUS_REDIS_PREFIX") or "tradebus",
        )

    @property
    def management(self) -> ManagementSettings:
        """The management API settings that go with this broker."""
        return ManagementSettings.from_broker_url(self.broker_url, self.management_url)


@cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings.from_env()
