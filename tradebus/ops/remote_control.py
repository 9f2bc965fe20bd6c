"""Who may command workers: the Celery names each kind of account may configure, write and read.

Celery's remote control (kombu/pidbox.py, celery/app/control.py, celery/worker/pidbox.py) and events:

* a command is published to the fanout exchange ``celery.pidbox``; every worker consumes its own exclusive
  queue ``<node name>.celery.pidbox`` bound to it (declaring the exchange and the queue: configure on both;
  binding: write on the queue, read on the exchange; consuming: read on the queue);
* a command that wants answers carries ``reply_to`` = ``reply.celery.pidbox`` (direct) and the caller's
  id as routing key; the caller declares and consumes its exclusive ``<id>.reply.celery.pidbox`` queue
  bound there, and each worker publishes its answer to ``reply.celery.pidbox`` (configure, write);
* events (heartbeats, task events) are published to the topic exchange ``celeryev``; a monitor (Flower)
  consumes a ``celeryev.<id>`` queue bound to it.

So writing ``celery.pidbox`` *is* commanding every worker: only operators (Flower, the admin) may. A
worker account keeps what its own worker needs: its pidbox queue, named after its own pools (workers run
as ``-n <pool>@<host>``), read on ``celery.pidbox`` to bind it, ``reply.celery.pidbox`` to answer and
``celeryev`` for its events. It may bind (write) no other worker's pidbox queue, so it cannot route a
command there through an exchange of its own either. Workers run without mingle (which broadcasts
``hello`` at start) and gossip (which consumes every worker's events and acts on ``worker.elect``):
workers/profiled.py. Celery's direct worker queues (``worker_direct``: ``C.dq2``, ``<node>.dq2``) are off
and nobody but the admin may touch those names. docs/security.md, "Remote control", has the table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: The broadcast exchange of remote control: writing it commands every worker.
PIDBOX = r"celery\.pidbox"
#: Where workers publish their answers.
REPLY = r"reply\.celery\.pidbox"
#: Celery's event exchange (heartbeats, task events).
EVENTS = r"celeryev"
#: A monitor's event queue.
EVENT_QUEUES = r"celeryev\.[^.]+"
#: A caller's reply queue: ``<uuid>.reply.celery.pidbox``.
REPLY_QUEUES = r"[^.@]+\.reply\.celery\.pidbox"


def pidbox_queues(pools: Iterable[str]) -> str:
    """The pidbox queues of the workers of these pools (``<pool>@<host>.celery.pidbox``); none if no pool."""
    names = sorted({re.escape(pool) for pool in pools})
    return rf"({'|'.join(names)})@.+\.celery\.pidbox" if names else ""


@dataclass(frozen=True)
class CeleryGrant:
    """Celery's names an account may configure (declare, delete), write (publish, bind a queue) and read."""

    configure: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()


#: Beat, and anything else that is neither a worker nor an operator: none of Celery's names.
NO_GRANT = CeleryGrant()

#: Flower (and ``celery inspect``/``control`` as an operator): commands, reads answers and events.
OPERATOR = CeleryGrant(
    configure=(PIDBOX, REPLY, EVENTS, REPLY_QUEUES, EVENT_QUEUES),
    write=(PIDBOX, REPLY_QUEUES, EVENT_QUEUES),
    read=(REPLY, EVENTS, REPLY_QUEUES, EVENT_QUEUES),
)


def worker_grant(pools: Iterable[str]) -> CeleryGrant:
    """A worker of ``pools``: its own pidbox queue, answers and events; never a command."""
    own = pidbox_queues(pools)
    if not own:  # a service that only publishes runs no worker
        return NO_GRANT
    return CeleryGrant(configure=(PIDBOX, REPLY, EVENTS, own), write=(REPLY, EVENTS, own), read=(PIDBOX, own))
