"""Celery configuration every tradebus app shares, whatever its bus (tradebus/application.py adds the rest).

JSON only on the wire, never pickle. The broker, result backend, queues, stage modules and beat schedule
come from the app's topology and settings (``tradebus.application.celery_config``); nothing here reads the
environment.
"""

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
task_create_missing_queues = False
task_ignore_result = True
# The seed's consumers never auto-ack: every stage acknowledges after it ran. A stage that fails has already
# dead-lettered its message with the reason; if even that failed, the message is rejected, not acked, so a
# queue with a dead-letter exchange still keeps it.
task_acks_late = True
task_acks_on_failure = False
task_acks_on_timeout = False
result_expires = 3600

# The queue a message arrives on decides which stage runs it (tradebus/consumer.py).
worker_consumer = "tradebus.consumer:StageConsumer"
# Task events only while someone watches: Flower (and `celery events`) turns them on when it starts and
# keeps them on; always on, they cost every message of every pool a third of its throughput
# (docs/performance.md).
worker_send_task_events = False
worker_cancel_long_running_tasks_on_connection_loss = True
