"""``execute_trade`` -> ``events.trade_executed`` and a capital-allocation round trip, alone: the
exchange-connector and capital-manager pools only, on a vhost of their own, N trades one at a time with an
allocation request between two (the bench's ``letrade_async`` trade series, tradebus/ops/bench_letrade.py,
without the publishing runs and the feed before it), and the CPU the connector's pool spent per trade.

    PYTHONPATH=. python scripts/letrade_latency.py [TRADES] [celery worker options for the connector...]
    PYTHONPATH=. python scripts/letrade_latency.py 300                 # the connector's profile: 2 threads
    PYTHONPATH=. python scripts/letrade_latency.py 300 -P prefork      # the connector as 2 processes
    PYTHONPATH=. python scripts/letrade_latency.py 300 --feed 10000    # meanwhile 10,000 candles/s

``--feed N`` runs a publisher of N candles/s (batches of 500, ``publish_candles``) in a process of its own
during the trades: the connector handles those batches beside the commands (the seed's rate is 10,000/s).

Prints the p50/p95/p99 of both series in ms, the connector's CPU per trade (main process and pool
processes together, and the main process alone), its memory after the trades (resident and proportional
set sizes, summed over the worker's processes) and the median publish-to-stage latency its stage recorded.
docs/performance.md ("Letrade latency") quotes it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from routing import letrade
from tradebus import recorder
from tradebus.application import create_app
from tradebus.letrade import MessageBus, paper
from tradebus.ops import bench_letrade
from tradebus.ops.benchkit import bench_vhost, pool_env, stage_count
from tradebus.settings import Settings
from workers.launch import start_pool, stop_all


def own_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` itself used (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB of process ``pid`` and its live children together (PSS shares out the pages a
    prefork pool's processes have in common, which RSS counts in each)."""
    rss = pss = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        rollup = Path(f"/proc/{current}/smaps_rollup")
        if rollup.exists():
            fields = dict(line.split(":", 1) for line in rollup.read_text().splitlines()[1:])
            rss += int(fields["Rss"].split()[0])
            pss += int(fields["Pss"].split()[0])
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            pids += [int(child) for child in children.read_text().split()]
    return rss / 1024, pss / 1024


#: The ``--feed`` publisher: N candles/s in batches of 500, evenly paced, until it is terminated.
FEED = """
import asyncio, itertools, sys, time
from tradebus.letrade import MessageBus, simulator
from tradebus.settings import Settings

async def feed(rate):
    async with MessageBus(settings=Settings.from_env(), source=simulator.SOURCE) as bus:
        stream, due = (c.payload for c in simulator.candles(seed=5)), time.monotonic()
        while True:
            await bus.publish_candles(list(itertools.islice(stream, 500)))
            due += 500 / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))

asyncio.run(feed(float(sys.argv[1])))
"""


def main(trades: int, connector_options: list[str]) -> None:
    feed_rate = 0.0
    if "--feed" in connector_options:
        at = connector_options.index("--feed")
        feed_rate = float(connector_options[at + 1])
        del connector_options[at : at + 2]
    logs = Path(tempfile.mkdtemp(prefix="letrade-latency-"))
    with bench_vhost(create_app(letrade.build(), Settings.from_env()), print) as bench:
        paper.reset()
        settings, env = bench.settings, pool_env(bench)
        quiet = ["--loglevel", "WARNING"]
        pools = [
            start_pool(letrade.EXCHANGE_CONNECTOR.name, logs, [*quiet, *connector_options], env),
            start_pool(letrade.CAPITAL_MANAGER.name, logs, quiet, env),
        ]
        feeder: subprocess.Popen[bytes] | None = None
        try:
            bench_letrade._wait_for_pools(settings, pools, logs)
            connector, inbox = pools[0].process.pid, letrade.EXCHANGE_CONNECTOR.name
            if feed_rate:
                feeder = subprocess.Popen(
                    [sys.executable, "-c", FEED, str(feed_rate)], env={**os.environ, **env}
                )

            async def run() -> None:
                async with MessageBus(settings=settings, source="latency") as bus:
                    cpu, main_cpu = bench_letrade.cpu_seconds(connector), own_cpu(connector)
                    trips, requests = await bench_letrade._command_to_event(bus, trades)
                    done = trades + min(bench_letrade.WARM_UP_TRADES, trades)
                    cpu = (bench_letrade.cpu_seconds(connector) - cpu) * 1000 / done
                    main_cpu = (own_cpu(connector) - main_cpu) * 1000 / done
                print(f"execute_trade -> trade_executed (ms): {trips}")
                print(f"allocation request round trips between them (ms): {requests}")
                if feed_rate:
                    print(
                        f"meanwhile {feed_rate:,.0f} candles/s; the connector counted "
                        f"{stage_count(inbox)} candles and commands"
                    )
                print(f"connector CPU per trade: {cpu:.2f} ms (its main process: {main_cpu:.2f} ms)")
                rss, pss = memory_mb(connector)
                print(f"connector memory: RSS {rss:.1f} MB, PSS {pss:.1f} MB (all its processes)")
                recorded = sorted(recorder.latencies(letrade.EXCHANGE_CONNECTOR.name))
                if recorded:
                    print(f"connector's recorded publish-to-stage p50: {recorded[len(recorded) // 2]:.2f} ms")

            asyncio.run(run())
        finally:
            if feeder is not None:
                feeder.terminate()
                feeder.wait()
            stop_all(pools)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, sys.argv[2:])
