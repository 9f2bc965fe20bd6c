"""The harness both demos share: the broker they run on, their pools, and a Redis prefix of their own.

On RabbitMQ every pool is its own worker process, sized by its profile. With ``memory://``, or when no
broker is reachable and none was asked for, everything runs in this process on Kombu's in-memory
transport (tradebus/memory.py says what that transport cannot enforce), with an in-process Redis when no
Redis answers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from kombu import Connection

from tradebus import nodes, store, tls
from tradebus.application import TradebusCelery, create_app, using
from tradebus.errors import BrokerUnreachable, ManagementAPIError
from tradebus.health import queue_stats
from tradebus.management import Management
from tradebus.topology import check_and_declare
from workers.launch import PoolProcess, start_pool, stop_all, wait_for_consumers

MEMORY = "memory://"
#: The demos' simulated market's random seed: the same prices every run, so a demo trades every run (an
#: unseeded MasterTrade market gave as few as 3 signals in 20 s, all refused: no fill, exit 1). Which
#: candles the stages see first still depends on timing (several processes), so fills vary, not their being.
DEMO_SEED = 1
#: Threads of the embedded worker (every stage queue shares them), their prefetch, and how often the
#: in-memory transport looks for messages when it has none it may deliver.
MEMORY_CONCURRENCY = 8
MEMORY_PREFETCH_MULTIPLIER = 25
MEMORY_POLLING_INTERVAL = 0.005
POOL_START_TIMEOUT = 180.0
MEMORY_LIMITS = (
    "in-memory broker: message TTLs, length limits, broker dead-lettering (x-death), policies and "
    "publisher confirms are not enforced; alternate exchanges are emulated by the publisher; application "
    "dead letters, retries and topic routing work as on RabbitMQ"
)


def _reachable(url: str) -> bool:
    """Whether a broker (any node of a ``;``-separated list) accepts TCP connections."""
    for parts in map(urlsplit, nodes.split(url)):
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        try:
            with socket.create_connection((parts.hostname or "localhost", port), timeout=2):
                return True
        except OSError:
            continue
    return False


def choose_broker(asked: str | None, configured: str) -> str:
    """The broker the demo runs on: the one asked for, else the configured one, else memory.

    ``configured`` is the app's broker URL; unless ``TRADEBUS_BROKER_URL`` named it, the demo falls back
    to memory when nothing answers there.
    """
    if asked:
        return asked
    if os.environ.get("TRADEBUS_BROKER_URL"):
        return configured
    return configured if _reachable(configured) else MEMORY


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p95 and p99 of ``samples`` (nearest rank), with their count."""
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))], 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "n": float(len(ordered))}


def depths(connection: Connection, names: list[str]) -> dict[str, int]:
    return {name: s.messages or 0 for name, s in queue_stats(connection, names).items()}


@contextlib.contextmanager
def _rabbitmq_pools(app: TradebusCelery, echo: Callable[[str], None]) -> Iterator[Connection]:
    settings, topology = app.settings, app.topology
    url = settings.broker_url
    pool_names = list(topology.pools)
    with tls.broker_connection(settings, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=3)
        try:
            check_and_declare(topology, connection, Management(settings.management))
        except ManagementAPIError as exc:
            echo(f"warning: {exc}")
        echo(f"topology declared on {urlsplit(nodes.first(url)).hostname} vhost {settings.management.vhost}")
        log_dir = Path(tempfile.mkdtemp(prefix="tradebus-demo-"))
        echo(f"starting {len(pool_names)} pools, one worker process each (logs in {log_dir}) ...")
        env = {
            "TRADEBUS_TOPOLOGY": topology.name,
            "TRADEBUS_BROKER_URL": url,
            "TRADEBUS_REDIS_PREFIX": settings.redis_prefix,
            "TRADEBUS_MARKET_DATA_SHARDS": str(topology.options.market_data_shards),
        }
        pools: list[PoolProcess] = []
        try:
            pools = [start_pool(name, log_dir, ["--loglevel", "WARNING"], env) for name in pool_names]
            missing = wait_for_consumers(connection, pool_names, POOL_START_TIMEOUT, pools)
            if missing:
                raise BrokerUnreachable(
                    f"pools not consuming after {POOL_START_TIMEOUT:.0f}s: {', '.join(missing)}"
                )
            yield connection
        finally:
            stop_all(pools)


@contextlib.contextmanager
def _embedded(app: TradebusCelery, echo: Callable[[str], None]) -> Iterator[Connection]:
    from celery.contrib.testing.worker import start_worker

    echo(MEMORY_LIMITS)
    try:
        store.client().ping()
        echo(f"state in Redis at {app.settings.redis_url}")
    except Exception:  # noqa: BLE001 - any failure to reach Redis means: use the in-process one
        import fakeredis

        store.use(fakeredis.FakeRedis())
        echo("state in an in-process Redis (no Redis answered)")
    # Kombu's virtual transports sleep polling_interval (1 s) whenever nothing can be consumed, which
    # includes "the prefetch window is full": poll often, and give the threads a deep window.
    app.conf.update(
        broker_url=MEMORY,
        result_backend="cache+memory://",
        broker_transport_options={"polling_interval": MEMORY_POLLING_INTERVAL},
        worker_prefetch_multiplier=MEMORY_PREFETCH_MULTIPLIER,
    )
    app.loader.import_default_modules()
    queues = list(app.topology.pools)
    with (
        start_worker(
            app,
            pool="threads",
            concurrency=MEMORY_CONCURRENCY,
            perform_ping_check=False,
            queues=queues,
            loglevel="WARNING",
            shutdown_timeout=30.0,
        ),
        app.connection_for_write() as connection,
    ):
        yield connection


@contextlib.contextmanager
def environment(
    app: TradebusCelery, broker: str | None, echo: Callable[[str], None]
) -> Iterator[tuple[TradebusCelery, Connection, str, bool]]:
    """The broker and pools a demo of ``app``'s bus runs on, and a Redis prefix of its own, removed
    afterwards.

    Yields (the demo's app, connection, broker URL, whether it is the in-memory broker): an app of the same
    topology with the demo's broker and prefix, Celery's current app while the demo runs. Both profiles'
    demos use it.
    """
    url = choose_broker(broker, app.settings.broker_url)
    memory = url.startswith("memory")
    settings = app.settings.with_(
        broker_url=app.settings.broker_url if memory else url,
        redis_prefix=f"tradebus-demo-{uuid.uuid4().hex[:8]}",
    )
    demo = create_app(app.topology, settings)
    demo.conf.broker_url = url
    if not memory and not _reachable(url):
        where = ", ".join(f"{p.hostname}:{p.port or 5672}" for p in map(urlsplit, nodes.split(url)))
        raise BrokerUnreachable(f"no broker at {where}")
    pools = _embedded(demo, echo) if memory else _rabbitmq_pools(demo, echo)
    with using(demo):  # the demo's prefix is what store.clear() removes at the end, nothing else
        try:
            with pools as connection:
                yield demo, connection, url, memory
        finally:
            with contextlib.suppress(Exception):
                store.clear()
