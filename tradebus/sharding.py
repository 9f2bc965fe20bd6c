"""Whether a delivery on a shard queue is where tradebus computes it should be, counted where it arrives.

Two things make a shard receive messages it was not computed for, and neither loses or reorders one (a
symbol still reaches one shard): a publisher that sets no ``x-tradebus-symbol`` header (plain pika: every
such message hashes as "no header" and lands on one shard), and a consistent-hash ring that is no longer in
the shards' order (rebuilt on a node restart, or a shard re-created: tradebus/ops/ring.py). Both are made
visible here: a counter per queue in the recorder (``shard_no_symbol:<queue>``,
``shard_misplaced:<queue>``), ``tradebus_shard_deliveries_total{kind=no_symbol|misplaced}`` in the
worker's Prometheus metrics (tradebus/metrics.py; the stage counts it there first, so Redis down does not
lose it), and a warning on the first such
delivery of a process and every ``LOG_EVERY`` after it, so a log does not grow with the traffic. Retries
and replays come back by name through ``mastertrade.retry`` and are not checked: they go to the shard they
left.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from routing import Topology
from routing.consistent_hash import header_bucket

logger = logging.getLogger(__name__)

NO_SYMBOL = "no_symbol"
MISPLACED = "misplaced"
#: A warning on the first of a kind per queue and process, then on every LOG_EVERY-th.
LOG_EVERY = 1000

_seen: Counter[str] = Counter()


def check_delivery(
    topology: Topology,
    queue: str,
    exchange: str,
    headers: Mapping[str, Any],
    count: Callable[[str, str], None],
) -> str | None:
    """``NO_SYMBOL`` or ``MISPLACED`` (logged, then ``count(kind, "shard_<kind>:<queue>")``, which may
    raise: Redis down)
    for a delivery on shard ``queue`` that arrived through ``exchange`` with ``headers``; None when it is
    where it should be."""
    shards = topology.shard_of_queue.get(queue)
    if shards is None or exchange == topology.retry.name:
        return None
    value = headers.get(shards.header)
    symbol = None if value is None else str(value)
    expected = shards.queues[header_bucket(symbol, len(shards.queues))]
    if symbol is None:
        kind, why = NO_SYMBOL, f"a delivery without {shards.header}: every such message lands on {expected}"
    elif expected != queue:
        kind, why = (
            MISPLACED,
            (
                f"misplaced delivery: {shards.header}={symbol} hashes to {expected}; "
                "the broker's ring is not in the shards' order (run `tradebus topology check`)"
            ),
        )
    else:
        return None
    name = f"shard_{kind}:{queue}"
    _seen[name] += 1
    if _seen[name] % LOG_EVERY == 1:
        logger.warning("%s: %s (%d in this process)", queue, why, _seen[name])
    count(kind, name)
    return kind
