"""When a batched pool's worker hands its deliveries to a pool process (tradebus/batching.py), without a
broker: deliveries are Kombu messages on a recording channel, the event loop's timers are fired by hand."""

from __future__ import annotations

import time
from typing import Any

from kombu.message import Message

from routing import build
from tradebus.batching import LINGER_SECONDS, MIN_PART, STREAM_GAP_SECONDS, Batcher, BatchMessage
from tradebus.consumer import batch_limit
from workers.profiles import yields_cpu


class Channel:
    """Records what the worker would send RabbitMQ for each delivery."""

    no_ack_consumers = None

    def __init__(self) -> None:
        self.acks: list[int] = []
        self.rejects: list[tuple[int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append(tag)

    def basic_reject(self, tag: int, requeue: bool = False) -> None:
        self.rejects.append((tag, requeue))


class Hub:
    """The event loop's timers: ``call_later`` entries, fired by the test."""

    def __init__(self) -> None:
        self.timers: list[Timer] = []

    def call_later(self, delay: float, fn: Any) -> Timer:
        self.timers.append(Timer(delay, fn))
        return self.timers[-1]

    def fire(self) -> None:
        due, self.timers = [t for t in self.timers if not t.cancelled], []
        for timer in due:
            timer.fn()


class Timer:
    def __init__(self, delay: float, fn: Any) -> None:
        self.delay, self.fn, self.cancelled = delay, fn, False

    def cancel(self) -> None:
        self.cancelled = True


def delivery(channel: Channel, tag: int) -> Message:
    return Message(body=b"{}", delivery_tag=tag, channel=channel, content_type="application/json")


def batcher(limit: int = 100, processes: int = 1) -> tuple[Batcher, Hub, list[BatchMessage]]:
    handed: list[BatchMessage] = []
    hub = Hub()
    return Batcher("stage", limit, 1.0, processes, hub, handed.append), hub, handed


def test_a_lone_delivery_goes_at_once_and_a_stream_is_gathered_while_the_process_is_busy() -> None:
    channel = Channel()
    gather, hub, handed = batcher()
    time.sleep(LINGER_SECONDS)  # a quiet spell
    gather.add(delivery(channel, 1), {"id": "1"})
    assert [len(b.deliveries) for b in handed] == [1]  # a free process: no wait
    for tag in range(2, 12):
        gather.add(delivery(channel, tag), {"id": str(tag)})
    assert len(handed) == 1  # the process is busy: they wait
    handed[0].ack()
    assert channel.acks == [1]
    time.sleep(LINGER_SECONDS)
    hub.fire()  # the linger timer, or the flush the acknowledgement started
    assert [len(b.deliveries) for b in handed] == [1, 10]
    handed[1].ack()
    assert channel.acks == list(range(1, 12))


def test_deliveries_further_apart_than_a_stream_go_at_once_however_recent_the_last_batch() -> None:
    channel = Channel()
    gather, hub, handed = batcher()
    time.sleep(LINGER_SECONDS)
    gather.add(delivery(channel, 1), {})
    handed[0].ack()
    for tag in (2, 3):  # a tick every 2.5 stream gaps: each goes at once, no linger timer
        time.sleep(2.5 * STREAM_GAP_SECONDS)
        gather.add(delivery(channel, tag), {})
        handed[-1].ack()
    assert [len(b.deliveries) for b in handed] == [1, 1, 1] and all(t.cancelled for t in hub.timers)
    # Then a stream (back to back): gathered while the last batch is recent.
    for tag in range(4, 30):
        gather.add(delivery(channel, tag), {})
    assert len(handed) < 6, [len(b.deliveries) for b in handed]


def test_a_full_batch_goes_even_while_the_process_is_busy_and_the_oldest_waits_at_most_batch_ms() -> None:
    channel = Channel()
    gather, hub, handed = batcher(limit=5)
    time.sleep(LINGER_SECONDS)
    gather.add(delivery(channel, 0), {})
    for tag in range(1, 6):
        gather.add(delivery(channel, tag), {})
    assert [len(b.deliveries) for b in handed] == [1, 5]
    gather.add(delivery(channel, 6), {})
    assert [t.delay for t in hub.timers if not t.cancelled] == [1.0]  # batch_ms, the seed's 1 s
    hub.fire()
    assert [len(b.deliveries) for b in handed] == [1, 5, 1]


def test_a_batch_rejected_for_requeue_rejects_every_delivery_back_to_its_queue() -> None:
    channel = Channel()
    gather, hub, handed = batcher()
    gather.add(delivery(channel, 1), {})
    assert handed == []  # a worker's first deliveries are gathered (a backlog at start)
    time.sleep(LINGER_SECONDS)
    hub.fire()
    handed[0].reject(requeue=True)
    assert channel.rejects == [(1, True)] and gather.in_flight == 0


def test_the_seed_batches_the_market_data_pools_within_their_prefetch_windows() -> None:
    pools = build("mastertrade").pools
    batched = {name for name, pool in pools.items() if pool.batched}
    assert batched == {
        "strategy_market_data",
        "market_data",
        "ticker_updates",
        "orderbook_updates",
        "trade_updates",
        "executor_market_data",
    }
    assert all((pools[n].batch_size, pools[n].batch_ms) == (100, 1_000) for n in batched)
    assert not pools["order_requests"].batched and not pools["trading_signals"].batched


def test_what_waits_is_shared_among_the_free_processes_of_a_pool() -> None:
    channel = Channel()
    gather, hub, handed = batcher(processes=3)
    for tag in range(2 * MIN_PART + 1):
        gather.add(delivery(channel, tag), {})
    time.sleep(LINGER_SECONDS)
    hub.fire()
    assert [len(b.deliveries) for b in handed] == [MIN_PART + 1, MIN_PART] and gather.in_flight == 2


def test_the_parts_are_even_and_none_is_under_min_part() -> None:
    channel = Channel()
    gather, hub, handed = batcher(processes=3)
    for tag in range(3 * MIN_PART + 1):
        gather.add(delivery(channel, tag), {})
    time.sleep(LINGER_SECONDS)
    hub.fire()
    assert [len(b.deliveries) for b in handed] == [MIN_PART + 1, MIN_PART, MIN_PART]
    assert [d.delivery_tag for b in handed for d in b.deliveries] == list(range(3 * MIN_PART + 1))


def test_a_few_deliveries_are_not_split_into_batches_of_one() -> None:
    channel = Channel()
    gather, hub, handed = batcher(processes=3)
    for tag in range(MIN_PART - 1):
        gather.add(delivery(channel, tag), {})
    time.sleep(LINGER_SECONDS)
    hub.fire()
    assert [len(b.deliveries) for b in handed] == [MIN_PART - 1] and gather.in_flight == 1


def test_a_batch_settled_with_failed_deliveries_acks_the_others_and_requeues_only_those() -> None:
    channel = Channel()
    gather, hub, handed = batcher()
    for tag in range(1, 5):
        gather.add(delivery(channel, tag), {})
    time.sleep(LINGER_SECONDS)
    hub.fire()
    handed[0].settle([1, 3])
    assert channel.acks == [1, 3] and channel.rejects == [(2, True), (4, True)] and gather.in_flight == 0


def test_a_batch_is_at_most_half_the_prefetch_window_so_the_next_gathers_while_one_runs() -> None:
    assert [batch_limit(100, w) for w in (100, 20, 10, 3, 2, 1)] == [50, 10, 5, 1, 1, 1]
    assert batch_limit(8, 100) == 8


def test_shard_pools_batch_like_the_queue_they_replace_with_one_process_each() -> None:
    topology = build("mastertrade", market_data_shards=4)
    shards = [pool for name, pool in topology.pools.items() if name in topology.shard_of_queue]
    assert len(shards) == 4
    seed = build("mastertrade").pools["strategy_market_data"]
    assert all(
        (p.concurrency, p.batch_size, p.batch_ms) == (1, seed.batch_size, seed.batch_ms) for p in shards
    )
    assert all(batch_limit(p.batch_size, p.prefetch_count) > 1 for p in shards)


def test_only_workers_of_pools_batching_every_key_yield_the_cpu() -> None:
    mastertrade, letrade = build("mastertrade"), build("letrade")
    assert yields_cpu(mastertrade, ["ticker_updates"], 100)
    assert yields_cpu(mastertrade, ["ticker_updates", "market_data"], 20)
    assert not yields_cpu(mastertrade, ["ticker_updates"], 2)  # a window that never batches
    assert not yields_cpu(mastertrade, ["ticker_updates", "order_requests"], 100)
    # letrade.market_data batches candles but answers market_data_request one by one: not niced.
    assert letrade.pools["letrade.market_data"].batched
    assert not yields_cpu(letrade, ["letrade.market_data"], 10)
