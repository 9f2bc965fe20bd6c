"""Start a pool by name: a Celery worker on the pool's queue, named after the pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workers.profiles import pool


def worker_argv(name: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``celery worker`` arguments that start pool ``name`` (its profile in the topology sizes it)."""
    return ["worker", "-Q", name, "-n", f"{name}@%h", "--loglevel", "INFO", *extra]


def run_pool(app: Any, name: str, extra: Sequence[str] = ()) -> None:
    """Run pool ``name`` of ``app``'s topology in this process until it is stopped; UnknownPool if none."""
    pool(app.topology, name)
    app.worker_main(worker_argv(name, extra))
