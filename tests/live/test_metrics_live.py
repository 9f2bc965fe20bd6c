"""Metrics on the real broker: what the pools' endpoints and RabbitMQ's plugin report is what happened.

Two pools of the order path run as worker processes (prefork, at their profiles) in a vhost of their own,
each serving ``/metrics`` on a port of its own. Signals go through risk, order and fill; a few bad messages
are dead-lettered; one signal arrives redelivered. Then each pool's counters and the broker's per-queue
figures (rabbitmq_prometheus, the path and families Prometheus scrapes) are compared with what was sent.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Producer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.support.bus import MASTERTRADE, SETTINGS, Vhost, free_port
from tests.support.letrade_samples import PAYLOADS
from tests.support.wait import raw_publish, wait_until
from tradebus import recorder
from tradebus.application import TradebusCelery, create_app
from tradebus.mastertrade import account
from tradebus.mastertrade.messages import OrderRequest, Ticker, TradingSignal
from tradebus.mastertrade.wire import publish
from workers.launch import PoolProcess, start_pool, stop_all, wait_for_consumers

pytestmark = [pytest.mark.broker, pytest.mark.slow]

#: The broker's per-queue figures, as deploy/prometheus/prometheus.yml scrapes them.
BROKER_METRICS = (
    "http://127.0.0.1:15692/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count"
)
RISK, EXECUTOR = "tradebus.risk.evaluate_signal", "tradebus.execution.execute_order"
SIGNALS = 4
LETRADE_TRADE = "tradebus.letrade_exchange_connector.execute_trade"
TICKERS, TICKER_STAGE, TICKS = "ticker_updates", "tradebus.monitoring.on_ticker", 30


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an endpoint: (name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def signal(symbol: str, age: timedelta = timedelta(0)) -> TradingSignal:
    return TradingSignal(
        strategy_id="metrics-test",
        symbol=symbol,
        action="BUY",
        confidence=0.9,  # type: ignore[arg-type]
        entry_price=100.0,
        position_size_pct=0.02,
        timestamp=datetime.now(UTC) - age,
    )


def letrade_trade(client_order_id: str) -> dict[str, Any]:
    """A small paper market buy, as the seed's execute_trade (tests/live/test_letrade_live.py)."""
    return {
        **PAYLOADS["execute_trade"][1],
        "strategy_id": 901,
        "symbol": f"M{uuid.uuid4().hex[:6].upper()}/USDT",
        "amount": 0.002,
        "client_order_id": client_order_id,
    }


@pytest.fixture
def bus(declared_vhost: Vhost, fresh_state: str) -> Iterator[TradebusCelery]:
    """An app publishing into the test's vhost, with the test's Redis prefix."""
    app = create_app(
        MASTERTRADE, SETTINGS.with_(broker_url=declared_vhost.url, redis_prefix=fresh_state), main="metrics"
    )
    yield app
    app.close()


@pytest.fixture
def pools(declared_vhost: Vhost, tmp_path: Path) -> Iterator[dict[str, int]]:
    """trading_signals, order_requests and ticker_updates (a batched pool, at its profile's prefetch) as
    worker processes; pool -> its metrics port."""
    ports = {"trading_signals": free_port(), "order_requests": free_port(), TICKERS: free_port()}
    started: list[PoolProcess] = []

    def start() -> dict[str, int]:
        for name, port in ports.items():
            env = {"TRADEBUS_BROKER_URL": declared_vhost.url, "TRADEBUS_METRICS_PORT": str(port)}
            started.append(start_pool(name, tmp_path, env=env))
        with declared_vhost.connection() as conn:
            assert not wait_for_consumers(conn, ports, 120.0, started), "the pools did not start"
        return ports

    yield start  # type: ignore[misc]
    stop_all(started)


