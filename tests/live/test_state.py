"""tradebus/state.py against the real Redis: bounded transactions, and publish-once claims handed over.

Every test writes under a key prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.client import Pipeline

from tests.support.bus import REQUIRE_BROKER, SETTINGS
from tradebus import state, store
from tradebus.errors import StateContention
from tradebus.retries import is_transient


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A decoding client of the real Redis."""
    text = redis.Redis.from_url(SETTINGS.redis_url, socket_connect_timeout=2, decode_responses=True)
    try:
        text.ping()
    except redis.ConnectionError as exc:
        if REQUIRE_BROKER:
            pytest.fail(f"Redis is not reachable: {exc}")
        pytest.skip(f"Redis is not reachable: {exc}")
    yield text
    text.close()


@pytest.fixture
def k(client: redis.Redis) -> Iterator[Any]:
    """Makes keys under a prefix of this test's own; deletes them afterwards."""
    prefix = f"tradebus-test-state-{uuid.uuid4().hex[:8]}"
    yield lambda name: f"{prefix}:{name}"
    for name in client.scan_iter(match=f"{prefix}:*"):
        client.delete(name)


def test_transaction_with_reads_hands_their_values_to_the_body_and_writes_once(
    client: redis.Redis, k: Any
) -> None:
    client.set(k("cash"), "100")
    client.hset(k("holdings"), "BTC", "2")

    def body(values: list[Any], pipe: Pipeline) -> float:
        cash, holdings = values
        pipe.set(k("cash"), float(cash) - 10)
        return float(holdings["BTC"])

    reads = [("get", k("cash")), ("hgetall", k("holdings"))]
    assert state.transaction(client, [k("cash")], body, reads=reads) == 2.0
    assert client.get(k("cash")) == "90.0"


def test_transaction_reading_in_the_pipeline_queues_its_writes_after_multi(
    client: redis.Redis, k: Any
) -> None:
    def body(pipe: Pipeline) -> int:
        seen = int(pipe.get(k("n")) or 0)
        pipe.multi()
        pipe.set(k("n"), seen + 1)
        return seen + 1

    assert [state.transaction(client, [k("n")], body) for _ in range(3)] == [1, 2, 3]


def test_transaction_gives_up_after_max_attempts_conflicting_writes_as_a_transient_error(
    client: redis.Redis, k: Any
) -> None:
    other = redis.Redis.from_url(SETTINGS.redis_url)
    attempts = []

    def body(values: list[Any], pipe: Pipeline) -> None:
        attempts.append(values[0])
        other.incr(k("n"))  # another writer moves the watched key before every EXEC
        pipe.set(k("written"), "1")

    with pytest.raises(StateContention, match="still contended after 4 attempts") as raised:
        state.transaction(client, [k("n")], body, reads=[("get", k("n"))], max_attempts=4)
    assert is_transient(raised.value)
    assert attempts == [None, "1", "2", "3"]
    assert client.get(k("written")) is None
    other.close()


def test_transaction_runs_again_until_the_watched_keys_hold_still(client: redis.Redis, k: Any) -> None:
    attempts = []

    def body(pipe: Pipeline) -> int:
        attempts.append(1)
        if len(attempts) <= 2:
            client.incr(k("n"))  # a conflicting write on another connection
        value = int(pipe.get(k("n")) or 0)
        pipe.multi()
        pipe.set(k("seen"), value)
        return value

    assert state.transaction(client, [k("n")], body, max_attempts=3) == 2
    assert len(attempts) == 3 and client.get(k("seen")) == "2"


def test_a_redelivery_takes_over_the_claim_of_its_dead_attempt_and_nobody_else_can(
    client: redis.Redis, k: Any
) -> None:
    outcome = k("fills:req-1")
    assert state.claim(client, outcome, "message-1", 30)
    client.expire(f"{outcome}:publishing", 5)
    assert not state.claim(client, outcome, "message-2", 30)
    # The same message again: its earlier delivery died while publishing; the claim is renewed for it.
    assert state.claim(client, outcome, "message-1", 30)
    assert client.ttl(f"{outcome}:publishing") > 5
    state.mark_published(client, outcome, 60)
    assert client.get(f"{outcome}:publishing") is None
    assert not state.claim(client, outcome, "message-1", 30)
    assert not state.claim(client, outcome, "message-2", 30)


