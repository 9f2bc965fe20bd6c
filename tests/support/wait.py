"""Helpers of the live tests: wait for the bus, publish like a service that is not Celery, read what
stages recorded and what was dead-lettered."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from kombu import Connection, Producer

from tests.support.bus import MASTERTRADE, Vhost
from tradebus import recorder


def wait_until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; returns it (or the last falsy value).

    The timeout only matters when the test fails; it is long because CI may run on a busy machine.
    """
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


def entry(queue: str, message_id: str) -> dict[str, Any] | None:
    """What the stage of ``queue`` recorded for ``message_id``, if it has run."""
    return next((e for e in recorder.received(queue) if e["id"] == message_id), None)


def raw_publish(vhost: Vhost, body: str, exchange: str, key: str, **properties: Any) -> None:
    """Publish like a non-Celery MasterTrade service: plain JSON, no Celery headers."""
    with Connection(vhost.url, transport_options={"confirm_publish": True}) as conn:
        Producer(conn.channel()).publish(body, exchange=exchange, routing_key=key, **properties)


def dead_letters(
    vhost: Vhost, queue: str, count: int, timeout: float = 15.0
) -> list[tuple[str, dict[str, Any]]]:
    """Wait for ``count`` messages on ``dlq.<queue>`` and take them: (body, headers)."""
    got: list[tuple[str, dict[str, Any]]] = []
    with vhost.connection() as conn:
        channel = conn.channel()

        def take() -> bool:
            while (m := channel.basic_get(MASTERTRADE.dead_letter_prefix + queue, no_ack=True)) is not None:
                body = m.body.decode(errors="replace") if isinstance(m.body, bytes) else m.body
                got.append((body, dict(m.headers or {})))
            return len(got) >= count

        wait_until(take, timeout)
    return got


def new_symbol() -> str:
    """A symbol no other test trades."""
    return f"T{uuid.uuid4().hex[:8].upper()}USDT"


def on(queue: str, where: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """What the stage of ``queue`` recorded that matches ``where``."""
    return [e for e in recorder.received(queue) if where(e)]


def keyed(fragment: str) -> Callable[[dict[str, Any]], bool]:
    """Matches recorded deliveries whose routing key contains ``fragment``."""
    return lambda e: fragment in (e.get("routing_key") or "")
