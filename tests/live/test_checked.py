"""tradebus/checked.py against the real Redis: writes applied only while what was read holds still.

Every test writes under a key prefix of its own, deleted afterwards (tests/live/test_state.py's fixtures).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.live.test_state import client, k  # noqa: F401 - the fixtures
from tests.support.bus import SETTINGS
from tradebus import checked
from tradebus.errors import StateContention
from tradebus.retries import is_transient


def test_reads_reach_the_body_and_its_writes_apply_in_one_script(client: redis.Redis, k: Any) -> None:  # noqa: F811
    client.set(k("cash"), "100")
    client.hset(k("held"), "BTC", "2")
    client.zadd(k("seen"), {"m1": 5})

    def body(values: list[Any], writes: checked.Writes) -> str:
        cash, held, missing, seen = values
        writes.set(k("cash"), float(cash) - 10)
        writes.hset(k("held"), "BTC", float(held) + 1)
        writes.hdel(k("held"), "ETH")
        writes.set(k("record"), "done" if missing is None else "?")
        return f"{seen}"

    reads = [("get", k("cash")), ("hget", k("held"), "BTC"), ("get", k("record"))]
    assert checked.transaction(client, reads, body, also=[("zscore", k("seen"), "m1")]) == "5.0"
    assert client.get(k("cash")) == "90.0" and client.hget(k("held"), "BTC") == "3.0"
    assert client.get(k("record")) == "done"


def test_a_value_read_that_moves_before_the_writes_runs_everything_again(
    client: redis.Redis,  # noqa: F811
    k: Any,  # noqa: F811
) -> None:
    attempts: list[Any] = []

    def body(values: list[Any], writes: checked.Writes) -> Any:
        attempts.append(values)
        if len(attempts) == 1:
            client.set(k("record"), "first")  # a concurrent delivery wrote the record after our read
        if len(attempts) == 2:
            client.hset(k("prices"), "ETH", "9")  # another field of the hash: not what was read
        if values[0] is None:
            writes.set(k("record"), "second")
        return values[0]

    assert checked.transaction(client, [("get", k("record")), ("hget", k("prices"), "BTC")], body) == "first"
    assert [a[0] for a in attempts] == [None, "first"]
    assert client.get(k("record")) == "first"


def test_it_gives_up_after_max_attempts_as_a_transient_error(client: redis.Redis, k: Any) -> None:  # noqa: F811
    other = redis.Redis.from_url(SETTINGS.redis_url)

    def body(values: list[Any], writes: checked.Writes) -> None:
        other.incr(k("n"))  # another writer moves the value read before every write
        writes.set(k("written"), "1")

    with pytest.raises(StateContention, match="still contended after 3 attempts") as raised:
        checked.transaction(client, [("get", k("n"))], body, max_attempts=3)
    assert is_transient(raised.value)
    assert client.get(k("written")) is None and client.get(k("n")) == "3"
    other.close()


def test_only_string_reads_can_be_compared(client: redis.Redis, k: Any) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="compared reads"):
        checked.transaction(client, [("hgetall", k("h"))], lambda values, writes: None)
