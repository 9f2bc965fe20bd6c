"""A tradebus worker whose pool process dies once between publishing an outcome and noting it.

``celery -A tests.support.die_before_note worker -Q order_requests`` runs the real tradebus app (this
module's ``app``) with one fault: the first process about to note that the outcome whose key ends with
``$TRADEBUS_TEST_DIE_BEFORE_NOTE`` is published (``tradebus.state.mark_published``, called by
``publish_once`` right after the publish was confirmed) SIGKILLs itself instead, as an OOM killer would.
The file ``$TRADEBUS_TEST_DIE_MARKER``, created at that moment, makes it happen once: the redelivery that
follows notes it as usual. For live tests only; the product has no fault hook.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from tradebus import app, state

__all__ = ["app"]

DIE_BEFORE_NOTE = "TRADEBUS_TEST_DIE_BEFORE_NOTE"
DIE_MARKER = "TRADEBUS_TEST_DIE_MARKER"

_mark_published = state.mark_published


def _first_time(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _die_before_the_first_note(client: Any, outcome: str, keep_seconds: int) -> None:
    target, marker = os.environ.get(DIE_BEFORE_NOTE), os.environ.get(DIE_MARKER)
    if target and marker and outcome.endswith(target) and _first_time(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    _mark_published(client, outcome, keep_seconds)


if os.environ.get(DIE_BEFORE_NOTE):  # in the worker; a test importing the names patches nothing
    state.mark_published = _die_before_the_first_note
