"""The stage metrics' bookkeeping (tradebus/metrics.py) and a worker's exporter (workers/exporter.py).

The receivers are driven here as Celery's tracer calls them, with the request fields they read; the live
test (tests/live/test_metrics_live.py) runs them in real pools on the real broker.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import states
from prometheus_client import CollectorRegistry

from tradebus import metrics
from tradebus.errors import Reason, SettingsError
from tradebus.headers import PUBLISHED_AT
from tradebus.settings import Settings

QUEUE, STAGE = "order_requests", "tradebus.execution.execute_order"


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = metrics.enable(CollectorRegistry())
    yield registry
    metrics.disable()


def stage_task(**request: Any) -> Any:
    fields = {"delivery_info": {}, "headers": {}, "retries": 0, **request}
    return SimpleNamespace(queue_name=QUEUE, name=STAGE, request=SimpleNamespace(**fields))


def deliver(task: Any, state: str = states.SUCCESS, dead_letter: str | None = None) -> None:
    """One delivery as Celery's tracer reports it: prerun, the stage (maybe dead-lettering), postrun."""
    metrics._on_prerun(sender=task, task=task)
    if dead_letter:
        metrics.dead_lettered(task.queue_name, task.name, dead_letter, task.request)
    metrics._on_postrun(sender=task, task=task, state=state)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, {"queue": QUEUE, "stage": STAGE, **labels})
    return found or 0.0


def test_each_delivery_is_counted_once_under_what_became_of_it(registry: CollectorRegistry) -> None:
    deliver(stage_task())
    deliver(stage_task())
    deliver(stage_task(), dead_letter=Reason.INVALID_JSON)
    deliver(stage_task(), state=states.RETRY)
    deliver(stage_task(), state=states.IGNORED)
    deliver(stage_task(), state=states.FAILURE)
    deliver(stage_task(), state=states.REJECTED)
    processed = "tradebus_messages_processed_total"
    assert {o.value: value(registry, processed, outcome=o.value) for o in metrics.Outcome} == {
        "success": 2,
        "dead_lettered": 1,
        "retried": 1,
        "duplicate": 1,
        "failed": 2,
    }
    assert value(registry, "tradebus_processing_seconds_count") == 7
    assert value(registry, "tradebus_retries_total") == 1
    assert value(registry, "tradebus_dead_letters_total", reason="invalid_json") == 1


def test_publish_to_start_is_measured_on_first_attempts_that_carry_their_publish_time(
    registry: CollectorRegistry,
) -> None:
    deliver(stage_task(headers={PUBLISHED_AT: time.time() - 0.2}))
    deliver(stage_task(headers={PUBLISHED_AT: time.time() - 0.2}, retries=1))  # a retry waited its delay
    deliver(stage_task())  # a plain service's message: no publish time
    deliver(stage_task(headers={PUBLISHED_AT: "yesterday"}))  # not a number: not measured, still run
    assert value(registry, "tradebus_publish_to_start_seconds_count") == 1
    assert 0.2 <= value(registry, "tradebus_publish_to_start_seconds_sum") < 60
    assert value(registry, "tradebus_publish_to_start_seconds_bucket", le="0.1") == 0
    assert value(registry, "tradebus_messages_processed_total", outcome="success") == 4


def test_redeliveries_are_what_rabbitmq_marked_redelivered(registry: CollectorRegistry) -> None:
    deliver(stage_task(delivery_info={"redelivered": True}))
    deliver(stage_task(delivery_info={"redelivered": False}))
    assert value(registry, "tradebus_redeliveries_total") == 1


def test_a_revocation_counts_a_dead_letter_and_no_delivery(registry: CollectorRegistry) -> None:
    metrics.dead_lettered(QUEUE, STAGE, Reason.REVOKED)
    assert value(registry, "tradebus_dead_letters_total", reason="revoked") == 1
    assert value(registry, "tradebus_processing_seconds_count") == 0


def test_tasks_that_are_no_stage_are_not_counted_themselves(registry: CollectorRegistry) -> None:
    """A periodic task, or the batch task (whose deliveries count as their stage: the tests below)."""
    for name in ("tradebus.monitoring.health_report", "tradebus.batch"):
        task = SimpleNamespace(name=name, request=SimpleNamespace())
        metrics._on_prerun(sender=task, task=task)
        metrics._on_postrun(sender=task, task=task, state=states.SUCCESS)
    deliver(stage_task())  # positive control
    counted = [s for m in registry.collect() for s in m.samples if s.name.endswith("seconds_count")]
    assert {s.labels["stage"] for s in counted} == {STAGE}


TICKERS, TICKER_STAGE = "ticker_updates", "tradebus.monitoring.on_ticker"


