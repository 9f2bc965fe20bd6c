"""Redis, where stages keep their state: one client per process, every key under one prefix.

The prefix (``TRADEBUS_REDIS_PREFIX``) keeps deployments, demos and test sessions that share a Redis apart.
With ``TRADEBUS_REDIS_SENTINELS`` the client is Sentinel's (tradebus/replication.py): it follows the master
through a failover. The embedded demo, with no Redis to talk to, swaps in an in-process one with :func:`use`.
"""

from __future__ import annotations

import threading

import redis

from tradebus.application import current_settings
from tradebus.replication import ReplicaWait, master_client
from tradebus.settings import Settings

#: Fail fast when Redis is down: the stage then retries the message later (tradebus/retries.py).
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0

_override: list[redis.Redis] = []
#: The decoding twin of an override, made once: (the override, its twin).
_text_override: list[tuple[redis.Redis, redis.Redis]] = []
#: One client per (Redis URL, sentinels, master, decoding) in this process: two apps of one process may
#: name two servers.
_clients: dict[tuple[str, tuple[tuple[str, int], ...], str, bool], redis.Redis] = {}
#: Makes each of those once when a threads pool's threads ask at the same moment (redis-py's clients and
#: their connection pools are shared by threads safely).
_clients_lock = threading.Lock()


def _connect(settings: Settings, decode: bool) -> redis.Redis:
    if settings.redis.sentinels:
        return master_client(
            settings.redis_url,
            settings.redis,
            decode=decode,
            connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
        )
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        decode_responses=decode,
    )


def _from_settings(decode: bool = False) -> redis.Redis:
    settings = current_settings()
    where = (settings.redis_url, settings.redis.sentinels, settings.redis.master, decode)
    found = _clients.get(where)
    if found is None:
        with _clients_lock:
            found = _clients.get(where)
            if found is None:
                found = _clients[where] = _connect(settings, decode)
    return found


def client() -> redis.Redis:
    """The Redis client of the app this code runs under (redis-py reconnects by itself after a fork)."""
    return _override[-1] if _override else _from_settings()


def text_client() -> redis.Redis:
    """This process's Redis client that answers ``str`` for bytes (for state that is text, never binary)."""
    if not _override:
        return _from_settings(decode=True)
    base = _override[-1]
    if not _text_override or _text_override[0][0] is not base:
        pool = base.connection_pool
        decoding = type(pool)(
            connection_class=pool.connection_class, **{**pool.connection_kwargs, "decode_responses": True}
        )
        _text_override[:] = [(base, redis.Redis(connection_pool=decoding))]
    return _text_override[0][1]


def replica_wait() -> ReplicaWait:
    """How many replicas a durable write (a fill, a decision) waits for: none for the in-process store."""
    return ReplicaWait() if _override else current_settings().redis.wait


def use(replacement: redis.Redis) -> None:
    """Make ``replacement`` this process's Redis (the embedded demo's in-process store)."""
    _override[:] = [replacement]


def key(*parts: str) -> str:
    """A key under this deployment's prefix: ``key("fills", "req-1")`` -> ``tradebus:fills:req-1``.

    With no parts, the prefix itself.
    """
    return ":".join((current_settings().redis_prefix, *parts))


def clear() -> None:
    """Delete every key under this deployment's prefix."""
    keys = list(client().scan_iter(match=key("*"), count=1000))
    for start in range(0, len(keys), 1000):
        client().delete(*keys[start : start + 1000])
