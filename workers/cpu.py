"""A worker's lower CPU priority, made to hold against processes of other sessions too.

``os.nice`` weighs a process against the processes it is scheduled with. On a Linux kernel that groups
processes by session (``CONFIG_SCHED_AUTOGROUP``, on by default in Debian's and Ubuntu's kernels:
``/proc/sys/kernel/sched_autogroup_enabled``), the scheduler first shares the CPU between the sessions'
groups, each of the same weight, and a process's niceness only counts inside its own group. A worker that
leads a session of its own (``workers/launch.py``, ``tradebus bench``, ``setsid``, a supervisor that starts
each program in its session) therefore competed at full weight with the order path's workers, RabbitMQ
and Redis whatever its niceness: two busy loops on one CPU in two sessions, one at ``nice`` 5, each got
half of it. The group has a niceness of its own (``/proc/<pid>/autogroup``); lowered by 5 as well, the
two loops got three quarters and one quarter, the weights of ``nice`` 0 and 5.

So a worker that leads its session sets its group's niceness as well as its own. One that does not (started
from a terminal, in the shell's session) leaves the group alone: it is shared with the shell and whatever
else the terminal runs, and inside it the process's niceness already counts (a script that ``exec``s the
worker from a session it leads, with jobs of its own still running, shares the group with them). Session
groups apply only to processes in the root cgroup: a container (each is a cgroup) is weighed by its cgroup,
which docker-compose.yml sets for the market-data workers (``cpu_shares``); a systemd service too, when
the cpu controller is enabled on its slice (``CPUWeight=``), else it is in the root cgroup and in a session
of its own, where the group's niceness is what counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: The scheduler's weight of each niceness from -20 to 19 (the kernel's ``sched_prio_to_weight``); 1024 is 0.
_WEIGHTS = (
    88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916,
    9548, 7620, 6100, 4904, 3906, 3121, 2501, 1991, 1586, 1277,
    1024, 820, 655, 526, 423, 335, 272, 215, 172, 137,
    110, 87, 70, 56, 45, 36, 29, 23, 18, 15,
)  # fmt: skip
_AUTOGROUP_ENABLED = Path("/proc/sys/kernel/sched_autogroup_enabled")
_OWN_GROUP = Path("/proc/self/autogroup")
#: The kernel lets an unprivileged process change a group's niceness once in 100 ms, any group's (EAGAIN
#: otherwise): workers started together try again at random moments, for up to this long.
_TRY_FOR, _AGAIN_AFTER = 3.0, 0.1


def weight(niceness: int) -> int:
    """The CPU weight of ``niceness`` (a container's ``cpu_shares`` that stands for it: 1024 is 0)."""
    return _WEIGHTS[max(-20, min(19, niceness)) + 20]


def groups_by_session() -> bool:
    """Whether the kernel shares the CPU between sessions' groups first (autogroup on)."""
    with contextlib.suppress(OSError, ValueError):
        return _AUTOGROUP_ENABLED.read_text().strip() == "1" and _OWN_GROUP.exists()
    return False


def group_niceness(pid: int | str = "self") -> int | None:
    """The niceness of ``pid``'s session group, or None without autogroup (``/autogroup-7 nice 5``)."""
    path = _OWN_GROUP if pid == "self" else Path(f"/proc/{pid}/autogroup")
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(path.read_text().split()[-1])
    return None


def lower_priority(increment: int) -> None:
    """Lower this process's CPU priority by ``increment``, and its session group's by as much when it leads
    the session and the kernel groups by session (the module's docstring)."""
    os.nice(increment)
    if os.getsid(0) != os.getpid() or not groups_by_session():
        return
    current = group_niceness()
    if current is None:  # in the kernel's default group (no session of its own after all): not ours
        return
    target = min(19, current + increment)
    deadline = time.monotonic() + _TRY_FOR
    while True:
        try:
            _OWN_GROUP.write_text(str(target))
            return
        except BlockingIOError as exc:  # another group's niceness changed in the last 100 ms
            refused: OSError = exc
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(deadline - now, _AGAIN_AFTER + random.uniform(0, _AGAIN_AFTER)))
        except OSError as exc:
            refused = exc
            break
    logger.warning(
        "this worker's session group keeps niceness %s (%s): it competes for the CPU at its full weight "
        "with other sessions' processes",
        current,
        refused,
    )