@pytest.fixture
def memory_app() -> Iterator[Any]:
    """The bus on Kombu's in-memory transport and an in-process Redis, as the embedded demo runs."""
    import fakeredis

    from tests.support.bus import MASTERTRADE, SETTINGS
    from tradebus import store
    from tradebus.application import create_app

    app = create_app(MASTERTRADE, SETTINGS.with_(broker_url="memory://"), main="metrics-batch")
    app.conf.update(broker_url="memory://", result_backend="cache+memory://")
    before = list(store._override)
    store.use(fakeredis.FakeRedis())
    yield app
    store._override[:] = before
    app.close()


def batch_items(count: int, invalid: int = 0, symbol: str = "BTCUSDT") -> list[dict[str, Any]]:
    """The items of one ticker_updates batch (tradebus/batching.py ``item``), as a plain service sends."""
    bodies = [f'{{"type": "ticker", "symbol": "{symbol}", "price": {100 + i}}}' for i in range(count)]
    bodies += ["not json"] * invalid
    return [
        {
            "body": body,
            "id": f"tick-{i}",
            "headers": {"content_type": "application/json", PUBLISHED_AT: time.time()},
            "properties": {},
            "delivery_info": {"exchange": "mastertrade.market", "routing_key": f"ticker.{symbol}"},
        }
        for i, body in enumerate(bodies)
    ]


def run_batch(app: Any, items: list[dict[str, Any]]) -> None:
    from tradebus.batching import BATCH_TASK

    result = app.tasks[BATCH_TASK].apply(args=[TICKER_STAGE, items])  # Celery's signals around it
    assert result.successful(), result.traceback


def ticker_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"queue": TICKERS, "stage": TICKER_STAGE, **labels}) or 0.0


def test_each_delivery_of_a_batch_counts_as_its_stage_once_its_batch_handler_took_it(
    registry: CollectorRegistry, memory_app: Any
) -> None:
    run_batch(memory_app, batch_items(5, invalid=1))
    processed = "tradebus_messages_processed_total"
    assert ticker_value(registry, processed, outcome="success") == 5
    assert ticker_value(registry, processed, outcome="dead_lettered") == 1
    assert ticker_value(registry, "tradebus_dead_letters_total", reason="invalid_json") == 1
    assert ticker_value(registry, "tradebus_processing_seconds_count") == 6
    assert ticker_value(registry, "tradebus_publish_to_start_seconds_count") == 6
    assert ticker_value(registry, processed, outcome="failed") == 0


