"""The ``TRADEBUS_*`` environment as pydantic-settings reads it: flat, typed, before any checking.

tradebus/settings.py turns it into the ``Settings`` every part is handed; nothing else reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from tradebus.errors import SettingsError

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: The name the sentinels monitor the master under (``TRADEBUS_REDIS_MASTER``).
DEFAULT_REDIS_MASTER = "tradebus"
#: Seconds a durable write waits for its replicas (``TRADEBUS_REDIS_WAIT_TIMEOUT``).
DEFAULT_REDIS_WAIT_TIMEOUT = 1.0
MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671
#: Seconds a signature stays valid on either side of its timestamp (docs/security.md).
DEFAULT_SIGNING_WINDOW = 300.0
#: Shortest signing secret accepted: 32 characters, e.g. ``secrets.token_urlsafe(32)``.
MIN_SIGNING_KEY_CHARS = 32
#: Seconds a Letrade JWT lives (its ``exp`` - ``iat``), and the longest lifetime a verifier accepts.
DEFAULT_JWT_TTL = 60.0
#: The ``aud`` of Letrade's tokens.
DEFAULT_JWT_AUDIENCE = "letrade"
#: Where a worker's /metrics listens unless ``TRADEBUS_METRICS_ADDRESS`` says otherwise (docs/operations.md).
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
ENV_PREFIX = "TRADEBUS_"
#: Prefix of the variables holding RabbitMQ user passwords: ``TRADEBUS_USER_PASSWORD_STRATEGY``.
USER_PASSWORD_PREFIX = f"{ENV_PREFIX}USER_PASSWORD_"


class Environment(BaseSettings):
    """The ``TRADEBUS_*`` variables as pydantic-settings reads them: flat, typed, empty means unset."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True
    )

    broker_url: str = DEFAULT_BROKER_URL
    queue_type: Literal["classic", "quorum"] = "classic"
    redis_url: str = DEFAULT_REDIS_URL
    management_url: str | None = None
    redis_prefix: str = "tradebus"
    redis_sentinels: str | None = None
    redis_master: str = DEFAULT_REDIS_MASTER
    redis_sentinel_password: SecretStr | None = None
    redis_wait_replicas: int | None = None
    redis_wait_timeout: float = DEFAULT_REDIS_WAIT_TIMEOUT
    declare_topology: bool = True
    broker_ca_file: str | None = None
    broker_cert_file: str | None = None
    broker_key_file: str | None = None
    broker_tls_server_name: str | None = None
    require_tls: bool = False
    signing_service: str | None = None
    signing_key: SecretStr | None = None
    signing_trusted_keys: SecretStr | None = None
    signing_required: bool = False
    signing_window: float = DEFAULT_SIGNING_WINDOW
    jwt_service: str | None = None
    jwt_key: SecretStr | None = None
    jwt_trusted_keys: SecretStr | None = None
    jwt_required: bool = False
    jwt_ttl: float = DEFAULT_JWT_TTL
    jwt_audience: str = DEFAULT_JWT_AUDIENCE
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    encryption_keys: SecretStr | None = None
    market_data_shards: int = 0
    metrics_port: int | None = None
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    traces: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The process environment, or the mapping ``Settings.from_env`` was handed (tests, compose)."""
        environ = _ENVIRON.get()
        return (env_settings,) if environ is None else (_MappingSource(settings_cls, environ),)


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("tradebus_environ", default=None)


@contextmanager
def reading(environ: Mapping[str, str] | None) -> Iterator[None]:
    """Read ``environ`` instead of the process environment while the block runs."""
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def read(environ: Mapping[str, str] | None = None) -> Environment:
    """``TRADEBUS_*`` from the process environment (or ``environ``); SettingsError says what is wrong."""
    with reading(environ):
        try:
            env = Environment()
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                for err in exc.errors()
            )
            raise SettingsError(problems) from None
    return env
