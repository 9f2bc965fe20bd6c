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

#: Publishing threads at most, each at its share of the rate, and the messages a second each takes.
PUBLISHERS, MESSAGES_PER_PUBLISHER = 3, 150


def main(argv: list[str]) -> int:
    rate, batch = float(argv[0]), int(argv[1])
    stop = threading.Event()

    def terminate(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, terminate)
    with using(default_app()):
        # Each publish waits for its confirm (about a millisecond or two here): one publisher alone falls
        # short of 500 single ticks a second, so up to PUBLISHERS share a rate of many messages. A rate of
        # few (ticks in batches) keeps one, its messages evenly spaced.
        count = max(1, min(PUBLISHERS, round(rate / batch / MESSAGES_PER_PUBLISHER)))
        publishers = [
            threading.Thread(target=background_ticks, args=(rate / count, batch, stop), daemon=True)
            for _ in range(count)
        ]
        for publisher in publishers:
            publisher.start()
        for publisher in publishers:
            publisher.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
