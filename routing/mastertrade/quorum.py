"""The MasterTrade queues that become quorum queues under ``TRADEBUS_QUEUE_TYPE=quorum``, and the retry
delay queues that replace Celery's in-worker countdown there (docs/topology.md, "Quorum queues").

Replicated: the queues where a lost message costs money or hides a risk event (signals, risk checks,
order requests, every copy of the order updates, risk events), their dead-letter queues and the archive of
dead signals. Market data, the system notices, backtest signals, Celery's periodic task and the unrouted
queues stay classic: each says why in docs/topology.md.
"""

from __future__ import annotations

from kombu import Queue

from routing.build import durable_queue, exchange
from routing.mastertrade import exchanges as ex
from routing.mastertrade.queues import ARCHIVE_QUEUE, dead_letter_queue_name
from routing.model import delay_word
from routing.quorum import AT_LEAST_ONCE, REJECT_PUBLISH, as_quorum, quorum_arguments

#: Worker queues replicated under the quorum topology.
REPLICATED: frozenset[str] = frozenset(
    {
        "trading_signals",
        "risk_checks",
        "order_requests",
        "order_updates",
        "strategy_order_updates",
        "monitoring_order_updates",
        "alert_risk_events",
    }
)
#: ...and the dead-letter queues that keep what they could not process.
REPLICATED_DEAD_LETTERS: frozenset[str] = frozenset(
    {*(dead_letter_queue_name(q) for q in REPLICATED), ARCHIVE_QUEUE.name}
)

#: A retry waits here for its delay, then is dead-lettered (with its routing key ``<queue>.<delay>``) to
#: ``mastertrade.retry``, where its queue is bound by ``<queue>.*``. A delay queue is bound by
#: ``#.<delay>``: a queue name may have dots of its own (a market-data shard, ``strategy_market_data.0``).
RETRY_DELAY = exchange("mastertrade.retry.delay")
#: The seed's retry delays (tradebus/retries.py SEED_POLICY: 5, 10 and 20 seconds); one queue each.
RETRY_DELAYS_SECONDS: tuple[float, ...] = (5.0, 10.0, 20.0)
DELAY_QUEUE_PREFIX = f"{RETRY_DELAY.name}."


def delay_queue(seconds: float) -> Queue:
    """The quorum queue that holds retries for ``seconds``: its TTL expires them into ``mastertrade.retry``
    at least once (a retry in flight is a message the bus owes someone)."""
    word = delay_word(seconds)
    return durable_queue(
        f"{DELAY_QUEUE_PREFIX}{word}",
        [(RETRY_DELAY, f"#.{word}")],
        quorum_arguments(
            {
                "x-message-ttl": round(seconds * 1000),
                "x-dead-letter-exchange": ex.RETRY.name,
                "x-overflow": REJECT_PUBLISH,
                "x-dead-letter-strategy": AT_LEAST_ONCE,
            }
        ),
    )


DELAY_QUEUES: tuple[Queue, ...] = tuple(delay_queue(s) for s in RETRY_DELAYS_SECONDS)


def replicated(queue: Queue, worker_queues: frozenset[str]) -> Queue:
    """``queue`` as the quorum topology declares it: a quorum queue when it is one of the replicated ones,
    and, when it is one of ``worker_queues`` (the topology's, after sharding), also bound on
    ``mastertrade.retry`` by ``<queue>.*``, where its delayed retries come back (every worker queue: Celery
    turns global QoS off for a whole app that has one quorum queue, so no worker of it can hold a countdown
    without holding a prefetch slot)."""
    extra = [(ex.RETRY, f"{queue.name}.*")] if queue.name in worker_queues else []
    if queue.name in REPLICATED or queue.name in REPLICATED_DEAD_LETTERS:
        return as_quorum(queue, extra)
    if extra:
        return durable_queue(
            queue.name,
            [*((b.exchange, b.routing_key or "") for b in queue.bindings), *extra],
            queue.queue_arguments,
        )
    return queue
