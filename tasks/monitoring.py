"""Monitoring: prices, the order blotter and service health for the dashboards, and beat's periodic
health report (``system.health.{service}``, and ``system.alert.warning`` when a DLQ holds more than 10).
"""

from __future__ import annotations

import json
from typing import Any

from celery.utils.log import get_task_logger

from tradebus import health, state, store
from tradebus.application import current
from tradebus.mastertrade.health import dlq_alerts, service_health
from tradebus.mastertrade.messages import (
    ConfigChange,
    OrderUpdate,
    SystemAlert,
    SystemHealth,
    Ticker,
    TickerBatch,
)
from tradebus.mastertrade.stage import stage
from tradebus.mastertrade.wire import publish
from tradebus.registry import stage_tasks, task

logger = get_task_logger(__name__)
#: Orders kept in the blotter.
BLOTTER_LENGTH = 1_000
#: A DLQ alert for one queue is raised again only after this many seconds.
ALERT_COOLDOWN_SECONDS = 300


def _last_price(message: Ticker | TickerBatch) -> tuple[str, float, str]:
    """``(symbol, market time, price)`` of a ticker's newest price."""
    if isinstance(message, TickerBatch):
        return message.symbol, message.ticks[-1].timestamp.timestamp(), repr(message.last_price)
    return message.symbol, message.timestamp.timestamp(), repr(message.price)


def on_tickers(messages: list[Ticker | TickerBatch]) -> None:
    """A batch of tickers (tradebus/batching.py): the newest price of each symbol by market time, in one
    write; an older batch delivered again after newer tickers does not overwrite them."""
    pipe = store.client().pipeline(transaction=False)
    entries = [_last_price(message) for message in messages]
    state.put_newest(pipe, store.key("monitor", "prices"), store.key("monitor", "prices_at"), entries)
    pipe.execute()


@stage(
    "tradebus.monitoring.on_ticker",
    queue="ticker_updates",
    accepts=(Ticker, TickerBatch),
    batch_handler=on_tickers,
)
def on_ticker(message: Ticker | TickerBatch) -> None:
    """The latest price per symbol by market time, for the price board."""
    on_tickers([message])


@stage("tradebus.monitoring.on_order_update", queue="monitoring_order_updates", accepts=OrderUpdate)
def on_order_update(message: OrderUpdate) -> None:
    """An order update for the order blotter."""
    pipe = store.client().pipeline(transaction=False)
    pipe.lpush(store.key("monitor", "orders"), message.model_dump_json())
    pipe.ltrim(store.key("monitor", "orders"), 0, BLOTTER_LENGTH - 1)
    pipe.execute()


@stage(
    "tradebus.monitoring.on_system_notification",
    queue="monitoring_system_notifications",
    accepts=(SystemHealth, SystemAlert, ConfigChange),
)
def on_system_notification(message: SystemHealth | SystemAlert | ConfigChange) -> None:
    """Service health for the status page; alerts and changes for its log."""
    if isinstance(message, SystemHealth):
        store.client().hset(store.key("monitor", "health"), message.service, message.model_dump_json())
    else:
        pipe = store.client().pipeline(transaction=False)
        pipe.lpush(store.key("monitor", "events"), message.model_dump_json())
        pipe.ltrim(store.key("monitor", "events"), 0, BLOTTER_LENGTH - 1)
        pipe.execute()


def services(app: Any) -> dict[str, list[str]]:
    """The stage queues of each service (``tradebus.<service>.<action>``)."""
    grouped: dict[str, list[str]] = {}
    for queue, stage_task in sorted(stage_tasks(app).items()):
        grouped.setdefault(stage_task.name.split(".")[1], []).append(queue)
    return grouped


@task("tradebus.monitoring.health_report", ignore_result=True)
def health_report() -> dict[str, object]:
    """Publish each service's health, and a warning for every DLQ deeper than the seed's 10."""
    app = current()
    grouped = services(app)
    dead_letter_queues = [q.name for q in app.topology.dead_letter_queues]
    names = [q for queues in grouped.values() for q in queues] + dead_letter_queues
    with app.connection_for_write() as connection:
        stats = health.queue_stats(connection, names)
    statuses = {}
    for service, queues in grouped.items():
        report = service_health(service, {q: stats[q] for q in queues})
        publish(report, app=app)
        statuses[service] = report.status
    raised = []
    for alert in dlq_alerts(stats, dead_letter_queues):
        queue = str(alert.details["queue"])
        if store.client().set(
            store.key("monitor", "dlq_alerted", queue), "1", nx=True, ex=ALERT_COOLDOWN_SECONDS
        ):
            publish(alert, app=app)
            raised.append(queue)
    logger.info("health: %s; DLQ alerts: %s", json.dumps(statuses), raised or "none")
    return {"services": statuses, "dlq_alerts": raised}
