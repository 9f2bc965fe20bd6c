"""The benchmark's baselines: a raw Kombu consumer and a bare Celery app, doing what a stage records.

Both note, in Redis, how long after its publication each message reached them (as a stage's recorder
does), so ``tradebus bench`` compares like with like. ``python -m tradebus.ops.benchapp QUEUE KEY`` runs the
raw consumer; ``celery -A tradebus.ops.benchapp worker -Q bench.bare`` runs the bare Celery task.
"""

from __future__ import annotations

import os
import sys
import time

import redis
from celery import Celery
from kombu import Connection, Consumer, Queue

from tradebus.replication import master_client
from tradebus.settings import Settings

#: The queues of the two baselines (declared durable, no arguments, on the default exchange).
RAW_QUEUE = "bench.raw"
BARE_QUEUE = "bench.bare"
#: Redis list the bare task writes its latencies to (under the bench's prefix).
BARE_KEY_SUFFIX = "bench:bare"

app = Celery("tradebus-bench", broker=os.environ.get("TRADEBUS_BROKER_URL"), set_as_current=False)
app.conf.update(
    accept_content=["json"],
    task_serializer="json",
    task_acks_late=True,
    task_ignore_result=True,
    task_queues=[Queue(BARE_QUEUE, durable=True)],
    worker_hijack_root_logger=False,
)


def _redis_client() -> redis.Redis:
    """The bench's Redis, as the stages find it: through the sentinels when ``TRADEBUS_REDIS_SENTINELS``
    names them (a failover earlier may have made ``TRADEBUS_REDIS_URL``'s host a replica)."""
    settings = Settings.from_env()
    if settings.redis.sentinels:
        return master_client(
            settings.redis_url, settings.redis, decode=False, connect_timeout=2.0, socket_timeout=5.0
        )
    return redis.Redis.from_url(settings.redis_url)


_redis = _redis_client()


def record(key: str, published_at: float) -> None:
    """Note a message's latency in milliseconds, as tradebus's recorder does."""
    pipe = _redis.pipeline(transaction=False)
    pipe.lpush(key, f"{(time.time() - published_at) * 1000:.3f}")
    pipe.hincrby(f"{key}:count", "n", 1)
    pipe.execute()


@app.task(name="bench.hop")  # type: ignore[untyped-decorator]
def hop(published_at: float, body: str) -> None:
    """A bare Celery task: record when it started."""
    record(f"{os.environ.get('TRADEBUS_REDIS_PREFIX', 'tradebus')}:{BARE_KEY_SUFFIX}", published_at)


def consume_raw(url: str, queue: str, key: str) -> None:
    """A plain Kombu consumer: record each message's latency, then acknowledge it."""
    with Connection(url) as connection:

        def on_message(body: object, message: object) -> None:
            record(key, float(message.headers["x-tradebus-published-at"]))  # type: ignore[attr-defined]
            message.ack()  # type: ignore[attr-defined]

        with Consumer(connection, [Queue(queue, durable=True)], callbacks=[on_message], prefetch_count=1):
            while True:
                connection.drain_events()


if __name__ == "__main__":
    consume_raw(os.environ["TRADEBUS_BROKER_URL"], sys.argv[1], sys.argv[2])
