"""Fault-test machinery: a pool under attack in a vhost of its own, and the figures of what happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kombu import Connection, Producer

from tests.support.bus import MASTERTRADE, Vhost
from tradebus import recorder, store
from tradebus.mastertrade.messages import OrderRequest
from workers.launch import PoolProcess, start_pool

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
#: Every fault-test order buys this much: the position tells how many fills were booked.
QUANTITY = 0.01


def orders(count: int, tag: str) -> list[OrderRequest]:
    """``count`` small market orders with request ids of their own."""
    return [
        OrderRequest(
            request_id=f"req-{tag}-{i:04d}",
            strategy_id="fault-test",
            symbol=SYMBOLS[i % len(SYMBOLS)],
            side="BUY",
            quantity=QUANTITY,
            timestamp=datetime.now(UTC),
        )
        for i in range(count)
    ]


def publish_confirmed(vhost: Vhost, batch: list[OrderRequest], pause: float = 0.0) -> int:
    """Publish like MasterTrade's risk manager: persistent, confirmed. Returns how many were confirmed."""
    confirmed = 0
    with Connection(vhost.url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel())
        for order in batch:
            producer.publish(
                order.model_dump_json(),
                exchange=order.exchange,
                routing_key=order.routing_key,
                content_type="application/json",
                delivery_mode=2,
                message_id=str(uuid.uuid4()),
            )
            confirmed += 1  # publish returns only once the broker confirmed it (a nack raises)
            if pause:
                time.sleep(pause)
    return confirmed


class Pool:
    """The ``order_requests`` pool as its own process group, restartable, in the test's vhost."""

    def __init__(self, vhost: Vhost, log_dir: Path, env: dict[str, str]) -> None:
        self.vhost, self.log_dir, self.env = vhost, log_dir, env
        self.process: PoolProcess | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.process = start_pool("order_requests", self.log_dir / f"start-{self.starts}", env=self.env)
        self.wait_consuming()

    def wait_consuming(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.vhost.connection() as conn:
            channel = conn.channel()
            while channel.queue_declare("order_requests", passive=True)[2] == 0:
                assert self.process is not None and self.process.process.poll() is None, self.log()
                assert time.monotonic() < deadline, "the pool never consumed"
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as an OOM killer or a lost host would."""
        assert self.process is not None
        os.killpg(self.process.process.pid, signal.SIGKILL)
        self.process.process.wait()

    def children(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.rglob("*.log")))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class Figures:
    """What a fault test measured (docs/reliability.md)."""

    scenario: str
    published: int = 0
    confirmed: int = 0
    filled: int = 0
    bookings: int = 0
    duplicate_deliveries: int = 0
    redelivered: int = 0
    double_fills: int = 0
    fill_updates: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / "reliability.json"
        existing = json.loads(path.read_text()) if path.exists() else {}
        existing[self.scenario] = asdict(self)
        path.write_text(json.dumps(existing, indent=2, sort_keys=True))
        print(f"\n{self.scenario}: {json.dumps(asdict(self), sort_keys=True)}")


def fill_records(tag: str) -> dict[str, dict[str, Any]]:
    """The executor's fill records of this test's orders, by request id."""
    client = store.client()
    found = {}
    for key in client.scan_iter(match=store.key("fills", f"req-{tag}-*"), count=1000):
        request_id = key.decode().rsplit(":", 1)[-1]
        if request_id.startswith(f"req-{tag}-"):  # not the :publishing claim or :published note beside it
            found[request_id] = json.loads(client.get(key) or "{}")
    return found


def updates_published(tag: str) -> int:
    """How many of this test's orders had their order updates published (the executor notes it after)."""
    pattern = store.key("fills", f"req-{tag}-*:published")
    return sum(1 for _ in store.client().scan_iter(match=pattern, count=1000))


def measure(scenario: str, vhost: Vhost, tag: str, published: int, confirmed: int) -> Figures:
    """Count fills, bookings, duplicates and dead letters after a fault test."""
    from tradebus.mastertrade import account
    from tradebus.ops import dlq

    records = fill_records(tag)
    metrics = recorder.metrics()
    with vhost.connection() as conn:
        channel = conn.channel()
        updates: dict[str, int] = {}
        update_ids: dict[str, set[str]] = {}
        while (message := channel.basic_get("order_updates", no_ack=True)) is not None:
            update = json.loads(message.body)
            if update["request_id"].startswith(f"req-{tag}-") and update["status"] == "filled":
                updates[update["request_id"]] = updates.get(update["request_id"], 0) + 1
                message_id = str((message.properties or {}).get("message_id"))
                update_ids.setdefault(update["request_id"], set()).add(message_id)
        dead = {}
        for name in ("dlq.order_requests", "unrouted.orders"):
            letters = dlq.peek(MASTERTRADE, conn, name, 1000)
            for letter in letters:
                dead[letter.reason] = dead.get(letter.reason, 0) + 1
    bookings = int(store.client().hget(store.key("account", "account"), "fills") or 0)
    held = sum(h.quantity for h in account.portfolio().holdings.values())
    redelivered = sum(1 for e in recorder.received("order_requests") if e.get("redelivered"))
    return Figures(
        scenario=scenario,
        published=published,
        confirmed=confirmed,
        filled=sum(1 for r in records.values() if r.get("status") == "filled"),
        bookings=bookings,
        duplicate_deliveries=metrics.get("duplicate_deliveries", 0),
        redelivered=redelivered,
        # What the account holds counts the fills booked, however the records and counters look.
        double_fills=round(held / QUANTITY) - len(records),
        fill_updates=sum(updates.values()),
        dead_lettered=dead,
        notes={
            "position": round(held, 8),
            "orders_with_an_update": len(updates),
            # A republished update repeats its first copy's id (tradebus/outcomes.py): a plain consumer
            # tells the copies apart by it. Every order's filled updates share one id.
            "filled_update_ids_per_order": max((len(ids) for ids in update_ids.values()), default=0),
        },
    )
