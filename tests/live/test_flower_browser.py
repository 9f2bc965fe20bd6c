"""An operator opens Flower in a real browser, logs in, and sees the running pools and their tasks.

Two pools run as their own worker processes (``celery -A tradebus worker -Q <queue> -n <pool>@host``, one
process each to spare the machine), Flower runs as ``celery -A tradebus flower`` with its login from
``TRADEBUS_FLOWER_USER`` / ``TRADEBUS_FLOWER_PASSWORD``, and headless Chromium visits it. Screenshots of
the workers, tasks and broker pages are kept in ``artifacts/``.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.browser import ARTIFACTS
from tests.fixtures.flower import FlowerProcess
from tests.support.bus import MASTERTRADE, SETTINGS, Vhost
from tradebus.application import create_app
from tradebus.mastertrade.samples import order_request, signal
from tradebus.mastertrade.wire import publish
from workers.launch import PoolProcess, start_pool, wait_for_consumers

pytestmark = [pytest.mark.broker, pytest.mark.slow]

USER, PASSWORD = "operator", "browser-test-password"
#: Pool -> the stage task that runs on it.
SHOWN = {
    "order_requests": "tradebus.execution.execute_order",
    "trading_signals": "tradebus.risk.evaluate_signal",
}
TIMEOUT = 45.0


def api(flower: FlowerProcess, path: str) -> Any:
    """GET Flower's API with the operator's login; the decoded JSON (None while it errors)."""
    request = urllib.request.Request(f"{flower.url}/api/{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def eventually(check: Callable[[], Any], what: str, log: Callable[[], str]) -> Any:
    """Poll ``check`` until it is truthy (bounded); fail with ``what`` and the log otherwise."""
    deadline = time.monotonic() + TIMEOUT
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {TIMEOUT:.0f}s:\n{log()[-3000:]}")
        time.sleep(0.5)
    return result


def text(browser: Any, element_id: str) -> str:
    """The text of an element as written in the page (``.text`` would follow the layout's line wraps)."""
    from selenium.webdriver.common.by import By

    content: str = browser.find_element(By.ID, element_id).get_attribute("textContent") or ""
    return content


@pytest.fixture
def pools(declared_vhost: Vhost, tmp_path: Path) -> Iterator[list[PoolProcess]]:
    """The two pools, consuming in a vhost of their own."""
    env = {"TRADEBUS_BROKER_URL": declared_vhost.url}
    started = [start_pool(name, tmp_path / "workers", ["-c", "1"], env=env) for name in SHOWN]
    try:
        with declared_vhost.connection() as conn:
            missing = wait_for_consumers(conn, SHOWN, 60, started)
        assert not missing, [p.log.read_text()[-2000:] for p in started]
        yield started
    finally:
        for pool in started:
            pool.stop()


def test_operator_logs_into_flower_and_sees_the_running_pools_and_the_tradebus_tasks(
    declared_vhost: Vhost,
    pools: list[PoolProcess],
    start_flower: Callable[..., FlowerProcess],
    browser: Any,
) -> None:
    from selenium.webdriver.common.by import By

    flower = start_flower(
        {
            "TRADEBUS_BROKER_URL": declared_vhost.url,
            "TRADEBUS_FLOWER_USER": USER,
            "TRADEBUS_FLOWER_PASSWORD": PASSWORD,
        }
    )
    names = eventually(
        lambda: {w.split("@")[0] for w in (api(flower, "workers?refresh=1") or {})} >= set(SHOWN),
        "Flower never saw both pools",
        flower.output,
    )
    assert names
    # Workers send task events only while someone watches: Flower turns them on within a few seconds of
    # starting (its enable-events timer), so the stages keep getting work until Flower has seen them run.
    app = create_app(MASTERTRADE, SETTINGS.with_(broker_url=declared_vhost.url), main="risk-service")
    sent = iter(range(1000))

    def seen_after_publishing() -> bool:
        n = next(sent)
        publish(order_request(f"req-flower-{n}"), app=app)
        publish(signal(f"flower-strategy-{n}"), app=app)
        time.sleep(1.0)
        return {t["name"] for t in (api(flower, "tasks") or {}).values()} >= set(SHOWN.values())

    try:
        eventually(seen_after_publishing, "Flower never saw the tasks", flower.output)
    finally:
        app.close()
    ARTIFACTS.mkdir(exist_ok=True)

    browser.get(f"{flower.url}/workers")
    assert "Workers" not in browser.title  # no login yet: 401, an empty page

    host = flower.url.removeprefix("http://")
    browser.get(f"http://{USER}:{PASSWORD}@{host}/workers")  # basic auth; the browser keeps the login
    rows = text(browser, "workers-table")
    for pool in SHOWN:
        assert f"{pool}@" in rows
    browser.save_screenshot(str(ARTIFACTS / "flower-workers.png"))

    browser.get(f"{flower.url}/tasks")
    table = eventually(
        lambda: (
            all(name in (t := browser.find_element(By.ID, "tasks-table").text) for name in SHOWN.values())
            and t
        ),
        "the tasks page never listed the stage tasks",
        flower.output,
    )
    assert "SUCCESS" in table
    browser.save_screenshot(str(ARTIFACTS / "flower-tasks.png"))

    def consumers_shown() -> bool:
        browser.get(f"{flower.url}/broker")
        cells = {q: browser.find_elements(By.CSS_SELECTOR, f"tr#{q} td") for q in SHOWN}
        if any(
            len(row) < 5 for row in cells.values()
        ):  # the page rendered before the management API answered
            return False
        counts = {q: row[4].text for q, row in cells.items()}
        return counts == dict.fromkeys(SHOWN, "1")  # each pool's one consumer, from the management API

    eventually(consumers_shown, "the broker page never showed each pool's consumer", flower.output)
    browser.save_screenshot(str(ARTIFACTS / "flower-broker.png"))
