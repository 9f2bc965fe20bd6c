"""Redis with replicas: Sentinel names the master, ``WAIT`` tells when a replica has a write.

``TRADEBUS_REDIS_SENTINELS`` (``host:port,...``) and ``TRADEBUS_REDIS_MASTER`` (the name the sentinels
monitor) put the state store (tradebus/store.py) and Celery's result backend behind Redis Sentinel:
redis-py's :class:`~redis.sentinel.Sentinel` asks the sentinels for the master's address at every new
connection, and a connection to a master that died or was demoted fails, so the next one finds the new
master. ``TRADEBUS_REDIS_URL`` still gives the database, the user and the password; its host is not used.

``TRADEBUS_REDIS_WAIT_REPLICAS`` (default 1 with sentinels, 0 without) and ``TRADEBUS_REDIS_WAIT_TIMEOUT``
(seconds, default 1) make a fill or a risk decision count as stored only once that many replicas have it:
the transaction that writes it is followed, on the same connection, by ``WAIT replicas timeout``
(:class:`WaitingPipeline`). docs/reliability.md says what WAIT does not promise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis
import redis.asyncio
from pydantic import BaseModel, ConfigDict, SecretStr
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.client import Pipeline
from redis.connection import parse_url
from redis.sentinel import Sentinel

from tradebus.environment import DEFAULT_REDIS_MASTER, DEFAULT_REDIS_WAIT_TIMEOUT, Environment
from tradebus.errors import SettingsError

#: Sentinel's own port, when ``TRADEBUS_REDIS_SENTINELS`` names a host without one.
SENTINEL_PORT = 26379
#: Seconds the reply of a WAIT may take beyond its own timeout (a busy master) before the socket gives up.
WAIT_GRACE = 2.0


@dataclass(frozen=True)
class ReplicaWait:
    """How many replicas must acknowledge a write, and how long to wait for them (0 replicas: no WAIT)."""

    replicas: int = 0
    timeout: float = DEFAULT_REDIS_WAIT_TIMEOUT


def parse_sentinels(listed: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (``[::1]:26379`` for IPv6; port 26379 when left out) as (host, port) pairs."""
    found: list[tuple[str, int]] = []
    for item in filter(None, (part.strip() for part in listed.split(","))):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":") if rest.startswith(":") else rest or None
        else:
            host, sep, port_text = item.rpartition(":")
            host, port = (host, port_text) if sep else (item, None)
            if ":" in host:
                raise SettingsError(f"TRADEBUS_REDIS_SENTINELS: write an IPv6 sentinel as [{host}]:port")
        if not host or port == "":
            raise SettingsError(f"TRADEBUS_REDIS_SENTINELS: {item!r} is not host:port")
        try:
            number = SENTINEL_PORT if port is None else int(port)
        except ValueError:
            raise SettingsError(f"TRADEBUS_REDIS_SENTINELS: {item!r} has no numeric port") from None
        if not 0 < number < 65536:
            raise SettingsError(f"TRADEBUS_REDIS_SENTINELS: {item!r} has a port out of range")
        found.append((host, number))
    if not found:
        raise SettingsError("TRADEBUS_REDIS_SENTINELS is a comma-separated list of host:port")
    return tuple(found)