def test_a_batch_whose_handler_failed_counts_each_delivery_once_as_it_ran_alone(
    registry: CollectorRegistry, memory_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.exceptions import Ignore

    stage = memory_app.tasks[TICKER_STAGE]
    ran: list[Any] = []

    def fail(messages: list[Any]) -> None:
        raise ValueError("the batch's write failed")

    def alone(message: Any) -> None:  # one runs, one is a repeat, one fails for good
        ran.append(message)
        if len(ran) == 2:
            raise Ignore
        if len(ran) == 3:
            raise RuntimeError("a bug")

    monkeypatch.setattr(stage, "batch_handler", fail)
    monkeypatch.setattr(stage, "handler", alone)
    run_batch(memory_app, batch_items(3))
    processed = "tradebus_messages_processed_total"
    assert len(ran) == 3
    outcomes = ("success", "duplicate", "dead_lettered")
    assert {o: ticker_value(registry, processed, outcome=o) for o in outcomes} == dict.fromkeys(outcomes, 1)
    assert ticker_value(registry, "tradebus_dead_letters_total", reason="stage_error") == 1
    assert ticker_value(registry, "tradebus_processing_seconds_count") == 3
    assert ticker_value(registry, "tradebus_publish_to_start_seconds_count") == 3  # not once more alone


def test_nothing_is_counted_until_enabled() -> None:
    assert not metrics.enabled()
    deliver(stage_task(), dead_letter=Reason.STAGE_ERROR)  # no error, nothing kept
    registry = metrics.enable(CollectorRegistry())
    try:
        assert value(registry, "tradebus_dead_letters_total", reason="stage_error") == 0
        deliver(stage_task(), dead_letter=Reason.STAGE_ERROR)
        assert value(registry, "tradebus_dead_letters_total", reason="stage_error") == 1
    finally:
        metrics.disable()


def test_the_metrics_port_is_a_setting_off_by_default() -> None:
    assert not Settings.from_env({}).metrics.enabled
    chosen = Settings.from_env({"TRADEBUS_METRICS_PORT": "9100", "TRADEBUS_METRICS_ADDRESS": "0.0.0.0"})
    assert (chosen.metrics.port, chosen.metrics.address) == (9100, "0.0.0.0")
    assert Settings.from_env({"TRADEBUS_METRICS_PORT": "9100"}).metrics.address == "127.0.0.1"
    for wrong in ("0", "70000", "http"):
        with pytest.raises(SettingsError, match="TRADEBUS_METRICS_PORT"):
            Settings.from_env({"TRADEBUS_METRICS_PORT": wrong})


EXPORTER_SCRIPT = textwrap.dedent(
    """
    import os, sys, urllib.request
    import prometheus_client  # as Celery's command line does (Flower's metrics), before the worker starts
    from types import SimpleNamespace
    from tradebus import metrics
    from tradebus.errors import MetricsUnavailable
    from tradebus.settings import MetricsSettings
    from workers import exporter

    port = int(sys.argv[1])
    running = exporter.start(MetricsSettings(port=port), "order_requests@test")
    task = SimpleNamespace(
        queue_name="order_requests", name="stage",
        request=SimpleNamespace(delivery_info={}, headers={}, retries=0),
    )
    children = []
    for _ in range(2):  # two pool processes, forked after the exporter started, as the prefork pool does
        pid = os.fork()
        if pid == 0:
            metrics._on_prerun(task=task)
            metrics._on_postrun(task=task, state="SUCCESS")
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
    try:
        exporter.start(MetricsSettings(port=port), "again")
    except MetricsUnavailable as exc:
        print("refused:", exc)
    directory = running.directory
    running.close()
    print("removed:", not directory.exists())
    """
)


def test_a_worker_serves_the_counts_of_every_pool_process_it_forks(tmp_path: Any) -> None:
    from tests.support.bus import free_port

    port = free_port()
    out = subprocess.run(
        [sys.executable, "-c", EXPORTER_SCRIPT, str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    success = 'tradebus_messages_processed_total{outcome="success",queue="order_requests",stage="stage"} 2.0'
    assert success in out.stdout
    assert "tradebus_messages_processed_created" not in out.stdout
    assert "refused: this process counts already" in out.stdout
    assert "removed: True" in out.stdout


def test_a_taken_port_stops_the_worker_with_the_setting_named(tmp_path: Any) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        script = (
            "from workers import exporter; from tradebus.settings import MetricsSettings; "
            f"exporter.start(MetricsSettings(port={port}), 'w@h')"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
        )
    assert out.returncode != 0
    assert "MetricsUnavailable" in out.stderr and "TRADEBUS_METRICS_PORT" in out.stderr


@pytest.fixture
def letrade_app() -> Iterator[Any]:
    """Letrade's bus on the in-memory transport and an in-process Redis."""
    import fakeredis

    from tests.support.bus import SETTINGS
    from tradebus import store
    from tradebus.application import create_app, topology_for

    settings = SETTINGS.with_(broker_url="memory://")
    app = create_app(topology_for("letrade", settings), settings, main="metrics-letrade")
    app.conf.update(broker_url="memory://", result_backend="cache+memory://")
    before = list(store._override)
    store.use(fakeredis.FakeRedis())
    yield app
    store._override[:] = before
    app.close()


def test_an_invalid_candle_of_a_batch_counts_a_dead_letter_and_its_message_stays_a_success(
    registry: CollectorRegistry, letrade_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import itertools
    import json

    from tradebus.letrade import feed, simulator
    from tradebus.letrade.messages import encode

    stage = letrade_app.tasks["tradebus.letrade_market_data.store"]
    handled: list[Any] = []
    monkeypatch.setattr(stage, "candle_batch_handler", handled.append)  # the store needs Redis's Lua
    (batch,) = feed.batches(
        [c.payload for c in itertools.islice(simulator.candles(seed=5), 12)][::3], "exchange_connector"
    )
    data = json.loads(encode(batch))
    data["payload"]["candles"][3] = "not a candle"
    stage.push_request(
        id=batch.message_id,
        args=[json.dumps(data)],
        headers={"content_type": "application/json"},
        delivery_info={"exchange": batch.exchange, "routing_key": batch.routing_key},
        retries=0,
    )
    try:
        metrics.delivery_started(stage)  # as Celery's task_prerun
        stage.run_stage(json.dumps(data))
        metrics.delivery_finished(stage, states.SUCCESS)  # as task_postrun
    finally:
        stage.pop_request()
    assert [len(b.payload.candles) for b in handled] == [3]
    q = {"queue": stage.queue_name, "stage": stage.name}
    assert registry.get_sample_value("tradebus_dead_letters_total", {**q, "reason": "schema_violation"}) == 1
    processed = "tradebus_messages_processed_total"
    assert registry.get_sample_value(processed, {**q, "outcome": "success"}) == 1
    assert (registry.get_sample_value(processed, {**q, "outcome": "dead_lettered"}) or 0) == 0
