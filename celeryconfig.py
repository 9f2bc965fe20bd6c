"""Celery configuration of tradebus, read from the environment (see tradebus/settings.py).

JSON only on the wire, never pickle. Queues come from ``routing``; stage tasks come from ``tasks``.
"""

from copy import copy

from routing import LETRADE, PROFILE, WORKER_QUEUES
from tradebus import tls
from tradebus.settings import get_settings

_settings = get_settings()

broker_url = _settings.broker_url
# amqps:// with the CA and client certificate from TRADEBUS_BROKER_*_FILE (tradebus/tls.py, docs/security.md).
if (_broker_ssl := tls.broker_use_ssl(_settings)) is not None:
    broker_use_ssl = _broker_ssl
result_backend = _settings.redis_url
# Every publish waits for the broker's confirm; a nack raises instead of passing for success.
broker_transport_options = {"confirm_publish": True}
broker_connection_retry_on_startup = True

accept_content = ["json"]
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
result_accept_content = ["json"]

# Workers consume the stage queues (and beat's task queue) and nothing else; DLQs and unrouted queues are
# for people.
# Celery fills in a default exchange on the queues it is given; hand it copies so routing's data stays as
# declared.
task_queues = [copy(queue) for queue in WORKER_QUEUES]
if not _settings.declare_topology:
    # A least-privilege worker (TRADEBUS_DECLARE_TOPOLOGY=0) may not declare: it consumes what the topology
    # service declared, and its retries do not redeclare their queue (docs/security.md).
    for _queue in task_queues:
        _queue.no_declare = True
task_create_missing_queues = False
task_ignore_result = True
# The seed's consumers never auto-ack: every stage acknowledges after it ran. A stage that fails has already
# dead-lettered its message with the reason; if even that failed, the message is rejected, not acked, so a
# queue with a dead-letter exchange still keeps it.
task_acks_late = True
task_acks_on_failure = False
task_acks_on_timeout = False
result_expires = 3600

if PROFILE == LETRADE:
    # Letrade_v1 (TRADEBUS_TOPOLOGY=letrade): its services, and no periodic task (docs/letrade.md).
    include = [
        "tasks.letrade.capital_manager",
        "tasks.letrade.exchange_connector",
        "tasks.letrade.market_data",
        "tasks.letrade.strategy",
    ]
    beat_schedule: dict[str, dict[str, object]] = {}
    task_routes: dict[str, dict[str, str]] = {}
else:
    include = [
        "tasks.market_data",
        "tasks.strategy",
        "tasks.risk",
        "tasks.execution",
        "tasks.alerts",
        "tasks.monitoring",
        "tasks.backtest",
    ]
    # Celery beat: every 30 s, each service's health and the dead-letter queues' depths
    # (tasks/monitoring.py).
    beat_schedule = {
        "health-report": {"task": "tradebus.monitoring.health_report", "schedule": 30.0},
    }
    task_routes = {
        "tradebus.monitoring.health_report": {
            "queue": "periodic_tasks",
            "exchange": "mastertrade.tasks",
            "routing_key": "periodic_tasks",
        }
    }

# The queue a message arrives on decides which stage runs it (tradebus/consumer.py).
worker_consumer = "tradebus.consumer:StageConsumer"
# Task events only while someone watches: Flower (and `celery events`) turns them on when it starts and
# keeps them on; always on, they cost every message of every pool a third of its throughput
# (docs/performance.md).
worker_send_task_events = False
worker_cancel_long_running_tasks_on_connection_loss = True
