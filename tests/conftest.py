"""Shared fixtures: a RabbitMQ vhost and a Redis key prefix of the test session's own, and workers.

The environment is pointed at the session's vhost *before* tradebus is imported, so the app, the CLI and
every worker subprocess the tests start talk to that vhost only. Broker tests fail when RabbitMQ or Redis
is missing and ``TRADEBUS_REQUIRE_BROKER=1`` (as in CI); elsewhere they skip and say why.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
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
# The suite runs MasterTrade in this process, whatever the shell exported; Letrade runs in subprocesses.
os.environ["TRADEBUS_TOPOLOGY"] = "mastertrade"
os.environ["TRADEBUS_REDIS_PREFIX"] = f"tradebus-test-{RUN_ID}"

from kombu import Connection  # noqa: E402

import routing  # noqa: E402
from tradebus.management import Management  # noqa: E402
from tradebus.settings import ManagementSettings, Settings  # noqa: E402

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


def _missing_services() -> list[str]:
    settings = SETTINGS
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
    return [name for name, (host, port) in checks.items() if not port_open(host, port)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart RabbitMQ run last, so no other test sees the broker go away."""
    items.sort(key=lambda item: item.get_closest_marker("broker_restart") is not None)


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
    settings = SETTINGS.management
    return Management(ManagementSettings(settings.base_url, settings.username, settings.password, "/"))


def _make_vhost(name: str) -> Vhost:
    admin = _admin()
    admin.create_vhost(name)
    scoped = ManagementSettings.from_broker_url(vhost_url(name), SETTINGS.management_url)
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
    declare_all(vhost)
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


def declare_all(vhost: Vhost) -> None:
    """Declare MasterTrade's whole topology in ``vhost``, dead-letter policies included."""
    from tradebus.topology import check_and_declare

    with vhost.connection() as conn:
        check_and_declare(MASTERTRADE, conn, vhost.management)


@pytest.fixture
def declared_vhost(fresh_vhost: Vhost) -> Vhost:
    """A fresh vhost of one test's own, with the whole topology declared."""
    declare_all(fresh_vhost)
    return fresh_vhost


@pytest.fixture(scope="module")
def topology_vhost(broker: Vhost) -> Iterator[Vhost]:
    """A vhost with the whole topology declared and no consumer, for one test module."""
    vhost = _make_vhost(f"tradebus-test-{RUN_ID}-{uuid.uuid4().hex[:6]}")
    declare_all(vhost)
    yield vhost
    _admin().delete_vhost(vhost.name)


