"""``Writes``: frames written to an aiormq connection, never left waiting on a connection that closed.

aiormq puts every frame a client sends (a publish, an acknowledgement) on its connection's write queue,
which holds ten. When the connection dies, its writer stops reading that queue before aiormq closes the
channels; frames sent in between fill it, and the next sender waits for room that never comes: aiormq
rejects pending confirms and drains, but wakes no one waiting to put. A publisher waits forever; a
subscription waiting to acknowledge stops delivering (docs/letrade.md, "Nothing waits on a dead
connection").

So a write runs through ``Writes.run``: it is registered with its connection, and when that connection
closes each write still waiting is cancelled and raises ``ChannelInvalidStateError``, as a write on a
closed channel does, which the caller already handles (a publish goes out again after the reconnection;
an acknowledgement is dropped, RabbitMQ delivers the message again). A write whose connection closes in
the very step it completed is reported lost too: a confirmed publish then goes out twice, with its
message id, which a subscription's repeat check drops.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiormq
from aiormq.abc import AbstractConnection

T = TypeVar("T")


class Writes:
    """The writes in flight, each with the connection it goes out on."""

    def __init__(self) -> None:
        self._in_flight: dict[asyncio.Task[Any], AbstractConnection] = {}
        #: The writes cancelled here because their connection closed under them.
        self._abandoned: set[asyncio.Task[Any]] = set()
        self._watched: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()
        self._last: AbstractConnection | None = None  # the connection of the last write (watched)

    async def run(self, connection: AbstractConnection, write: Coroutine[Any, Any, T]) -> T:
        """Await ``write`` (a coroutine sending on ``connection``) in this task: its result, or
        ChannelInvalidStateError when ``connection`` is closed or closes while it waits."""
        task = asyncio.current_task()
        assert task is not None
        if connection.is_closed:
            write.close()
            raise aiormq.exceptions.ChannelInvalidStateError(f"{connection} is closed")
        if connection is not self._last and connection not in self._watched:  # a WeakSet test is slower
            self._watched.add(connection)
            connection.closing.add_done_callback(functools.partial(self._abandon, weakref.ref(connection)))
        self._last = connection
        cancelled_before = task.cancelling()
        self._in_flight[task] = connection
        try:
            return await write
        except asyncio.CancelledError:
            if task not in self._abandoned:
                raise
            self._abandoned.discard(task)
            if task.uncancel() > cancelled_before:
                raise  # cancelled by its caller too: the caller's cancellation stands
            raise aiormq.exceptions.ChannelInvalidStateError(
                f"{connection} closed while this write waited on it"
            ) from None
        finally:
            self._in_flight.pop(task, None)
            if task in self._abandoned:  # cancelled here, but the write ended another way: undo it
                self._abandoned.discard(task)
                task.uncancel()

    def _abandon(self, closed: weakref.ref[AbstractConnection], _closing: asyncio.Future[Any]) -> None:
        """A connection closed: cancel the writes still waiting on it (its write queue wakes none)."""
        connection = closed()
        if self._last is connection:
            self._last = None  # nothing of a dead connection kept
        for task, on in self._in_flight.items():
            if on is connection and task not in self._abandoned:
                self._abandoned.add(task)
                task.cancel()
