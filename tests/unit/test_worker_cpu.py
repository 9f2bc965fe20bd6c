"""A market-data worker's lower CPU priority holds against other sessions' processes (workers/cpu.py).

The kernel's own scheduler, no broker: processes that call ``lower_priority`` as a market-data worker does,
in a session of their own (as workers/launch.py and ``tradebus bench`` start workers) or in their parent's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workers.cpu import group_niceness, groups_by_session, weight

autogroup = pytest.mark.skipif(
    not groups_by_session(), reason="this kernel does not group processes by session (no autogroup)"
)


def test_the_weights_are_the_kernels() -> None:
    assert weight(0) == 1024 and weight(5) == 335 and weight(19) == 15 and weight(-20) == 88761
    assert weight(40) == 15 and weight(-40) == 88761


def run(code: str, *, own_session: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=own_session,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=True,
    )


REPORT = """
    import os
    from workers.cpu import group_niceness, lower_priority
    lower_priority(5)
    print(os.nice(0), group_niceness())
"""


@autogroup
def test_a_worker_leading_its_session_lowers_its_groups_priority_with_its_own() -> None:
    assert run(REPORT, own_session=True).stdout.split() == [str(os.nice(0) + 5), "5"]


@autogroup
def test_a_worker_in_its_parents_session_leaves_the_shared_group_alone() -> None:
    before = group_niceness()
    try:
        assert run(REPORT, own_session=False).stdout.split() == [str(os.nice(0) + 5), str(before)]
        assert group_niceness() == before
    finally:  # had it changed, this session's group (the test run's, the terminal's) is put back
        with contextlib.suppress(OSError):
            if group_niceness() != before:
                Path("/proc/self/autogroup").write_text(str(before))


BURN = """
    import os, sys, time
    from workers.cpu import lower_priority
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if sys.argv[1] == "market data":
        lower_priority(5)
    print("ready", flush=True)
    sys.stdin.readline()  # both start burning together
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        pass
    print(os.times().user + os.times().system)
"""


@autogroup
def test_two_sessions_on_one_cpu_share_it_by_the_weights_of_their_niceness() -> None:
    """What a niced worker in a session of its own is for: another session's busy process gets ~3/4 of a
    CPU they share (1024 : 335), not half; two processes of default priority get half each (the control)."""

    def shares(kinds: tuple[str, str]) -> list[float]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(BURN), kind],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
                env=env,
            )
            for kind in kinds
        ]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return [float(proc.communicate(timeout=60)[0]) for proc in procs]

    order_path, market_data = shares(("order path", "market data"))
    assert market_data / order_path < 0.6, (order_path, market_data)  # 335 / 1024 ≈ 0.33 when alone
    first, second = shares(("order path", "order path"))
    assert 0.6 < first / second < 1.67, (first, second)
