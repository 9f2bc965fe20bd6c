"""aio-pika's robust connection over a cluster's nodes: ``amqp://a//;amqp://b//`` (docs/scaling.md).

Kombu reads such a list as fail-over alternates; aio-pika takes one URL and reconnects to that one only,
so a client whose node died would wait for it to come back. ``FailoverConnection`` is aio-pika's
``RobustConnection`` whose every (re)connection tries the nodes in turn, starting after the node it lost,
and fails only when none answers (the robust loop then waits ``reconnect_interval`` and tries them all
again). Channels, queues and consumers are restored on the new node by aio-pika as after any reconnection.

aio-pika has no hook for this: the connection attempt is ``RobustConnection``'s private
``__connect_transport``, overridden by its mangled name. The pinned aio-pika (constraints.txt) has it; the
check below fails at import, loudly, if an upgrade renames it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aio_pika import RobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from tradebus import nodes

_ATTEMPT = "_RobustConnection__connect_transport"
if not hasattr(RobustConnection, _ATTEMPT):  # pragma: no cover - an aio-pika upgrade changed its internals
    raise ImportError(f"aio-pika's RobustConnection has no {_ATTEMPT}: tradebus/letrade/failover.py")


class FailoverConnection(RobustConnection):
    """A robust connection that moves to the next node of a cluster when its node does not answer."""

    def __init__(self, urls: str, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        listed = nodes.split(urls) or (urls,)
        super().__init__(URL(listed[0]), loop, **kwargs)
        #: The cluster's nodes, in the order given.
        self.nodes = tuple(URL(url) for url in listed)
        #: The node of the current (or last) connection.
        self.node = 0

    async def _connect_to_a_node(self) -> None:
        """Connect to the first node that answers, from the current one on; the last error when none does."""
        attempt = cast(Callable[[RobustConnection], Awaitable[None]], getattr(RobustConnection, _ATTEMPT))
        error: BaseException | None = None
        start = self.node  # a failed attempt runs the close callbacks, which move self.node on
        for step in range(len(self.nodes)):
            node = (start + step) % len(self.nodes)
            self.url = self.nodes[node]
            try:
                await attempt(self)
            except CONNECTION_EXCEPTIONS as exc:
                error = exc
                continue
            self.node = node
            return
        assert error is not None
        raise error

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not (self._close_called or self.is_closed):
            self.node = (self.node + 1) % len(self.nodes)  # its node is likely gone: try the next first
        await super()._on_connection_close(closing)


# RobustConnection's reconnect loop calls its private attempt by its mangled name: this one tries each node.
setattr(FailoverConnection, _ATTEMPT, FailoverConnection._connect_to_a_node)


async def connect_robust(urls: str, *, timeout: float | None = None, **kwargs: Any) -> FailoverConnection:
    """Connect to the first node of ``urls`` (a ``;``-separated list, or one URL) that answers; aio-pika's
    ``connect_robust`` with fail-over. ``kwargs`` are RobustConnection's (``reconnect_interval``,
    ``ssl_context``, ``client_properties``)."""
    connection = FailoverConnection(urls, **kwargs)
    await connection.connect(timeout=timeout)
    return connection
