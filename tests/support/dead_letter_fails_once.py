"""A tradebus worker whose ticker stage rejects one symbol's ticks and cannot dead-letter the first.

``celery -A tests.support.dead_letter_fails_once worker -Q ticker_updates`` runs the real tradebus app (this
module's ``app``) with one fault: the ticker stage finds every tick of ``$TRADEBUS_TEST_BAD_SYMBOL`` invalid
(SchemaViolation), and the first dead letter of it is not confirmed (the broker refused it), so that
delivery fails its batch. The file ``$TRADEBUS_TEST_BAD_MARKER``, created at that moment, makes the refusal
happen once across the pool's processes. For live tests only; the product has no fault hook.
"""

from __future__ import annotations

import os
from typing import Any

from tradebus import app
from tradebus.errors import SchemaViolation

__all__ = ["app"]

BAD_SYMBOL = "TRADEBUS_TEST_BAD_SYMBOL"
BAD_MARKER = "TRADEBUS_TEST_BAD_MARKER"


def _first_time(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


if os.environ.get(BAD_SYMBOL):  # in the worker; a test importing the names patches nothing
    _stage = app.tasks["tradebus.monitoring.on_ticker"]
    _handle, _dead_letter = _stage.handler, _stage.dead_letter

    def _handle_rejecting(message: Any) -> Any:
        if getattr(message, "symbol", None) == os.environ[BAD_SYMBOL]:
            raise SchemaViolation("test: this symbol's ticks break a rule")
        return _handle(message)

    def _dead_letter_refused_once(payload: Any, reason: str, error: str) -> None:
        if os.environ[BAD_SYMBOL] in str(payload) and _first_time(os.environ[BAD_MARKER]):
            raise RuntimeError("test: the broker did not confirm the dead letter")
        _dead_letter(payload, reason, error)

    _stage.handler = _handle_rejecting
    _stage.dead_letter = _dead_letter_refused_once
    _stage.batch_handler = None  # each tick through the handler above
