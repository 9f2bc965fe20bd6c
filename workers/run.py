"""Start a pool by name: a Celery worker on the pool's queue, named after the pool."""

from __future__ import annotations

from collections.abc import Sequence

from workers.profiles import pool


def worker_argv(name: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``celery worker`` arguments that start pool ``name`` (its profile sizes it)."""
    profile = pool(name)
    return ["worker", "-Q", profile.queue, "-n", f"{profile.name}@%h", "--loglevel", "INFO", *extra]


def run_pool(name: str, extra: Sequence[str] = ()) -> None:
    """Run pool ``name`` in this process until it is stopped."""
    from tradebus.app import app

    app.worker_main(worker_argv(name, extra))
