"""Consumer-side batching (tradebus/batching.py), on a real ``ticker_updates`` pool in a vhost of its own.

The ticks are in the queue before the pool starts, so its worker finds a backlog and hands its process
batches of them; they are published as a non-Celery service would (plain JSON, pika's defaults: no message
id), one ``TickerBatch`` among them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Producer

from tests.support.bus import Vhost
from tests.support.dead_letter_fails_once import BAD_MARKER, BAD_SYMBOL
from tests.support.die_mid_batch import DIE_MARKER, DIE_SYMBOL
from tests.support.wait import dead_letters, new_symbol, wait_until
from tradebus import recorder, store
from tradebus.errors import Reason
from tradebus.headers import REASON
from tradebus.mastertrade.messages import Ticker
from tradebus.mastertrade.samples import ticker_batch
from workers.cpu import group_niceness, groups_by_session
from workers.launch import PoolProcess
from workers.profiled import MARKET_DATA_NICENESS
from workers.run import worker_argv

pytestmark = [pytest.mark.broker, pytest.mark.slow]
QUEUE = "ticker_updates"


def fill(vhost: Vhost, symbol: str, bodies: list[str]) -> None:
    """Publish ``bodies`` on ``ticker.<symbol>`` like pika would: plain JSON, no message id, confirmed."""
    with Connection(vhost.url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel())
        for body in bodies:
            producer.publish(
                body,
                exchange="mastertrade.market",
                routing_key=f"ticker.{symbol}",
                content_type="application/json",
            )


def start(vhost: Vhost, prefix: str, log: Path, app: str = "tradebus", **env: str) -> PoolProcess:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, *worker_argv(QUEUE)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TRADEBUS_BROKER_URL": vhost.url, "TRADEBUS_REDIS_PREFIX": prefix, **env},
            start_new_session=True,
        )
    return PoolProcess(QUEUE, process, log)


def settled(vhost: Vhost) -> bool:
    """Nothing left in the queue, nothing unacknowledged."""
    queue = vhost.management.queue(QUEUE)
    return bool(queue.get("messages") == 0 and queue.get("messages_unacknowledged") == 0)


@pytest.fixture
def worker(declared_vhost: Vhost, fresh_state: str, tmp_path: Path) -> Iterator[Any]:
    started: list[PoolProcess] = []

    def run(app: str = "tradebus", **env: str) -> PoolProcess:
        started.append(start(declared_vhost, fresh_state, tmp_path / "worker.log", app, **env))
        return started[-1]

    yield run
    for process in started:
        process.stop()


def test_a_backlog_of_single_ticks_runs_in_batches_each_tick_validated_and_dead_lettered_alone(
    declared_vhost: Vhost, worker: Any
) -> None:
    symbol = new_symbol()
    ticks = [Ticker(symbol=symbol, price=100.0 + i).model_dump_json() for i in range(40)]
    invalid = [f'{{"type": "ticker", "symbol": "{symbol}", "price": -1}}', "not json at all"]
    bodies = (
        ticks[:20]
        + invalid[:1]
        + ticks[20:]
        + invalid[1:]
        + [ticker_batch(symbol, 5, 200.0).model_dump_json()]
    )
    fill(declared_vhost, symbol, bodies)
    running = worker()

    # Every valid message ran (one count per message, not per batch), the two invalid ones are in the DLQ.
    assert wait_until(lambda: recorder.counts().get(QUEUE, 0) >= 41, timeout=60), running.log.read_text()[
        -3000:
    ]
    letters = dead_letters(declared_vhost, QUEUE, 2)
    assert sorted(h[REASON] for _, h in letters) == [Reason.INVALID_JSON, Reason.SCHEMA_VIOLATION], letters
    assert wait_until(lambda: settled(declared_vhost)), "deliveries left unacknowledged"
    metrics = recorder.metrics()
    # Fewer batches than messages: the stage ran on batches, and counted each message in them.
    assert metrics[f"batched:{QUEUE}"] == len(bodies)
    assert metrics[f"batches:{QUEUE}"] < len(bodies) / 2, metrics
    assert recorder.counts()[QUEUE] == 41
    assert store.client().hget(store.key("monitor", "prices"), symbol) == b"204.0"  # the TickerBatch's last
    # A market-data pool yields the CPU to the order path: its processes run at a lower priority.
    assert niceness(running.process.pid) == niceness(os.getpid()) + MARKET_DATA_NICENESS
    if groups_by_session():  # and, leading its session, so does its session's group (workers/cpu.py),
        assert group_niceness(running.process.pid) == MARKET_DATA_NICENESS  # from the 0 a new group has


def niceness(pid: int) -> int:
    """A process's nice value (field 19 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_a_pool_process_killed_mid_batch_gets_the_whole_batch_redelivered_each_delivery_alone(
    declared_vhost: Vhost, worker: Any, tmp_path: Path
) -> None:
    symbol, poison = new_symbol(), new_symbol()
    ticks = [Ticker(symbol=symbol, price=100.0 + i).model_dump_json() for i in range(30)]
    fill(declared_vhost, symbol, ticks[:15])
    fill(declared_vhost, poison, [Ticker(symbol=poison, price=1.0).model_dump_json()])
    fill(declared_vhost, symbol, ticks[15:])
    marker = tmp_path / "died"
    running = worker("tests.support.die_mid_batch", **{DIE_SYMBOL: poison, DIE_MARKER: str(marker)})

    assert wait_until(lambda: marker.exists(), timeout=60), running.log.read_text()[-3000:]
    # The poison's tick is handled on its redelivery (the marker keeps the fault from striking twice).
    prices = store.key("monitor", "prices")
    assert wait_until(lambda: store.client().hget(prices, poison) == b"1.0", 60), running.log.read_text()[
        -3000:
    ]

    def redelivered() -> list[dict[str, Any]]:
        return [e for e in recorder.received(QUEUE) if e["redelivered"]]

    def batched() -> int:
        return recorder.metrics().get(f"batched:{QUEUE}", 0)

    # The poison's batch-mates ran again: the whole batch came back, not the poison alone.
    assert wait_until(
        lambda: len(redelivered()) > 1 and f"ticker.{poison}" in {e["routing_key"] for e in redelivered()}
    ), recorder.received(QUEUE)
    # Every tick ran once in a batch that completed (the killed batch is not counted: it came back) or, come
    # back, alone: a redelivery is never batched, so a poison cannot take batch-mates to the DLQ with it.
    assert wait_until(lambda: batched() + len(redelivered()) == 31), (
        recorder.metrics(),
        recorder.received(QUEUE),
    )
    # Nothing lost (a record the killed process had not written yet may be), none dead-lettered.
    with declared_vhost.connection() as conn:
        assert conn.default_channel.queue_declare(f"dlq.{QUEUE}", passive=True)[1] == 0


