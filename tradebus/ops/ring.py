"""The consistent-hash exchange's ring as the broker holds it, against the order tradebus assumes.

tradebus computes a symbol's shard as the plugin does, with bucket i being the i-th shard bound
(routing/consistent_hash.py). The plugin keeps its ring apart from the bindings and rebuilds it when a node
boots, in the order it recovers the bindings: positions are not guaranteed across restarts (the plugin's
README, "Node Restart Effects"; rabbitmq-server#3386), and a shard queue deleted and re-created moves to the
end. The broker's own ring is readable with ``rabbitmq-diagnostics consistent_hash_exchange_ring_state``
(the plugin's CLI command, present on 3.10): only where that command runs (the broker's host, with its
Erlang cookie). Elsewhere the stages' misplaced-delivery count is the signal (tradebus/sharding.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess

from routing import Topology
from tradebus.topology import Difference

DIAGNOSTICS = "rabbitmq-diagnostics"
RING_COMMAND = "consistent_hash_exchange_ring_state"
#: The attribute of a ring difference's row.
RING_ATTRIBUTE = "ring"
#: What to do when the ring is not in the shards' order (docs/operations.md, "Resharding").
RING_HINT = (
    "The consistent-hash ring is not in the shards' order (a node restart rebuilt it, or a shard queue was "
    "re-created): each symbol still reaches one shard, in order, but not the one `tradebus route` names, "
    "and the stages count misplaced deliveries. To restore it: drain the shards, delete the exchange "
    "mastertrade.market.strategy, run `tradebus topology declare` (it binds the shards in order) and "
    "`tradebus topology check`. docs/operations.md, 'Resharding'."
)


def ring_state(vhost: str, exchange: str, timeout: float = 30.0) -> dict[int, str] | str:
    """Bucket -> queue of ``exchange``'s ring as the broker holds it, or why it cannot be read."""
    command = shutil.which(DIAGNOSTICS)
    if command is None:
        return f"{DIAGNOSTICS} is not on this host's PATH (run the check on the broker's host)"
    try:
        done = subprocess.run(
            [command, RING_COMMAND, "-p", vhost, exchange, "--formatter", "json"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{DIAGNOSTICS} {RING_COMMAND}: {exc}"
    try:
        answer = json.loads(done.stdout)
        return {int(bucket): str(queue) for bucket, queue in answer["buckets"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        why = (done.stderr or done.stdout).strip().splitlines()
        return f"{DIAGNOSTICS} {RING_COMMAND} (exit {done.returncode}): {why[-1] if why else 'no output'}"


def ring_differences(topology: Topology, rings: dict[str, dict[int, str]]) -> list[Difference]:
    """Buckets whose queue is not the shard tradebus computes for them; ``rings``: exchange -> ring."""
    rows: list[Difference] = []
    for shards in topology.shards:
        ring = rings.get(shards.exchange)
        if ring is None:
            continue
        wanted = dict(enumerate(shards.queues))
        for bucket in sorted(set(ring) | set(wanted)):
            if ring.get(bucket) != wanted.get(bucket):
                rows.append(
                    (
                        f"exchange {shards.exchange} bucket {bucket}",
                        RING_ATTRIBUTE,
                        ring.get(bucket, "(none)"),
                        wanted.get(bucket, "(none)"),
                    )
                )
    return rows
