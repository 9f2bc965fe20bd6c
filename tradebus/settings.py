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
``TRADEBUS_MARKET_DATA_SHARDS`` N > 0 splits the strategy's market data over N queues by symbol (default
``0``: the seed's one queue; MasterTrade only, docs/topology.md). Every process of a bus sets the same N.

Redis Sentinel (tradebus/replication.py): ``TRADEBUS_REDIS_SENTINELS`` (``host:port,...``),
``TRADEBUS_REDIS_MASTER`` (default ``tradebus``), ``TRADEBUS_REDIS_SENTINEL_PASSWORD``; a fill or a risk
decision waits for ``TRADEBUS_REDIS_WAIT_REPLICAS`` replicas (default 1 with sentinels, else 0) for up to
``TRADEBUS_REDIS_WAIT_TIMEOUT`` seconds (default 1).

TLS (docs/security.md): ``TRADEBUS_BROKER_CA_FILE``, ``TRADEBUS_BROKER_CERT_FILE``,
``TRADEBUS_BROKER_KEY_FILE``, ``TRADEBUS_BROKER_TLS_SERVER_NAME``; ``TRADEBUS_REQUIRE_TLS=1`` refuses every
connection setting without TLS (tradebus/tlsonly.py).
Signing: ``TRADEBUS_SIGNING_SERVICE``, ``TRADEBUS_SIGNING_KEY``, ``TRADEBUS_SIGNING_TRUSTED_KEYS``,
``TRADEBUS_SIGNING_REQUIRED``, ``TRADEBUS_SIGNING_WINDOW``.
Letrade's JWT (tradebus/letrade/tokens.py): ``TRADEBUS_JWT_SERVICE``, ``TRADEBUS_JWT_KEY``,
``TRADEBUS_JWT_TRUSTED_KEYS``, ``TRADEBUS_JWT_REQUIRED``, ``TRADEBUS_JWT_TTL``, ``TRADEBUS_JWT_AUDIENCE``.
Encryption of sensitive fields: ``TRADEBUS_ENCRYPTION_KEYS`` (``kid:base64key,...``, the first encrypts).
Flower: ``TRADEBUS_FLOWER_USER``, ``TRADEBUS_FLOWER_PASSWORD``.
Metrics (workers/exporter.py): ``TRADEBUS_METRICS_PORT`` (a worker serves ``/metrics`` there; unset: off),
``TRADEBUS_METRICS_ADDRESS`` (default ``127.0.0.1``).
Traces (tradebus/tracing.py): ``TRADEBUS_TRACES`` (``off``, ``otlp``, ``console``; default ``otlp`` when
OpenTelemetry's ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else
``off``), ``OTEL_SERVICE_NAME``, ``OTEL_SDK_DISABLED``.
RabbitMQ users (``tradebus topology export --users``): ``TRADEBUS_USER_PASSWORD_<SERVICE>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from routing.model import MAX_SHARDS
from tradebus import nodes, tlsonly
from tradebus.credentials import EncryptionSettings as EncryptionSettings
from tradebus.credentials import JWTSettings as JWTSettings
from tradebus.credentials import SigningSettings as SigningSettings
from tradebus.environment import (
    DEFAULT_BROKER_URL as DEFAULT_BROKER_URL,
)
from tradebus.environment import (
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_REDIS_URL,
    MANAGEMENT_PORT,
    MANAGEMENT_TLS_PORT,
    Environment,
    read,
)
from tradebus.environment import (
    USER_PASSWORD_PREFIX as USER_PASSWORD_PREFIX,
)
from tradebus.errors import SettingsError
from tradebus.replication import RedisSettings

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _shards(count: int) -> int:
    if not 0 <= count <= MAX_SHARDS:
        raise SettingsError(
            f"TRADEBUS_MARKET_DATA_SHARDS is a number of shards: 0 (off) to {MAX_SHARDS}, not {count}"
        )
    return count


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


