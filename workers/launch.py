"""Start pools as separate worker processes and wait for them, for the demo, the benchmark and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kombu import Connection

from workers.run import worker_argv


@dataclass
class PoolProcess:
    """A running ``celery worker`` for one pool, its log file and its queue."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    extra: Sequence[str] = field(default_factory=tuple)

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM): finish the running tasks, then exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int:
        """Warm shutdown, then SIGKILL of the whole process group if it does not exit in ``timeout``."""
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return self.process.returncode


def stop_all(pools: Iterable[PoolProcess], timeout: float = 20.0) -> None:
    """Stop every pool at once: all get SIGTERM first, then each is waited for."""
    pools = list(pools)
    for pool in pools:
        pool.terminate()
    for pool in pools:
        pool.stop(timeout)


def kill_all(pools: Iterable[PoolProcess]) -> None:
    """SIGKILL each worker and its pool processes (its whole process group) and reap it: a crash, or the
    end of a test that has seen all it needs (a warm shutdown of each would add seconds)."""
    for pool in pools:
        if pool.process.poll() is None:
            os.killpg(pool.process.pid, signal.SIGKILL)
        pool.process.wait()


def start_pool(
    name: str, log_dir: Path, extra: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> PoolProcess:
    """Start pool ``name`` as ``python -m celery -A tradebus worker ...``, logging to ``log_dir``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    argv = [sys.executable, "-m", "celery", "-A", "tradebus", *worker_argv(name, extra)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return PoolProcess(name, process, log, extra)


def wait_for_consumers(
    connection: Connection, queues: Iterable[str], timeout: float, pools: Sequence[PoolProcess] = ()
) -> list[str]:
    """Wait until every queue has a consumer; returns the queues that still have none."""
    waiting = list(queues)
    deadline = time.monotonic() + timeout
    channel = connection.channel()
    while waiting and time.monotonic() < deadline:
        dead = [p for p in pools if p.process.poll() is not None]
        if dead:
            raise RuntimeError(f"pool {dead[0].name} exited; see {dead[0].log}")
        waiting = [q for q in waiting if channel.queue_declare(queue=q, passive=True)[2] == 0]
        if waiting:
            time.sleep(0.25)
    channel.close()
    return waiting
