"""A tradebus worker whose executor fails one order once with a transient error (Redis away).

``celery -A tests.support.fail_once worker -Q order_requests`` runs the real tradebus app (this module's
``app``) with one fault: the first attempt at the order whose ``request_id`` is ``$TRADEBUS_TEST_FAIL_ONCE``
raises ``redis.ConnectionError``, so the stage retries it after 5 s by the seed's policy. The file
``$TRADEBUS_TEST_FAIL_MARKER``, created at that moment, makes it happen once across the pool's processes.
For live tests only; the product has no fault hook.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from tradebus import app

__all__ = ["app"]

FAIL_ONCE = "TRADEBUS_TEST_FAIL_ONCE"
FAIL_MARKER = "TRADEBUS_TEST_FAIL_MARKER"


def _first_time(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


if os.environ.get(FAIL_ONCE):  # in the worker; a test importing the names patches nothing
    from tasks.execution import execute_order

    _execute = execute_order.handler

    def _fail_once(order: Any) -> Any:
        if order.request_id == os.environ[FAIL_ONCE] and _first_time(os.environ[FAIL_MARKER]):
            raise redis.ConnectionError("test: Redis away for one attempt")
        return _execute(order)

    execute_order.handler = _fail_once
