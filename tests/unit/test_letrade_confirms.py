"""``ConfirmedPublisher`` (tradebus/letrade/confirms.py): what a publish does when its confirm is lost, when
the connection is down, when the bus is closed and when its caller cancels it. The connection and channel
here are stand-ins for aio-pika's robust ones, scripted attempt by attempt: the logic under test is
tradebus's retry loop, not the broker (tests/live/test_letrade_async_live.py runs it on RabbitMQ)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from tradebus.errors import PublishFailed
from tradebus.letrade import confirms
from tradebus.letrade.confirms import ConfirmedPublisher

PROPERTIES = {
    "headers": {},
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "delivery_mode": 2,
    "message_id": "m-1",
    "exchange": "letrade.events",
    "routing_key": "events.error",
}


class Underlay:
    """An aiormq channel whose ``basic_publish`` runs the next scripted attempt."""

    def __init__(self, attempts: list[Callable[[], Any]]) -> None:
        self.attempts, self.made = attempts, 0
        self.connection = cast(Any, type("Aiormq", (), {"is_closed": False}))()
        self.connection.closing = asyncio.get_running_loop().create_future()

    async def basic_publish(self, body: bytes, **_: Any) -> None:
        attempt = self.attempts[self.made]
        self.made += 1
        await attempt()


class Robust:
    """What ConfirmedPublisher reads of aio-pika's robust connection and channel."""

    def __init__(self, underlay: Underlay) -> None:
        self.underlay = underlay
        self.connected = asyncio.Event()
        self.connected.set()
        self.close_called = False
        self._closed = asyncio.get_running_loop().create_future()

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    def closed(self) -> Any:
        return asyncio.shield(self._closed)

    def close(self) -> None:
        self.close_called = True
        self.connected.clear()
        self._closed.set_result(True)

    async def get_underlay_channel(self) -> Underlay:
        await self.connected.wait()
        return self.underlay


def publisher(attempts: list[Callable[[], Any]]) -> tuple[ConfirmedPublisher, Robust]:
    robust = Robust(Underlay(attempts))
    made = ConfirmedPublisher(cast(AbstractRobustConnection, robust), cast(AbstractChannel, robust))
    return made, robust


async def confirmed() -> None:
    return None


async def forever() -> None:
    await asyncio.Event().wait()


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 10))


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confirms, "RETRY_INTERVAL", 0.01)
    monkeypatch.setattr(confirms, "RECONNECT_WAIT", 0.5)


def test_a_lost_confirm_is_published_again_once_the_connection_is_back() -> None:
    async def scenario() -> int:
        robust: Robust

        async def lost() -> None:
            robust.connected.clear()
            asyncio.get_running_loop().call_later(0.05, robust.connected.set)
            raise aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED")

        made, robust = publisher([lost, confirmed])
        await made.publish(b"{}", PROPERTIES)
        return robust.underlay.made

    assert run(scenario) == 2


def test_no_reconnection_within_the_deadline_is_publish_failed() -> None:
    async def scenario() -> None:
        robust: Robust

        async def lost() -> None:
            robust.connected.clear()
            raise ConnectionError("reset")

        made, robust = publisher([lost])
        with pytest.raises(PublishFailed, match=r"not confirmed within 0\.5 s: broker unreachable"):
            await made.publish(b"{}", PROPERTIES)

    run(scenario)


def test_closing_the_bus_ends_a_publish_waiting_for_the_connection_at_once() -> None:
    async def scenario() -> float:
        made, robust = publisher([confirmed])
        robust.connected.clear()
        waiting = asyncio.create_task(made.publish(b"{}", PROPERTIES))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # waiting for the connection
        started = asyncio.get_running_loop().time()
        robust.close()
        with pytest.raises(PublishFailed, match="the bus was closed"):
            await waiting
        return asyncio.get_running_loop().time() - started

    assert run(scenario) < 0.25  # not the 0.5 s deadline


def test_a_confirm_failed_with_cancelled_error_by_close_is_publish_failed_not_a_cancellation() -> None:
    async def scenario() -> None:
        robust: Robust

        async def rejected() -> None:  # aiormq rejects pending confirms with close()'s CancelledError
            robust.close()
            raise asyncio.CancelledError

        made, robust = publisher([rejected])
        with pytest.raises(PublishFailed, match="the bus was closed"):
            await made.publish(b"{}", PROPERTIES)

    run(scenario)


def test_the_callers_own_cancellation_propagates() -> None:
    async def scenario() -> None:
        made, _ = publisher([forever])
        waiting = asyncio.create_task(made.publish(b"{}", PROPERTIES))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    run(scenario)


def test_a_nack_is_publish_failed_at_once() -> None:
    async def scenario() -> int:
        async def nacked() -> None:
            raise aiormq.exceptions.DeliveryError(None, None)

        made, robust = publisher([nacked, confirmed])
        with pytest.raises(PublishFailed, match="refused"):
            await made.publish(b"{}", PROPERTIES)
        return robust.underlay.made

    assert run(scenario) == 1