def test_a_delivery_that_cannot_be_dead_lettered_comes_back_alone_its_batch_mates_acknowledged(
    declared_vhost: Vhost, worker: Any, tmp_path: Path
) -> None:
    symbol, bad = new_symbol(), new_symbol()
    fill(declared_vhost, symbol, [Ticker(symbol=symbol, price=1.0 + i).model_dump_json() for i in range(10)])
    fill(declared_vhost, bad, [Ticker(symbol=bad, price=1.0).model_dump_json()])
    marker = tmp_path / "refused"
    running = worker("tests.support.dead_letter_fails_once", **{BAD_SYMBOL: bad, BAD_MARKER: str(marker)})

    # The refused dead letter failed its batch; the delivery came back and was dead-lettered with its reason.
    letters = dead_letters(declared_vhost, QUEUE, 1, timeout=60)
    assert marker.exists(), running.log.read_text()[-3000:]
    assert [h.get(REASON) for _, h in letters] == [Reason.SCHEMA_VIOLATION], letters
    assert bad in letters[0][0]
    # Its batch-mates were acknowledged once, not rejected with it to the DLQ without a reason.
    assert wait_until(lambda: recorder.counts().get(QUEUE, 0) >= 11), running.log.read_text()[-3000:]
    assert store.client().hget(store.key("monitor", "prices"), symbol) == b"10.0"
    redelivered = [e["routing_key"] for e in recorder.received(QUEUE) if e["redelivered"]]
    assert redelivered == [f"ticker.{bad}"], recorder.received(QUEUE)
    with declared_vhost.connection() as conn:
        assert conn.default_channel.queue_declare(f"dlq.{QUEUE}", passive=True)[1] == 0
