"""Which failures a stage retries: the seed's policy applies to transient errors only."""

from __future__ import annotations

import pytest

from tradebus.errors import (
    PublishFailed,
    RequestRefused,
    RequestTimeout,
    SchemaViolation,
    Transient,
)
from tradebus.retries import SEED_POLICY, is_transient


def test_the_seed_policy_is_three_retries_after_5_10_and_20_seconds() -> None:
    assert SEED_POLICY.delays == (5.0, 10.0, 20.0)


def test_a_request_that_got_no_answer_is_transient_so_a_stage_raising_it_is_retried() -> None:
    # The answering service may be restarting: a stage waiting on it tries again after 5, 10, 20 s and
    # then dead-letters with max_retries (docs/reliability.md, "Retries").
    timeout = RequestTimeout("no answer to risk check c-1 within 2s")
    assert isinstance(timeout, TimeoutError)
    assert is_transient(timeout)


@pytest.mark.parametrize(
    "error",
    [
        RequestRefused("risk check c-1 was dead-lettered; see dlq.risk_checks"),
        SchemaViolation("payload.symbol: Field required"),
        ValueError("a bug in the stage"),
    ],
)
def test_a_refused_request_an_invalid_message_and_a_bug_are_not_retried(error: Exception) -> None:
    # A dead-lettered request was refused for good: asking again would be refused again.
    assert not is_transient(error)


@pytest.mark.parametrize("error", [Transient("later"), ConnectionError("reset"), PublishFailed("no confirm")])
def test_the_other_transient_failures_are_retried(error: Exception) -> None:
    assert is_transient(error)
