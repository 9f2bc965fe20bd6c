"""A market-data worker's lower CPU priority holds against other sessions' processes (workers/cpu.py).

The kernel's own scheduler, no broker: processes that call ``lower_priority`` as a market-data worker does,
in a session of their own (as workers/launch.py and ``tradebus bench`` start workers) or in their parent's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workers import cpu
from workers.cpu import groups_by_session, weight

autogroup = pytest.mark.skipif(
    not groups_by_session(), reason="this kernel does not group processes by session (no autogroup)"
)


def test_the_weights_are_the_kernels() -> None:
    assert weight(0) == 1024 and weight(5) == 335 and weight(19) == 15 and weight(-20) == 88761
    assert weight(40) == 15 and weight(-40) == 88761


def run(code: str, *args: str, own_session: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
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


def expected_niceness() -> str:
    """This process's niceness lowered by 5, as the kernel caps it."""
    return str(min(19, os.nice(0) + 5))


@autogroup
def test_a_worker_leading_its_session_lowers_its_groups_priority_with_its_own() -> None:
    # A new session's group starts at niceness 0, whatever the parent's.
    assert run(REPORT, own_session=True).stdout.split() == [expected_niceness(), "5"]


NON_LEADER = """
    import subprocess, sys
    from workers.cpu import group_niceness
    before = group_niceness()
    worker = subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True, check=True)
    print(before, group_niceness(), worker.stdout.strip())
"""


@autogroup
def test_a_worker_in_its_parents_session_leaves_the_shared_group_alone() -> None:
    # The parent leads a session of its own, so the group is one this test can read (the test run's own may
    # be the kernel's default, which has none: a CI runner's) and nobody else's when it goes wrong.
    parent, after, worker, worker_group = run(
        NON_LEADER, textwrap.dedent(REPORT), own_session=True
    ).stdout.split()
    assert (parent, worker) == ("0", expected_niceness())
    assert after == worker_group == "0", "the worker lowered the group its parent's session shares"


class FakeGroup:
    """``/proc/self/autogroup`` answering each write with the next of ``answers`` (None: written)."""

    def __init__(self, answers: list[OSError | None], niceness: int = 0) -> None:
        self.answers, self.niceness, self.writes = answers, niceness, 0

    def read_text(self) -> str:
        return f"/autogroup-7 nice {self.niceness}"

    def write_text(self, text: str) -> None:
        self.writes += 1
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer
        self.niceness = int(text)


@pytest.fixture
def leader(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """This process as a session leader whose kernel groups by session, without changing its niceness;
    time.sleep advances a fake clock (returned: the sleeps)."""
    clock, sleeps = [0.0], []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(cpu.os, "nice", lambda increment: increment)
    monkeypatch.setattr(cpu.os, "getsid", lambda pid: 42)
    monkeypatch.setattr(cpu.os, "getpid", lambda: 42)
    monkeypatch.setattr(cpu, "groups_by_session", lambda: True)
    monkeypatch.setattr(cpu.time, "sleep", sleep)
    monkeypatch.setattr(cpu.time, "monotonic", lambda: clock[0])
    return sleeps


@pytest.fixture
def logged_warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the module says in its log as warnings, read from its logger's call: whatever logging set-up
    an earlier test in this process left (caplog saw nothing in one CI run)."""
    said: list[str] = []
    monkeypatch.setattr(cpu.logger, "warning", lambda message, *args: said.append(message % args))
    return said


def test_the_group_is_lowered_by_the_increment_from_where_it_was(
    leader: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    group = FakeGroup([None, None], niceness=3)
    monkeypatch.setattr(cpu, "_OWN_GROUP", group)
    cpu.lower_priority(5)
    assert group.niceness == 8
    group.niceness = 17
    cpu.lower_priority(5)
    assert group.niceness == 19  # the kernel's lowest


def test_a_group_change_the_kernel_refuses_for_now_is_tried_again_until_it_is_taken(
    leader: list[float], monkeypatch: pytest.MonkeyPatch, logged_warnings: list[str]
) -> None:
    group = FakeGroup([BlockingIOError(), BlockingIOError(), None])
    monkeypatch.setattr(cpu, "_OWN_GROUP", group)
    cpu.lower_priority(5)
    assert (group.niceness, group.writes, len(leader)) == (5, 3, 2)
    assert all(0.1 <= s <= 0.2 for s in leader), leader  # at random moments: workers started together
    assert logged_warnings == []


def test_a_refused_group_change_is_said_in_the_log_and_the_worker_runs_on(
    leader: list[float], monkeypatch: pytest.MonkeyPatch, logged_warnings: list[str]
) -> None:
    group = FakeGroup([PermissionError(1, "Operation not permitted")])
    monkeypatch.setattr(cpu, "_OWN_GROUP", group)
    cpu.lower_priority(5)
    assert (group.niceness, group.writes, leader) == (0, 1, [])
    assert (
        len(logged_warnings) == 1
        and "keeps niceness 0" in logged_warnings[0]
        and "not permitted" in logged_warnings[0]
    )
    group = FakeGroup([BlockingIOError()] * 100)
    monkeypatch.setattr(cpu, "_OWN_GROUP", group)
    cpu.lower_priority(5)
    assert group.niceness == 0 and sum(leader) <= 3.0 and 10 < group.writes < 31, (group.writes, leader)
    assert len(logged_warnings) == 2 and "keeps niceness 0" in logged_warnings[1]


def test_a_process_that_does_not_lead_its_session_never_writes_the_group(
    leader: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    group = FakeGroup([])
    monkeypatch.setattr(cpu, "_OWN_GROUP", group)
    monkeypatch.setattr(cpu.os, "getpid", lambda: 43)
    cpu.lower_priority(5)
    assert group.writes == 0


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
    assert market_data / order_path < 0.6, (order_path, market_data)  # 335 / 1024 ≈ 0.33 when they are alone
    first, second = shares(("order path", "order path"))
    assert 0.6 < first / second < 1.67, (first, second)