def test_publish_once_publishes_through_the_callable_once(client: redis.Redis, k: Any) -> None:
    published: list[str] = []
    outcome = k("decisions:abc")

    def once(claimant: str) -> bool:
        messages = ["order", "breach"]
        return state.publish_once(
            client, outcome, messages, claimant, published.append, claim_seconds=30, keep_seconds=60
        )

    assert once("message-1")
    assert not once("message-1") and not once("message-2")
    assert published == ["order", "breach"]
    assert 0 < client.ttl(f"{outcome}:published") <= 60


def test_publish_once_leaves_an_outcome_another_message_is_publishing(client: redis.Redis, k: Any) -> None:
    published: list[str] = []
    outcome = k("fills:req-2")
    assert state.claim(client, outcome, "message-1", 30)
    assert not state.publish_once(
        client, outcome, ["update"], "message-2", published.append, claim_seconds=30, keep_seconds=60
    )
    assert published == [] and client.get(f"{outcome}:published") is None


def test_a_hold_without_renewal_keeps_its_first_lapse(client: redis.Redis, k: Any) -> None:
    assert state.hold(client, k("pending"), "signal-1", 100, renew=False)
    client.expire(k("pending"), 5)
    assert state.hold(client, k("pending"), "signal-1", 100, renew=False)
    assert client.ttl(k("pending")) <= 5
    assert not state.hold(client, k("pending"), "signal-2", 100, renew=False)


def test_claims_work_on_a_client_that_does_not_decode(k: Any, client: redis.Redis) -> None:
    raw = redis.Redis.from_url(SETTINGS.redis_url)
    assert state.claim(raw, k("out"), "message-1", 30)
    assert state.claim(raw, k("out"), "message-1", 30)
    assert not state.claim(raw, k("out"), "message-2", 30)
    raw.close()


def test_the_text_client_decodes_what_the_client_reads(k: Any, client: redis.Redis) -> None:
    store.client().set(k("t"), "café")
    assert store.text_client().get(k("t")) == "café"
    assert store.client().get(k("t")) == "café".encode()


def test_a_point_put_again_replaces_itself_a_late_one_slots_in_and_only_the_newest_are_kept(
    client: redis.Redis, k: Any
) -> None:
    def put(member: str, score: float) -> None:
        pipe = client.pipeline()
        state.put_at(pipe, k("series"), member, score, keep=3)
        pipe.execute()

    for minute in (1, 2, 4):
        put(f"close-{minute}", minute)
    put("close-2-again", 2)
    put("close-3-late", 3)
    assert client.zrange(k("series"), 0, -1, withscores=True) == [
        ("close-2-again", 2.0),
        ("close-3-late", 3.0),
        ("close-4", 4.0),
    ]


def test_many_points_put_in_one_script_end_as_put_one_by_one(client: redis.Redis, k: Any) -> None:
    points = [(1.0, "close-1"), (2.0, "close-2"), (4.0, "close-4"), (2.0, "close-2-again"), (3.0, "late")]
    for name, many in (("one-by-one", False), ("at-once", True)):
        pipe = client.pipeline()
        if many:
            state.put_many_at(pipe, k(name), points, keep=3)
        else:
            for score, member in points:
                state.put_at(pipe, k(name), member, score, keep=3)
        pipe.execute()
    assert client.zrange(k("at-once"), 0, -1, withscores=True) == [
        ("close-2-again", 2.0),
        ("late", 3.0),
        ("close-4", 4.0),
    ]
    assert client.zrange(k("at-once"), 0, -1) == client.zrange(k("one-by-one"), 0, -1)


def test_the_state_module_imports_no_profile() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(state.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    tradebus = {m for m in imported if m and (m.startswith("tradebus") or m.startswith("tasks"))}
    assert tradebus == {"tradebus.errors", "tradebus.replication"}
