"""Shared fixtures: a RabbitMQ vhost and a Redis key prefix of the test session's own, and workers.

The environment is pointed at the session's vhost *before* tradebus is imported, so the app, the CLI and
every worker subprocess the tests start talk to that vhost only. Broker tests fail when RabbitMQ or Redis
is missing and ``TRADEBUS_REQUIRE_BROKER=1`` (as in CI); elsewhere they skip and say why.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

RUN_ID = uuid.uuid4().hex[:8]
SESSION_VHOST = f"tradebus-test-{RUN_ID}"
_BASE_URL = os.environ.get("TRADEBUS_BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672//"


def vhost_url(vhost: str) -> str:
    """The broker URL of the base broker, on ``vhost``."""
    parts = urlsplit(_BASE_URL)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))


os.environ["TRADEBUS_BROKER_URL"] = vhost_url(SESSION_VHOST)
os.environ["TRADEBUS_REDIS_PREFIX"] = f"tradebus-test-{RUN_ID}"

from kombu import Connection  # noqa: E402

from tradebus.management import Management  # noqa: E402
from tradebus.settings import ManagementSettings, get_settings  # noqa: E402

REQUIRE_BROKER = os.environ.get("TRADEBUS_REQUIRE_BROKER") == "1"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _missing_services() -> list[str]:
    settings = get_settings()
    amqp = urlsplit(settings.broker_url)
    redis = urlsplit(settings.redis_url)
    api = urlsplit(settings.management.base_url)
    checks = {
        f"RabbitMQ at {amqp.hostname}:{amqp.port or 5672}": (amqp.hostname or "localhost", amqp.port or 5672),
        f"RabbitMQ management API at {api.hostname}:{api.port}": (api.hostname or "localhost", api.port or 0),
        f"Redis at {redis.hostname}:{redis.port or 6379}": (
            redis.hostname or "localhost",
            redis.port or 6379,
        ),
    }
    return [name for name, (host, port) in checks.items() if not _port_open(host, port)]


@dataclass
class Vhost:
    """A throwaway RabbitMQ vhost: its name, its AMQP URL and its management API."""

    name: str
    url: str
    management: Management

    def connection(self) -> Connection:
        """A new Kombu connection to this vhost."""
        return Connection(self.url, connect_timeout=5)


def _admin() -> Management:
    settings = get_settings().management
    return Management(ManagementSettings(settings.base_url, settings.username, settings.password, "/"))


def _make_vhost(name: str) -> Vhost:
    admin = _admin()
    admin.create_vhost(name)
    scoped = ManagementSettings.from_broker_url(vhost_url(name), get_settings().management_url)
    return Vhost(name, vhost_url(name), Management(scoped))


@pytest.fixture(scope="session")
def broker() -> Iterator[Vhost]:
    """The session's vhost on the real RabbitMQ (and a live Redis), deleted at the end."""
    missing = _missing_services()
    if missing:
        message = "not reachable: " + "; ".join(missing) + " (run `make services`)"
        if REQUIRE_BROKER:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    vhost = _make_vhost(SESSION_VHOST)
    yield vhost
    _admin().delete_vhost(SESSION_VHOST)
    from tradebus import recorder

    recorder.clear()


@pytest.fixture
def fresh_vhost(broker: Vhost) -> Iterator[Vhost]:
    """An empty vhost of its own for one test, deleted afterwards."""
    vhost = _make_vhost(f"tradebus-test-{RUN_ID}-{uuid.uuid4().hex[:6]}")
    yield vhost
    _admin().delete_vhost(vhost.name)


@pytest.fixture
def declared_vhost(fresh_vhost: Vhost) -> Vhost:
    """A fresh vhost of one test's own, with the whole topology declared."""
    from tradebus.topology import declare

    with fresh_vhost.connection() as conn:
        declare(conn)
    return fresh_vhost


@pytest.fixture(scope="module")
def topology_vhost(broker: Vhost) -> Iterator[Vhost]:
    """A vhost with the whole topology declared and no consumer, for one test module."""
    from tradebus.topology import declare

    vhost = _make_vhost(f"tradebus-test-{RUN_ID}-{uuid.uuid4().hex[:6]}")
    with vhost.connection() as conn:
        declare(conn)
    yield vhost
    _admin().delete_vhost(vhost.name)


# --- pytest-celery's legacy fixtures, pointed at the real tradebus app -------------------------------


@pytest.fixture(scope="session")
def celery_session_app(broker: Vhost) -> Iterator[object]:
    """The real tradebus app (already configured for the session vhost), not a test app."""
    from tradebus.app import app

    app.loader.import_default_modules()
    yield app


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    """The in-process worker runs its tasks in a thread pool.

    With the solo pool, the worker thread's event loop sometimes sat in epoll for ~10 s with deliveries
    waiting (Celery's hub computes its poll timeout from its timers), long enough for a 10-second queue
    TTL to expire a ticker mid-test. Pool processes (what users run) are tested in test_pools_live.py.
    """
    return "threads"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, object]:
    """The session worker consumes every stage queue; tradebus has no ``celery.ping`` task."""
    from routing import STAGE_QUEUES

    return {"queues": [q.name for q in STAGE_QUEUES], "perform_ping_check": False, "shutdown_timeout": 60.0}
