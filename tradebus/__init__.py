"""tradebus: the MasterTrade and Letrade_v1 message buses on RabbitMQ, each pipeline stage a Celery task.

``tradebus.application`` is the default Celery application, built on first use from the environment
(``celery -A tradebus worker -Q order_requests``); ``tradebus.application.create_app(topology, settings)``
builds any other. ``tradebus.publish(message)`` sends a MasterTrade message to its exchange and routing key.
Importing the package builds nothing.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "publish"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from tradebus.application import default_app
        from tradebus.errors import InsecureConnection
        from tradebus.ops import flower

        try:
            app = default_app()
        except InsecureConnection as exc:
            # `celery -A tradebus ...` (worker, beat, flower): one line and the CLI's exit code, before
            # anything connects, rather than a traceback from Celery's app loader.
            from tradebus.ops.exits import ExitCode

            print(f"tradebus: {exc}", file=sys.stderr)
            raise SystemExit(ExitCode.INSECURE) from None
        # `celery -A tradebus flower` is secure by default: login from the environment or loopback only.
        flower.install(app.settings)
        return app
    if name == "publish":
        from tradebus.mastertrade.wire import publish

        return publish
    raise AttributeError(f"module 'tradebus' has no attribute {name!r}")
