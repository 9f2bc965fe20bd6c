"""A worker's Prometheus endpoint: ``/metrics`` on ``TRADEBUS_METRICS_PORT``, for every process of its pool.

The prefork pool runs each stage in a child process, so the counts are kept with prometheus_client's
multiprocess mode: each process writes its samples to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``
and the worker's main process, which serves the endpoint, adds them up at each scrape (a child that is
replaced keeps its counts in the sum). The directory is the one in the environment (its files from an
earlier run are removed first), else a new temporary one of this worker's own, removed when it exits.
This runs in the worker's main process before the pool starts (workers/profiled.py), so the pool's
processes inherit the mode and the signal receivers.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradebus import metrics
from tradebus.errors import MetricsUnavailable
from tradebus.settings import MetricsSettings

logger = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class Exporter:
    """A running endpoint: its HTTP server, address, port and the directory the processes write to."""

    server: Any
    address: str
    port: int
    directory: Path
    owned: bool

    def close(self) -> None:
        """Stop serving; remove the directory if this exporter made it (only in the process that did)."""
        self.server.shutdown()
        self.server.server_close()
        if self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)


def _directory(worker_name: str) -> tuple[Path, bool]:
    """The multiprocess directory, emptied of earlier runs' files, and whether this worker made it."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_name)
    return Path(tempfile.mkdtemp(prefix=f"tradebus-metrics-{safe}-")), True


def start(settings: MetricsSettings, worker_name: str) -> Exporter | None:
    """Serve this worker's metrics if ``settings`` has a port; None otherwise (nothing is counted then).

    MetricsUnavailable if the port is taken.
    """
    if settings.port is None:
        return None
    if metrics.enabled():
        raise MetricsUnavailable("this process counts already; a worker starts its exporter once")
    directory, owned = _directory(worker_name)
    os.environ[MULTIPROC_ENV] = str(directory)  # read by prometheus_client at import, and by the children
    import prometheus_client
    from prometheus_client import CollectorRegistry, multiprocess, values

    # prometheus_client chose its value class when first imported, and Celery's command line imports it
    # before any worker code runs (Flower registers its command, which loads its own metrics). Choose
    # again, now that the directory is set, as prometheus_client itself does at import; every metric
    # created from here on, in this process and the pool's, writes to the directory.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics.enable()
    served = CollectorRegistry(auto_describe=True)
    multiprocess.MultiProcessCollector(served, path=str(directory))  # type: ignore[no-untyped-call]
    try:
        server, _ = prometheus_client.start_http_server(settings.port, settings.address, registry=served)
    except OSError as exc:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
        raise MetricsUnavailable(
            f"cannot serve metrics on {settings.address}:{settings.port} (TRADEBUS_METRICS_PORT): {exc}"
        ) from exc
    exporter = Exporter(server, settings.address, settings.port, directory, owned)
    owner = os.getpid()
    atexit.register(lambda: exporter.close() if os.getpid() == owner else None)
    logger.info("metrics on http://%s:%d/metrics (%s)", settings.address, settings.port, directory)
    return exporter
