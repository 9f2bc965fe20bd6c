"""MasterTrade stages: the core stage machinery (tradebus/stage.py), reading MasterTrade's messages.

A body is validated against the six message formats (tradebus/mastertrade/wire.py); ``task.delay(message)``
publishes the message on the exchange and key its own fields give.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tradebus import registry
from tradebus.mastertrade.messages import BusMessage
from tradebus.mastertrade.wire import from_wire, parse_wire, publish
from tradebus.stage import StageTask

R = TypeVar("R")


class MasterTradeStage(StageTask):
    """A stage of a MasterTrade queue: one of the documented message types."""

    message_base = BusMessage

    def decode(self, payload: Any, content_type: str | None) -> BusMessage:
        """A raw body or a decoded dict as the MasterTrade message it is, its sealed fields opened with the
        app's keys, or InvalidMessage (Undecryptable when a sealed field does not open)."""
        keyring = self.app.settings.encryption.keyring
        if isinstance(payload, str | bytes):
            return parse_wire(payload, content_type, keyring)
        return from_wire(payload, keyring)

    def send_message(self, message: Any, message_id: str | None) -> str:
        """Publish ``message`` on its documented route."""
        return publish(message, message_id=message_id, app=self.app)


def stage(
    name: str, *, queue: str, accepts: type[Any] | tuple[type[Any], ...], **options: Any
) -> Callable[[Callable[[Any], R]], Any]:
    """Make ``fn(message)`` the MasterTrade stage ``name`` of ``queue`` (see ``tradebus.registry.stage``)."""
    return registry.stage(name, queue=queue, accepts=accepts, base=MasterTradeStage, **options)