class MetricsSettings(BaseModel):
    """Where a worker serves its Prometheus metrics; no port, no endpoint and nothing counted."""

    model_config = _FROZEN

    port: int | None = Field(default=None, ge=1, le=65535)
    address: str = DEFAULT_METRICS_ADDRESS

    @property
    def enabled(self) -> bool:
        """Whether a worker exports metrics."""
        return self.port is not None


class TracingSettings(BaseModel):
    """Where this process's OpenTelemetry spans go: nowhere (the default), OTLP over HTTP, or stdout."""

    model_config = _FROZEN

    exporter: Literal["off", "otlp", "console"] = "off"
    #: The OTLP/HTTP traces URL; None: the exporter's own default (``http://localhost:4318/v1/traces``).
    endpoint: str | None = None
    service_name: str = "tradebus"

    @property
    def enabled(self) -> bool:
        """Whether spans are made at all."""
        return self.exporter != "off"

    @classmethod
    def from_environment(cls, env: Environment, names: Mapping[str, str]) -> TracingSettings:
        """``TRADEBUS_TRACES`` and OpenTelemetry's own variables: an OTLP endpoint turns traces on unless
        ``TRADEBUS_TRACES=off`` (or ``OTEL_SDK_DISABLED=true``) says otherwise."""
        endpoint = names.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
        if endpoint is None and (base := names.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
            endpoint = base.rstrip("/") + "/v1/traces"
        exporter = (env.traces or ("otlp" if endpoint else "off")).strip().lower()
        if exporter not in ("off", "otlp", "console"):
            raise SettingsError(f"TRADEBUS_TRACES is off, otlp or console, not {env.traces!r}")
        if names.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            exporter = "off"
        return cls(
            exporter=exporter,
            endpoint=endpoint,
            service_name=names.get("OTEL_SERVICE_NAME") or "tradebus",
        )


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


def _metrics(env: Environment) -> MetricsSettings:
    """``TRADEBUS_METRICS_*``, checked: a port from 1 to 65535."""
    if env.metrics_port is not None and not 1 <= env.metrics_port <= 65535:
        raise SettingsError(f"TRADEBUS_METRICS_PORT must be a TCP port (1-65535), not {env.metrics_port}")
    return MetricsSettings(port=env.metrics_port, address=env.metrics_address)


class Settings(BaseModel):
    """tradebus's settings: built once at the edge (:meth:`from_env`), then handed to the app."""

    model_config = _FROZEN

    broker_url: str = Field(default=DEFAULT_BROKER_URL, repr=False)
    redis_url: str = Field(default=DEFAULT_REDIS_URL, repr=False)
    management_url: str | None = Field(default=None, repr=False)
    redis_prefix: str = "tradebus"
    declare_topology: bool = True
    redis: RedisSettings = Field(default_factory=RedisSettings)
    #: The type of the critical queues the topology is built with (``routing.TopologyOptions``).
    queue_type: Literal["classic", "quorum"] = "classic"
    tls: TLSSettings = Field(default_factory=TLSSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    jwt: JWTSettings = Field(default_factory=JWTSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    user_passwords: Mapping[str, SecretStr] = Field(default_factory=dict, repr=False)
    #: ``TopologyOptions.market_data_shards`` of the bus this process runs.
    market_data_shards: int = Field(default=0, ge=0, le=MAX_SHARDS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``TRADEBUS_*`` from the process environment (or ``environ``); SettingsError says what is
        wrong. Unset and empty variables keep their defaults."""
        env = read(environ)
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
            redis=RedisSettings.from_environment(env),
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
            market_data_shards=_shards(env.market_data_shards),
            metrics=_metrics(env),
            tracing=TracingSettings.from_environment(env, names),
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
                + tlsonly.sentinel_problems("TRADEBUS_REDIS_SENTINELS", self.redis.sentinels)
            )
        return self

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (a demo's prefix, a test's broker), validated like the original."""
        return type(self).model_validate({**dict(self), **changes})

    @property
    def management(self) -> ManagementSettings:
        """The management API settings that go with this broker."""
        return ManagementSettings.from_broker_url(self.broker_url, self.management_url)
