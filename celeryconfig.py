"""Celery configuration of tradebus, read from the environment (see tradebus/settings.py).

JSON only on the wire, never pickle. Queues come from ``routing``; stage tasks come from ``tasks``.
"""

from copy import copy

from routing import STAGE_QUEUES
from tradebus.settings import get_settings

_settings = get_settings()

broker_url = _settings.broker_url
result_backend = _settings.redis_url
# Every publish waits for the broker's confirm; a nack raises instead of passing for success.
broker_transport_options = {"confirm_publish": True}
broker_connection_retry_on_startup = True

accept_content = ["json"]
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
result_accept_content = ["json"]

# Workers consume the stage queues and nothing else; DLQs and unrouted queues are for people.
# Celery fills in a default exchange on the queues it is given; hand it copies so routing's data stays as
# declared.
task_queues = [copy(queue) for queue in STAGE_QUEUES]
task_create_missing_queues = False
task_ignore_result = True
# The seed's consumers never auto-ack: every stage acknowledges after it ran. A stage that fails has already
# dead-lettered its message with the reason; if even that failed, the message is rejected, not acked, so a
# queue with a dead-letter exchange still keeps it.
task_acks_late = True
task_acks_on_failure = False
task_acks_on_timeout = False
result_expires = 3600

include = [
    "tasks.market_data",
    "tasks.strategy",
    "tasks.risk",
    "tasks.execution",
    "tasks.alerts",
    "tasks.monitoring",
    "tasks.backtest",
]

# The queue a message arrives on decides which stage runs it (tradebus/consumer.py).
worker_consumer = "tradebus.consumer:StageConsumer"
worker_send_task_events = True
worker_cancel_long_running_tasks_on_connection_loss = True
