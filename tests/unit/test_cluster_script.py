"""scripts/cluster.sh's own bookkeeping, without starting RabbitMQ: the script is sourced (it then only
defines its functions) and its functions run against a directory of this test's own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"


def _bash(directory: Path, code: str, redis_script: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` after sourcing the script, its cluster in ``directory``."""
    prelude = f'source "{SCRIPT}"; set +e; REDIS_SCRIPT="{redis_script or "/nonexistent"}"\n'
    env = {**os.environ, "TRADEBUS_CLUSTER_DIR": str(directory)}
    return subprocess.run(
        ["bash", "-c", prelude + code], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cluster"
    (directory / "rabbit1").mkdir(parents=True)
    return directory


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not ours (what a reused pid may be)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_a_failing_redis_script_fails_the_cluster_script_and_a_working_one_passes_its_exports_on(
    tmp_path: Path, cluster_dir: Path
) -> None:
    failing = tmp_path / "failing.sh"
    failing.write_text("echo \"export TRADEBUS_REDIS_SENTINELS='x'\"; echo 'not an export'; exit 3\n")
    assert "rc=3" in _bash(cluster_dir, 'redis start; echo "rc=$?"', failing).stdout
    working = tmp_path / "working.sh"
    working.write_text("echo \"export TRADEBUS_REDIS_SENTINELS='x'\"; echo 'not an export'\n")
    out = _bash(cluster_dir, 'redis start; echo "rc=$?"', working).stdout
    assert out.splitlines() == ["export TRADEBUS_REDIS_SENTINELS='x'", "rc=0"]


def test_a_pid_file_naming_a_process_not_ours_is_neither_trusted_nor_killed(
    cluster_dir: Path, stranger: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    (cluster_dir / "rabbit1" / "pid").write_text(f"{stranger.pid}\n")
    (cluster_dir / "rabbit1" / "wrapper.pid").write_text(f"{stranger.pid}\n")
    done = _bash(cluster_dir, 'alive 1 && echo alive; echo "beam=$(beam_pid 1)"; cmd_stop')
    assert done.returncode == 0, done.stderr
    assert "alive" not in done.stdout and "beam=\n" in done.stdout
    assert stranger.poll() is None, "stop killed a process that was not its own"
    assert not cluster_dir.exists()


def test_a_beam_of_ours_is_alive_and_stop_kills_it(cluster_dir: Path) -> None:
    """Positive control: a process with node 1's environment and a beam command line counts, and dies."""
    pid_file = cluster_dir / "rabbit1" / "pid"
    beam = subprocess.Popen(
        ["bash", "-c", "exec -a beam.smp sleep 60"], env={**os.environ, "RABBITMQ_PID_FILE": str(pid_file)}
    )
    try:
        pid_file.write_text(f"{beam.pid}\n")
        done = _bash(cluster_dir, 'alive 1 && echo alive; echo "beam=$(beam_pid 1)"; cmd_stop')
        assert done.returncode == 0, done.stderr
        assert "alive" in done.stdout and f"beam={beam.pid}" in done.stdout
        assert beam.wait(timeout=10) == -9
    finally:
        beam.kill()


def test_a_cluster_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    done = _bash(link, "write_files")
    assert done.returncode != 0 and "is not a directory of" in done.stderr
    assert not (elsewhere / ".erlang.cookie").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user's needs root")
def test_a_cluster_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / ".erlang.cookie").write_text("their cookie")
    os.chown(theirs, 65534, 65534)
    done = _bash(theirs, "write_files")
    assert done.returncode != 0 and "is not a directory of" in done.stderr


def test_a_node_whose_start_is_under_way_is_not_started_again(cluster_dir: Path, tmp_path: Path) -> None:
    """Two `start`s at once: the second finds node 1's wrapper running (its pid file not written yet) and
    launches nothing, which would fail on the taken ports and remove the first one's pid file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launched = tmp_path / "launched"
    (bin_dir / "rabbitmq-server").write_text(f"#!/bin/sh\ntouch {launched}\n")
    (bin_dir / "rabbitmq-server").chmod(0o755)
    wrapper = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, "RABBITMQ_PID_FILE": str(cluster_dir / "rabbit1" / "pid")}
    )
    try:
        (cluster_dir / "rabbit1" / "wrapper.pid").write_text(f"{wrapper.pid}\n")
        (cluster_dir / "rabbit1" / "log").mkdir()
        code = f'RABBIT_BIN="{bin_dir}"; port_open() {{ return 1; }}; start_node 1; echo "rc=$?"; wait'
        done = _bash(cluster_dir, code)
        assert "rc=0" in done.stdout, done.stderr
        assert not launched.exists(), "started node 1 a second time"
        # Positive control: with no start under way, it launches.
        wrapper.kill()
        wrapper.wait()
        done = _bash(cluster_dir, code)
        assert "rc=0" in done.stdout and launched.exists(), done.stderr
    finally:
        wrapper.kill()
