"""A tradebus worker whose pool process dies once in the middle of a batch of ticks.

``celery -A tests.support.die_mid_batch worker -Q ticker_updates`` runs the real tradebus app (this
module's ``app``) with one fault: the first process about to handle a tick of ``$TRADEBUS_TEST_DIE_SYMBOL``
SIGKILLs itself instead, after the ticks of its batch have been validated and recorded (in the stage's
batch handler, or in its own handler when it runs one at a time). The file
``$TRADEBUS_TEST_DIE_MARKER``, created at that moment, makes it happen once. For live tests only.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from tradebus import app

__all__ = ["app"]

DIE_SYMBOL = "TRADEBUS_TEST_DIE_SYMBOL"
DIE_MARKER = "TRADEBUS_TEST_DIE_MARKER"

_stage = app.tasks["tradebus.monitoring.on_ticker"]
_handle, _handle_batch = _stage.handler, _stage.batch_handler


def _first_time(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _die_on_the_symbol(message: Any) -> None:
    marker = os.environ.get(DIE_MARKER)
    if message.symbol == os.environ.get(DIE_SYMBOL) and marker and _first_time(marker):
        os.kill(os.getpid(), signal.SIGKILL)


def _handle_dying(message: Any) -> Any:
    _die_on_the_symbol(message)
    return _handle(message)


def _handle_batch_dying(messages: list[Any]) -> Any:
    for message in messages:
        _die_on_the_symbol(message)
    return _handle_batch(messages)


_stage.handler = _handle_dying
_stage.batch_handler = _handle_batch_dying
