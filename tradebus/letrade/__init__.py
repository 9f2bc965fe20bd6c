"""Letrade_v1's bus (seed 003) on tradebus's machinery: its envelope and payloads, its clients (the asyncio
``MessageBus`` its services use, and the synchronous ``LetradeBus``), its health check and its demo. The
topology is routing/letrade.py; its stages are tasks/letrade/.

``from tradebus.letrade import MessageBus`` imports aio-pika only then: the stages and the sync client,
which import this package, do not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tradebus.letrade.aio import MessageBus
    from tradebus.letrade.bus import LetradeBus

__all__ = ["LetradeBus", "MessageBus"]


def __getattr__(name: str) -> Any:
    if name == "MessageBus":
        from tradebus.letrade.aio import MessageBus

        return MessageBus
    if name == "LetradeBus":
        from tradebus.letrade.bus import LetradeBus

        return LetradeBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
