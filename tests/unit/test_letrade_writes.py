"""``Writes`` (tradebus/letrade/writes.py): a write waiting on a connection that closes is given up with
ChannelInvalidStateError; any other write is left alone. On the broker, the close is shown by
tests/live/test_letrade_async_live.py (publishes and acknowledgements made while the connection closes)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import aiormq
import pytest
from aiormq.abc import AbstractConnection

from tradebus.letrade.writes import Writes


class Connection:
    """What Writes uses of an aiormq connection: ``closing``, a future done when it closed."""

    def __init__(self) -> None:
        self.closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def is_closed(self) -> bool:
        return self.closing.done()

    def close(self) -> None:
        self.closing.set_exception(aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"))
        self.closing.exception()  # retrieved, as aiormq's observer does


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_write_waiting_when_its_connection_closes_raises_channel_invalid_state() -> None:
    async def scenario() -> None:
        writes, connection, room = Writes(), Connection(), asyncio.Event()
        waiting = asyncio.create_task(writes.run(cast(AbstractConnection, connection), room.wait()))
        await asyncio.sleep(0)
        connection.close()
        with pytest.raises(aiormq.exceptions.ChannelInvalidStateError, match="closed while this write"):
            await waiting
        assert not waiting.cancelling()  # the cancellation was Writes' own: none is left pending
        assert not writes._in_flight and not writes._abandoned

    run(scenario)


def test_writes_on_another_connection_and_finished_writes_are_left_alone() -> None:
    async def scenario() -> None:
        writes, closing, other, room = Writes(), Connection(), Connection(), asyncio.Event()
        done = await writes.run(cast(AbstractConnection, closing), asyncio.sleep(0, result="written"))
        elsewhere = asyncio.create_task(writes.run(cast(AbstractConnection, other), room.wait()))
        await asyncio.sleep(0)
        closing.close()
        await asyncio.sleep(0)
        room.set()
        assert (done, await elsewhere) == ("written", True)

    run(scenario)


def test_a_callers_own_cancellation_stands() -> None:
    async def scenario() -> None:
        writes, connection, room = Writes(), Connection(), asyncio.Event()
        waiting = asyncio.create_task(writes.run(cast(AbstractConnection, connection), room.wait()))
        await asyncio.sleep(0)
        # The caller cancels in the same step as Writes does, after it: both cancellations are pending.
        connection.closing.add_done_callback(lambda _: waiting.cancel())
        connection.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    run(scenario)


def test_a_write_on_a_connection_already_closed_fails_at_once() -> None:
    async def scenario() -> None:
        writes, connection = Writes(), Connection()
        connection.close()
        write = asyncio.Event().wait()
        with pytest.raises(aiormq.exceptions.ChannelInvalidStateError, match="is closed"):
            await writes.run(cast(AbstractConnection, connection), write)
        assert write.cr_frame is None  # closed, never to be awaited

    run(scenario)


def test_a_write_that_ends_another_way_when_cancelled_leaves_no_cancellation_behind() -> None:
    async def scenario() -> None:
        writes, connection, room = Writes(), Connection(), asyncio.Event()

        async def converts() -> None:  # as a library may turn its cancellation into its own error
            try:
                await room.wait()
            except asyncio.CancelledError:
                raise OSError("gone") from None

        async def caller() -> int:
            with pytest.raises(OSError):
                await writes.run(cast(AbstractConnection, connection), converts())
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()

        waiting = asyncio.create_task(caller())
        await asyncio.sleep(0)
        connection.close()
        assert await waiting == 0  # the caller's next await is not cancelled by Writes' leftover

    run(scenario)


def test_a_cancellation_already_pending_when_the_write_began_is_not_taken_for_the_callers() -> None:
    async def scenario() -> None:
        writes, connection, room = Writes(), Connection(), asyncio.Event()

        async def caller() -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # a cancellation caught earlier and never undone: cancelling() stays 1
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)
            assert task.cancelling() == 1
            await writes.run(cast(AbstractConnection, connection), room.wait())

        waiting = asyncio.create_task(caller())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        connection.close()
        with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
            await waiting

    run(scenario)