@pytest.fixture
def fresh_state(broker: Vhost, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Redis prefix of one test's own: a fresh paper account, strategy and record, removed afterwards.

    The session worker runs in this process on the default app and reads the app's settings at every call,
    so it follows at once; worker processes a test starts take the prefix from their environment.
    """

    from tradebus import app, store

    prefix = f"tradebus-test-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("TRADEBUS_REDIS_PREFIX", prefix)
    monkeypatch.setattr(app, "settings", app.settings.with_(redis_prefix=prefix))
    yield prefix
    store.clear()
    monkeypatch.undo()


# --- pytest-celery's legacy fixtures, pointed at the real tradebus app -------------------------------


@pytest.fixture(scope="session")
def celery_session_app(broker: Vhost) -> Iterator[object]:
    """The real tradebus app (already configured for the session vhost), not a test app."""
    from tradebus import app

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
    """The session worker consumes every worker queue; tradebus has no ``celery.ping`` task."""
    queues = [q.name for q in MASTERTRADE.worker_queues]
    return {"queues": queues, "perform_ping_check": False, "shutdown_timeout": 60.0}


# --- least-privilege RabbitMQ users (tradebus/users.py) ------------------------------------------------


@dataclass
class ServiceUsers:
    """Every service's user applied to a vhost with the whole topology: names, passwords, URLs."""

    vhost: Vhost
    prefix: str
    passwords: dict[str, str]

    def url(self, service: str) -> str:
        """The AMQP URL of this vhost, logged in as ``service``'s user."""
        parts = urlsplit(self.vhost.url)
        login = f"{quote(self.prefix + service, safe='')}:{quote(self.passwords[service], safe='')}"
        return urlunsplit(
            (parts.scheme, f"{login}@{parts.hostname}:{parts.port or 5672}", parts.path, "", "")
        )


@pytest.fixture
def service_users(fresh_vhost: Vhost) -> Iterator[ServiceUsers]:
    """A fresh vhost holding the topology and one user per service, imported as RabbitMQ definitions.

    User names are global on a broker, so they carry this run's prefix; they are deleted afterwards.
    """
    from tradebus.ops.users import UserDefinitions
    from tradebus.topology import definitions

    users = UserDefinitions(fresh_vhost.name, f"tradebus-test-{RUN_ID}-{uuid.uuid4().hex[:4]}-")
    passwords = {a.service: uuid.uuid4().hex for a in users.accounts}
    admin = _admin()
    admin.request(
        "POST", "definitions", users.as_json(passwords) | definitions(MASTERTRADE, fresh_vhost.name)
    )
    try:
        yield ServiceUsers(fresh_vhost, users.prefix, passwords)
    finally:
        for account in users.accounts:
            admin.request("DELETE", f"users/{quote(users.user(account.service), safe='')}")


# --- Flower, as an operator starts it: `celery -A tradebus flower` ------------------------------------


@dataclass
class FlowerProcess:
    """A running Flower: its port, its log and its process."""

    port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """Where Flower answers."""
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """What Flower logged so far."""
        return self.log.read_text(errors="replace")


def free_port() -> int:
    """A TCP port nothing on this machine listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def start_flower(tmp_path: Path) -> Iterator[Callable[..., FlowerProcess]]:
    """Start ``celery -A tradebus flower`` with extra environment and arguments; stopped afterwards.

    Returns once Flower answers HTTP, or fails the test with Flower's log if it exits or stays silent.
    """
    started: list[FlowerProcess] = []

    def start(env: dict[str, str] | None = None, *args: str, wait: bool = True) -> FlowerProcess:
        port = free_port()
        log = tmp_path / f"flower-{port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "TRADEBUS_FLOWER_"))}
        argv = [sys.executable, "-m", "celery", "-A", "tradebus", "flower", f"--port={port}", *args]
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**environ, **(env or {})},
                cwd=tmp_path,
                start_new_session=True,
            )
        flower = FlowerProcess(port, log, process)
        started.append(flower)
        if wait:
            deadline = time.monotonic() + 60
            while not port_open("127.0.0.1", port):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Flower did not start:\n{flower.output()[-3000:]}")
                time.sleep(0.2)
        return flower

    yield start
    for flower in started:
        _stop(flower.process)


# --- a real headless browser (Debian's chromium and chromium-driver; scripts/browser.sh installs them) ------

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Headless, and nothing that reaches for the network on its own (this machine's network is closed).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Chromium driven by Selenium with a fresh profile; quit afterwards. Fails (not skips) without it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run `bash scripts/browser.sh` (make test does)", pytrace=False
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# --- Letrade_v1 (TRADEBUS_TOPOLOGY=letrade): its topology and its pools, as subprocesses -------------


def declare_letrade(vhost: Vhost) -> None:
    """Declare Letrade's exchanges and queues in ``vhost``."""
    from tradebus.topology import declare

    with vhost.connection() as conn:
        declare(LETRADE, conn)


@dataclass
class LetradePools:
    """Letrade worker pools (``celery -A tradebus worker`` with ``TRADEBUS_TOPOLOGY=letrade``) on a vhost."""

    vhost: Vhost
    pools: list[Any]

    def bus(self, source: str = "tests") -> Any:
        """A connected LetradeBus client on the pools' vhost."""
        from tradebus.letrade.bus import LetradeBus

        return LetradeBus(self.vhost.url, source=source).connect()

    def logs(self) -> str:
        """The end of every pool's log, for a failing test to show."""
        return "\n".join(f"--- {p.name}\n{p.log.read_text(errors='replace')[-2000:]}" for p in self.pools)


def start_letrade_pools(
    vhost: Vhost, log_dir: Path, names: list[str], env: dict[str, str] | None = None
) -> list[Any]:
    """Start each Letrade pool as its own worker process on ``vhost``; returns once all consume."""
    from workers.launch import PoolProcess, stop_all, wait_for_consumers

    environ = {
        **os.environ,
        "TRADEBUS_TOPOLOGY": "letrade",
        "TRADEBUS_BROKER_URL": vhost.url,
        **(env or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    pools = []
    for name in names:
        log = log_dir / f"{name}.log"
        argv = [sys.executable, "-m", "celery", "-A", "tradebus", "worker", "-Q", name]
        argv += ["-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environ,
                start_new_session=True,
            )
        pools.append(PoolProcess(name, process, log))
    with vhost.connection() as conn:
        try:
            missing = wait_for_consumers(conn, names, 180.0, pools)
        except RuntimeError:
            stop_all(pools)
            raise
    if missing:
        stop_all(pools)
        pytest.fail(f"Letrade pools not consuming: {missing}", pytrace=False)
    return pools


@pytest.fixture(scope="module")
def letrade_vhost(broker: Vhost) -> Iterator[Vhost]:
    """A vhost with Letrade's topology declared and no consumer, for one test module."""
    vhost = _make_vhost(f"tradebus-test-{RUN_ID}-letrade-{uuid.uuid4().hex[:6]}")
    declare_letrade(vhost)
    yield vhost
    _admin().delete_vhost(vhost.name)


@pytest.fixture(scope="module")
def letrade_pools(broker: Vhost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LetradePools]:
    """Every Letrade pool on a vhost of its own, state under the session's Redis prefix (``letrade:*``)."""
    from tradebus import store
    from tradebus.letrade import paper
    from workers.launch import stop_all

    vhost = _make_vhost(f"tradebus-test-{RUN_ID}-letrade-{uuid.uuid4().hex[:6]}")
    declare_letrade(vhost)
    paper.reset()
    log_dir = tmp_path_factory.mktemp("letrade-pools")
    pools = start_letrade_pools(vhost, log_dir, [q.name for q in LETRADE.worker_queues])
    yield LetradePools(vhost, pools)
    stop_all(pools)
    _admin().delete_vhost(vhost.name)
    for name in store.client().scan_iter(match=store.key("letrade", "*")):
        store.client().delete(name)