def test_the_pools_and_the_broker_report_what_went_through_the_order_path(
    bus: TradebusCelery, declared_vhost: Vhost, pools: Any
) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    symbols = [f"M{tag}{i}USDT" for i in range(SIGNALS)]
    for symbol in symbols:  # the executor fills at the last price it knows
        account.record_price(symbol, 100.0)
    # One signal is delivered once before the pools run and put back: it reaches its stage redelivered.
    publish(signal(symbols[0]), app=bus)
    with declared_vhost.connection() as conn:
        channel = conn.channel()
        held = wait_until(lambda: channel.basic_get("trading_signals", no_ack=False), timeout=10)
        channel.basic_reject(held.delivery_tag, requeue=True)
    # Ticks as a plain service sends them, queued before the pools start: the batched pool finds a backlog.
    ticks = [Ticker(symbol=f"M{tag}TUSDT", price=100.0 + i).model_dump_json() for i in range(TICKS)]
    with Connection(declared_vhost.url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel())
        for body in [*ticks, "not json"]:
            key = f"ticker.M{tag}TUSDT"
            producer.publish(
                body, exchange="mastertrade.market", routing_key=key, content_type="application/json"
            )
    ports = pools()
    for symbol in symbols[1:]:
        publish(signal(symbol), app=bus)
    # Dead letters: bad JSON and a body that is no signal (from a plain service), a signal three days old
    # (the risk manager refuses them), an order no risk check approved.
    trading, key = "mastertrade.trading", f"signal.M{tag}X.metrics-test"
    raw_publish(declared_vhost, "{not json", trading, key, content_type="application/json")
    raw_publish(declared_vhost, '{"type": "trading_signal"}', trading, key, content_type="application/json")
    publish(signal(f"M{tag}XUSDT", age=timedelta(days=3)), app=bus)
    refused = OrderRequest(
        request_id=f"req-{tag}", strategy_id="metrics-test", symbol=symbols[0], side="BUY", quantity=1.0,
        risk_approved=False,
    )  # fmt: skip
    publish(refused, app=bus)
    raw_publish(declared_vhost, "{}", trading, f"nowhere.{tag}")  # no binding: to unrouted.trading

    risk_url = f"http://127.0.0.1:{ports['trading_signals']}/metrics"
    executor_url = f"http://127.0.0.1:{ports['order_requests']}/metrics"

    def finished(url: str, stage: str, queue: str, count: int) -> dict[Any, float] | None:
        samples = scrape(url)
        done = sample(samples, "tradebus_processing_seconds_count", queue=queue, stage=stage)
        return samples if done >= count else None

    risk = wait_until(lambda: finished(risk_url, RISK, "trading_signals", SIGNALS + 3), timeout=60)
    executor = wait_until(lambda: finished(executor_url, EXECUTOR, "order_requests", SIGNALS + 1), timeout=60)
    assert risk and executor, "the stages did not finish every delivery"

    def outcomes(samples: dict[Any, float], queue: str, stage: str) -> dict[str, float]:
        return {
            outcome: sample(
                samples, "tradebus_messages_processed_total", queue=queue, stage=stage, outcome=outcome
            )
            for outcome in ("success", "dead_lettered", "retried", "duplicate", "failed")
        }

    def reasons(samples: dict[Any, float]) -> dict[str, float]:
        return {
            dict(labels)["reason"]: value
            for (name, labels), value in samples.items()
            if name == "tradebus_dead_letters_total" and value
        }

    r = {"queue": "trading_signals", "stage": RISK}
    assert outcomes(risk, **r) == {
        "success": 4,
        "dead_lettered": 3,
        "retried": 0,
        "duplicate": 0,
        "failed": 0,
    }
    assert reasons(risk) == {"invalid_json": 1, "schema_violation": 1, "stale": 1}
    assert sample(risk, "tradebus_redeliveries_total", **r) == 1
    assert sample(risk, "tradebus_retries_total", **r) == 0
    # Every delivery took some time; those tradebus published (the signals) carry their publish time.
    assert sample(risk, "tradebus_processing_seconds_count", **r) == SIGNALS + 3
    assert sample(risk, "tradebus_publish_to_start_seconds_count", **r) == SIGNALS + 1
    assert sample(risk, "tradebus_processing_seconds_bucket", le="+Inf", **r) == SIGNALS + 3

    e = {"queue": "order_requests", "stage": EXECUTOR}
    assert outcomes(executor, **e) == {
        "success": 4, "dead_lettered": 1, "retried": 0, "duplicate": 0, "failed": 0,
    }  # fmt: skip
    assert reasons(executor) == {"order_refused": 1}
    assert sample(executor, "tradebus_publish_to_start_seconds_count", **e) == SIGNALS + 1

    # The batched pool: every tick counted as its stage, though they ran in a few batch tasks.
    t = {"queue": TICKERS, "stage": TICKER_STAGE}
    ticker_url = f"http://127.0.0.1:{ports[TICKERS]}/metrics"
    tickers = wait_until(lambda: finished(ticker_url, TICKER_STAGE, TICKERS, TICKS + 1), timeout=60)
    assert tickers, "the batched pool did not count every tick"
    assert outcomes(tickers, **t) == {
        "success": TICKS, "dead_lettered": 1, "retried": 0, "duplicate": 0, "failed": 0,
    }  # fmt: skip
    assert reasons(tickers) == {"invalid_json": 1}
    assert sample(tickers, "tradebus_processing_seconds_count", **t) == TICKS + 1
    assert recorder.metrics()[f"batches:{TICKERS}"] < TICKS  # it did run them in batches

    # The broker's view: each DLQ holds its dead letters, the update queue (no consumer here) one fill per
    # order, unrouted.trading the unroutable message; the two stage queues have their pool's consumer.
    expected = {
        ("rabbitmq_detailed_queue_messages", "dlq.trading_signals"): 3,
        ("rabbitmq_detailed_queue_messages", "dlq.order_requests"): 1,
        ("rabbitmq_detailed_queue_messages", "order_updates"): SIGNALS,
        ("rabbitmq_detailed_queue_messages_ready", "order_updates"): SIGNALS,
        ("rabbitmq_detailed_queue_messages_unacked", "order_updates"): 0,
        ("rabbitmq_detailed_queue_messages", "unrouted.trading"): 1,
        ("rabbitmq_detailed_queue_messages", "trading_signals"): 0,
        ("rabbitmq_detailed_queue_consumers", "trading_signals"): 1,
        ("rabbitmq_detailed_queue_consumers", "order_requests"): 1,
        ("rabbitmq_detailed_queue_consumers", "order_updates"): 0,
    }
    url = f"{BROKER_METRICS}&vhost={declared_vhost.name}"

    def broker() -> dict[tuple[str, str], float]:
        samples = scrape(url)
        return {
            (name, queue): sample(samples, name, vhost=declared_vhost.name, queue=queue)
            for name, queue in expected
        }

    # The plugin's figures are the queues' statistics, emitted every 5 s: wait for them to settle.
    assert wait_until(lambda: broker() == expected, timeout=30) or broker() == expected
    with Connection(declared_vhost.url) as conn:
        channel = conn.channel()
        assert channel.queue_declare("order_updates", passive=True).message_count == SIGNALS


