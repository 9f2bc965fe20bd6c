"""The order-path scenario's background market data, published from a process of its own.

``python -m tradebus.ops.benchload RATE BATCH`` publishes ``RATE`` ticks per second, ``BATCH`` ticks per
message, to the bus the environment names (the bench's vhost and prefix) until it is terminated. A real
bus's ticks come from feed handlers, not from the client that times its orders: run in the bench's own
process, this publisher would share that client's interpreter lock, and every round trip would wait for
it (docs/performance.md, "Order path").
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from tradebus.application import default_app, using
from tradebus.ops.benchkit import background_ticks


def main(argv: list[str]) -> int:
    rate, batch = float(argv[0]), int(argv[1])
    stop = threading.Event()

    def terminate(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, terminate)
    with using(default_app()):
        background_ticks(rate, batch, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