class RedisSettings(BaseModel):
    """Where the Redis master is found (Sentinel, or the URL alone) and how many replicas a write needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = DEFAULT_REDIS_MASTER
    sentinel_password: SecretStr | None = None
    wait_replicas: int = 0
    wait_timeout: float = DEFAULT_REDIS_WAIT_TIMEOUT

    @classmethod
    def from_environment(cls, env: Environment) -> RedisSettings:
        """``TRADEBUS_REDIS_SENTINELS``, ``_MASTER``, ``_SENTINEL_PASSWORD``, ``_WAIT_REPLICAS`` and
        ``_WAIT_TIMEOUT``, checked together with ``TRADEBUS_REDIS_URL``."""
        sentinels = parse_sentinels(env.redis_sentinels) if env.redis_sentinels else ()
        if sentinels and env.redis_url.strip().lower().startswith("rediss:"):
            raise SettingsError(
                "TRADEBUS_REDIS_SENTINELS with a rediss:// TRADEBUS_REDIS_URL: Sentinel over TLS is not "
                "supported yet (docs/reliability.md)"
            )
        if not env.redis_master.strip():
            raise SettingsError("TRADEBUS_REDIS_MASTER cannot be blank")
        replicas = env.redis_wait_replicas
        if replicas is None:
            replicas = 1 if sentinels else 0
        if replicas < 0:
            raise SettingsError("TRADEBUS_REDIS_WAIT_REPLICAS must be 0 or more")
        if env.redis_wait_timeout <= 0:
            raise SettingsError("TRADEBUS_REDIS_WAIT_TIMEOUT must be a positive number of seconds")
        if env.redis_sentinel_password is not None and not sentinels:
            raise SettingsError("TRADEBUS_REDIS_SENTINEL_PASSWORD needs TRADEBUS_REDIS_SENTINELS")
        return cls(
            sentinels=sentinels,
            master=env.redis_master.strip(),
            sentinel_password=env.redis_sentinel_password,
            wait_replicas=replicas,
            wait_timeout=env.redis_wait_timeout,
        )

    @property
    def wait(self) -> ReplicaWait:
        """The WAIT a durable write is followed by."""
        return ReplicaWait(self.wait_replicas, self.wait_timeout)

    def sentinel_kwargs(self, **socket: float) -> dict[str, Any]:
        """What redis-py needs to talk to the sentinels themselves (their password, socket timeouts)."""
        password = self.sentinel_password.get_secret_value() if self.sentinel_password else None
        return {**socket, **({"password": password} if password else {})}


def _login(redis_url: str) -> dict[str, Any]:
    """The database, user and password of a Redis URL, as redis-py reads them."""
    parsed: dict[str, Any] = parse_url(redis_url)  # type: ignore[no-untyped-call]
    return parsed


def master_client(
    redis_url: str, settings: RedisSettings, *, decode: bool, connect_timeout: float, socket_timeout: float
) -> redis.Redis:
    """A client of the master the sentinels name now (and of the next one after a failover), with the
    database and login of ``redis_url``."""
    login = _login(redis_url)
    sentinel = Sentinel(
        list(settings.sentinels),
        sentinel_kwargs=settings.sentinel_kwargs(
            socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout
        ),
    )
    client: redis.Redis = sentinel.master_for(
        settings.master,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        decode_responses=decode,
        db=int(login.get("db", 0)),
        username=login.get("username"),
        password=login.get("password"),
    )
    return client


def async_client(
    redis_url: str, settings: RedisSettings, *, connect_timeout: float, socket_timeout: float
) -> redis.asyncio.Redis:
    """An asyncio client (Letrade's ``MessageBus``) of the master the sentinels name now, as
    :func:`master_client`; of ``redis_url`` itself without sentinels."""
    if not settings.sentinels:
        return redis.asyncio.Redis.from_url(
            redis_url, socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout
        )
    login = _login(redis_url)
    sentinel = AsyncSentinel(
        list(settings.sentinels),
        sentinel_kwargs=settings.sentinel_kwargs(
            socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout
        ),
    )
    client: redis.asyncio.Redis = sentinel.master_for(
        settings.master,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        db=int(login.get("db", 0)),
        username=login.get("username"),
        password=login.get("password"),
    )
    return client


def celery_backend(redis_url: str, settings: RedisSettings) -> tuple[str, dict[str, Any]]:
    """Celery's ``result_backend`` and ``result_backend_transport_options``: ``sentinel://`` URLs, one per
    sentinel, with the database and login of ``redis_url``; or ``redis_url`` itself without sentinels."""
    if not settings.sentinels:
        return redis_url, {}
    login = _login(redis_url)
    user, password = login.get("username") or "", login.get("password")
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if password else ""
    db = int(login.get("db", 0))
    urls = [
        f"sentinel://{auth}{f'[{host}]' if ':' in host else host}:{port}/{db}"
        for host, port in settings.sentinels
    ]
    options: dict[str, Any] = {"master_name": settings.master}
    if settings.sentinel_password:
        options["sentinel_kwargs"] = settings.sentinel_kwargs()
    return ";".join(urls), options


class WaitingPipeline(Pipeline):
    """A transaction pipeline that, right after its EXEC and on the same connection, sends
    ``WAIT replicas timeout`` (WAIT counts the replicas that have this connection's writes).

    :attr:`acked` is how many replicas acknowledged in time, or None when the WAIT itself failed (the
    connection dropped after the EXEC): the write is then on the master only, as far as anyone knows.
    """

    def __init__(self, client: redis.Redis, wait: ReplicaWait) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, True, None)
        self.replica_wait = wait
        self.acked: int | None = None

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        data: list[Any] = super()._execute_transaction(connection, commands, raise_on_error)
        self.acked = None
        try:
            wait = self.replica_wait
            # At least 1 ms: WAIT with a timeout of 0 blocks until the replicas answer, however long.
            connection.send_command("WAIT", wait.replicas, max(1, round(wait.timeout * 1000)))
            self.acked = int(connection.read_response(timeout=wait.timeout + WAIT_GRACE))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # Not raised: redis-py would retry the whole MULTI/EXEC on a new connection, unwatched.
            connection.disconnect()
        return data