def test_a_letrade_pool_reports_its_commands_and_dead_letters_and_the_broker_its_dlq(
    letrade_vhost: Vhost, fresh_state: str, tmp_path: Path
) -> None:
    from tests.fixtures.letrade import start_letrade_pools
    from tradebus.letrade.bus import LetradeBus

    port = free_port()
    pools = start_letrade_pools(
        letrade_vhost, tmp_path, ["letrade.exchange_connector"], {"TRADEBUS_METRICS_PORT": str(port)}
    )
    try:
        bus = LetradeBus(letrade_vhost.url, source="metrics-test").connect()
        try:
            for i in range(2):
                bus.publish("letrade.commands", "execute_trade", letrade_trade(f"m{uuid.uuid4().hex[:8]}{i}"))
        finally:
            bus.close()
        for body in ('{"payload": {}}', "{not json"):  # no envelope; no JSON
            raw_publish(
                letrade_vhost,
                body,
                "letrade.commands",
                "commands.execute_trade",
                content_type="application/json",
            )
        q = {"queue": "letrade.exchange_connector", "stage": LETRADE_TRADE}
        url = f"http://127.0.0.1:{port}/metrics"
        samples = wait_until(
            lambda: (s := scrape(url)) and sample(s, "tradebus_processing_seconds_count", **q) >= 4 and s,
            timeout=60,
        )
        assert samples, "the exchange connector did not finish every command"
        processed = "tradebus_messages_processed_total"
        assert sample(samples, processed, outcome="success", **q) == 2
        assert sample(samples, processed, outcome="dead_lettered", **q) == 2
        assert sample(samples, "tradebus_dead_letters_total", reason="schema_violation", **q) == 1
        assert sample(samples, "tradebus_dead_letters_total", reason="invalid_json", **q) == 1
        assert sample(samples, "tradebus_publish_to_start_seconds_count", **q) == 2  # the client's

        dlq = "letrade.dlq.commands.execute_trade"
        url = f"{BROKER_METRICS}&vhost={letrade_vhost.name}"
        v = {"vhost": letrade_vhost.name}

        def broker() -> tuple[float, float]:
            s = scrape(url)
            return (
                sample(s, "rabbitmq_detailed_queue_messages", queue=dlq, **v),
                sample(s, "rabbitmq_detailed_queue_consumers", queue="letrade.exchange_connector", **v),
            )

        assert wait_until(lambda: broker() == (2, 1), timeout=30) or broker() == (2, 1)
    finally:
        stop_all(pools)


@pytest.mark.usefixtures("celery_session_worker", "fresh_state")
def test_a_retry_and_its_delivery_are_counted_as_celery_runs_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the session's in-process worker: a stage failing transiently once counts a retry at once."""
    import redis

    from tasks.backtest import record_signal
    from tradebus import metrics
    from tradebus import publish as publish_default
    from tradebus.mastertrade.samples import signal as sample_signal

    calls: list[object] = []

    def fail_once(message: object) -> None:
        calls.append(message)
        if len(calls) == 1:
            raise redis.ConnectionError("redis is down")

    monkeypatch.setattr(record_signal, "handler", fail_once)
    registry = metrics.enable(CollectorRegistry())
    try:
        publish_default(sample_signal(f"metrics-{uuid.uuid4().hex[:8]}", backtest=True))
        q = {"queue": "backtest_signals", "stage": record_signal.name}

        def value(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, {**q, **labels}) or 0.0

        assert wait_until(lambda: value("tradebus_retries_total") == 1, timeout=30), "no retry counted"
        assert value("tradebus_messages_processed_total", outcome="retried") == 1
        assert value("tradebus_publish_to_start_seconds_count") == 1
    finally:
        metrics.disable()
