"""``tradebus topology declare`` when a cluster node is down: what it could not declare is named, and the
exit code says so (the declaring itself is tests/live/test_cluster_live.py's, on the cluster)."""

from __future__ import annotations

import contextlib

import pytest
from click.testing import CliRunner

from tradebus import topology
from tradebus.ops import cli
from tradebus.ops.exits import ExitCode


@pytest.mark.parametrize(
    ("skipped", "code"), [(["market_data", "system_events"], ExitCode.QUEUES_SKIPPED), ([], ExitCode.OK)]
)
def test_declare_names_the_queues_it_skipped_and_exits_with_its_own_code(
    skipped: list[str], code: ExitCode, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = topology.Declared([("mastertrade.market", "old.#", "market_data")], skipped)
    monkeypatch.setattr(cli, "_connection", lambda: contextlib.nullcontext(object()))
    monkeypatch.setattr(topology, "check_and_declare", lambda *_: declared)
    result = CliRunner().invoke(cli.main, ["topology", "declare"])
    assert result.exit_code == code, result.output
    assert "warning: binding mastertrade.market 'old.#' -> market_data" in result.stderr
    if skipped:
        assert "node is down: market_data, system_events" in result.stderr
        assert "topology declared" not in result.stdout
    else:  # positive control
        assert result.stdout == "topology declared\n"
