"""The test session's place on the real broker: its vhost and Redis prefix, both topologies, and helpers.

Importing this module points the environment at the session's vhost and prefix *before* tradebus is
imported, so the default app, the CLI and every worker subprocess a test starts talk to them only
(tests/conftest.py imports it first).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, replace
from urllib.parse import quote, urlsplit, urlunsplit

RUN_ID = uuid.uuid4().hex[:8]
SESSION_VHOST = f"tradebus-test-{RUN_ID}"
_BASE_URL = os.environ.get("TRADEBUS_BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672//"


def vhost_url(vhost: str, base: str = _BASE_URL) -> str:
    """The broker URL of the base broker (each node of a ``;``-separated list), on ``vhost``."""
    return ";".join(
        urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
        for parts in (urlsplit(url.strip()) for url in base.split(";") if url.strip())
    )


os.environ["TRADEBUS_BROKER_URL"] = vhost_url(SESSION_VHOST)
# The suite runs MasterTrade in this process, whatever the shell exported; Letrade runs in subprocesses.
os.environ["TRADEBUS_TOPOLOGY"] = "mastertrade"
os.environ["TRADEBUS_REDIS_PREFIX"] = f"tradebus-test-{RUN_ID}"

from kombu import Connection  # noqa: E402

import routing  # noqa: E402
from tradebus.management import Management  # noqa: E402
from tradebus.settings import ManagementSettings, Settings  # noqa: E402
from tradebus.topology import check_and_declare  # noqa: E402

#: Both buses' topologies, built once for the session.
MASTERTRADE = routing.build("mastertrade")
LETRADE = routing.build("letrade")
#: The settings every app of this session starts from (the environment above).
SETTINGS = Settings.from_env()

REQUIRE_BROKER = os.environ.get("TRADEBUS_REQUIRE_BROKER") == "1"


def port_open(host: str, port: int) -> bool:
    """Whether something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def missing_services() -> list[str]:
    settings = SETTINGS
    amqp = urlsplit(settings.broker_url.split(";")[0])
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
    return [name for name, (host, port) in checks.items() if not port_open(host, port)]


@dataclass
class Vhost:
    """A throwaway RabbitMQ vhost: its name, its AMQP URL and its management API."""

    name: str
    url: str
    management: Management

    def connection(self) -> Connection:
        """A new Kombu connection to this vhost."""
        return Connection(self.url, connect_timeout=5)


def admin() -> Management:
    return Management(replace(SETTINGS.management, vhost="/"))


def make_vhost(name: str) -> Vhost:
    api = admin()
    api.create_vhost(name)
    scoped = ManagementSettings.from_broker_url(vhost_url(name), SETTINGS.management_url)
    return Vhost(name, vhost_url(name), Management(scoped))


def declare_all(vhost: Vhost) -> None:
    """Declare MasterTrade's whole topology in ``vhost``, dead-letter policies included."""
    with vhost.connection() as conn:
        check_and_declare(MASTERTRADE, conn, vhost.management)


def free_port() -> int:
    """A TCP port nothing on this machine listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def declare_letrade(vhost: Vhost) -> None:
    """Declare Letrade's exchanges and queues in ``vhost``, and its alternate-exchange policies."""
    with vhost.connection() as conn:
        check_and_declare(LETRADE, conn, vhost.management)
