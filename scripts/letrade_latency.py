"""``execute_trade`` -> ``events.trade_executed`` and a capital-allocation round trip, alone: the
exchange-connector and capital-manager pools only, on a vhost of their own, N trades one at a time with an
allocation request between two (the bench's ``letrade_async`` trade series, tradebus/ops/bench_letrade.py,
without the publishing runs and the feed before it), and the CPU the connector's pool spent per trade.

    PYTHONPATH=. python scripts/letrade_latency.py [TRADES] [celery worker options for the connector...]
    PYTHONPATH=. python scripts/letrade_latency.py 300 --pool solo     # the connector without prefork

Prints the p50/p95/p99 of both series in ms, the connector's CPU per trade (main process and pool
processes together, and the main process alone) and the median publish-to-stage latency its stage recorded.
docs/performance.md ("Letrade latency") quotes it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from routing import letrade
from tradebus import recorder
from tradebus.application import create_app
from tradebus.letrade import MessageBus, paper
from tradebus.ops import bench_letrade
from tradebus.ops.benchkit import bench_vhost, pool_env
from tradebus.settings import Settings
from workers.launch import start_pool, stop_all


def own_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` itself used (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(trades: int, connector_options: list[str]) -> None:
    logs = Path(tempfile.mkdtemp(prefix="letrade-latency-"))
    with bench_vhost(create_app(letrade.build(), Settings.from_env()), print) as bench:
        paper.reset()
        settings, env = bench.settings, pool_env(bench)
        quiet = ["--loglevel", "WARNING"]
        pools = [
            start_pool(letrade.EXCHANGE_CONNECTOR.name, logs, [*quiet, *connector_options], env),
            start_pool(letrade.CAPITAL_MANAGER.name, logs, quiet, env),
        ]
        try:
            bench_letrade._wait_for_pools(settings, pools, logs)
            connector = pools[0].process.pid

            async def run() -> None:
                async with MessageBus(settings=settings, source="latency") as bus:
                    cpu, main_cpu = bench_letrade.cpu_seconds(connector), own_cpu(connector)
                    trips, requests = await bench_letrade._command_to_event(bus, trades)
                    done = trades + min(bench_letrade.WARM_UP_TRADES, trades)
                    cpu = (bench_letrade.cpu_seconds(connector) - cpu) * 1000 / done
                    main_cpu = (own_cpu(connector) - main_cpu) * 1000 / done
                print(f"execute_trade -> trade_executed (ms): {trips}")
                print(f"allocation request round trips between them (ms): {requests}")
                print(f"connector CPU per trade: {cpu:.2f} ms (its main process: {main_cpu:.2f} ms)")
                recorded = sorted(recorder.latencies(letrade.EXCHANGE_CONNECTOR.name))
                if recorded:
                    print(f"connector's recorded publish-to-stage p50: {recorded[len(recorded) // 2]:.2f} ms")

            asyncio.run(run())
        finally:
            stop_all(pools)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, sys.argv[2:])
