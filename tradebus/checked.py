"""Compare-and-write: an optimistic transaction in two Redis round trips, without WATCH.

``state.transaction`` with reads costs three round trips (WATCH, the reads, MULTI/EXEC). Here the reads go
in one pipeline, the body decides and queues its writes on a :class:`Writes`, and one server-side script
applies them only if every value read is still what it was (else everything runs again). That is as
safe as WATCH for a decision that rests on nothing but those values (a value that went A -> B -> A, or a
TTL that moved, passes the compare; for such a decision that changes nothing), and a write elsewhere in a
hash (another pair's price) no longer forces a retry. Reads are ``GET`` and ``HGET``, compared by value;
``also`` reads (a seen-id check, say) ride in the same round trip without being compared.

The writes must change at least one compared value (a fill writes the record it read as missing): then a
script that ran but whose reply was lost, run again by redis-py's retry, finds that value moved and
writes nothing twice. Callers here do (account.fill, letrade.paper.execute).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from tradebus.errors import NotReplicated, StateContention
from tradebus.replication import WAIT_GRACE, ReplicaWait

T = TypeVar("T")
#: One read: a client method's name and its arguments, e.g. ``("hget", key, field)``.
Read = tuple[str, ...]
#: What the compared reads may be: their values are strings (or missing), compared as such.
COMPARABLE = frozenset({"get", "hget"})
#: Attempts before a transaction that keeps losing to other writers gives up.
MAX_ATTEMPTS = 50

#: KEYS: each read's key, then each write's. ARGV: the number of reads; per read its command, its number of
#: arguments after the key, those, then whether a value was there ("1"/"0") and the value; then the number
#: of writes, and per write its command, its number of arguments after the key and those.
_APPLY = """
local i, k = 2, 1
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[i + 1])
  local value = redis.call(ARGV[i], KEYS[k], unpack(ARGV, i + 2, i + 1 + n))
  local present, expected = ARGV[i + 2 + n], ARGV[i + 3 + n]
  if (present == '1' and value ~= expected) or (present ~= '1' and value) then
    return 0
  end
  i, k = i + 4 + n, k + 1
end
local writes = tonumber(ARGV[i])
i = i + 1
for _ = 1, writes do
  local n = tonumber(ARGV[i + 1])
  redis.call(ARGV[i], KEYS[k], unpack(ARGV, i + 2, i + 1 + n))
  i, k = i + 2 + n, k + 1
end
return 1
"""
#: The script object (its SHA computed once); redis-py's Script sends EVALSHA, and the script itself
#: again when a server does not know it yet (a new or failed-over master).
_SCRIPT = Script(None, _APPLY.encode())  # type: ignore[arg-type]  # bytes: no client needed for the SHA


class Writes:
    """The writes a body queues (``set``, ``hset``, ``hdel``), applied together once the reads still hold.

    Shaped like the part of a redis-py pipeline in MULTI that bodies use (``multi`` is a no-op)."""

    explicit_transaction = True

    def __init__(self) -> None:
        self.commands: list[tuple[str, str, tuple[Any, ...]]] = []

    def multi(self) -> None:
        """Already collecting writes."""

    def set(self, key: str, value: Any, ex: int | None = None) -> None:
        """``SET key value [EX ex]``."""
        self.commands.append(("SET", key, (value,) if ex is None else (value, "EX", ex)))

    def expire(self, key: str, seconds: int) -> None:
        """``EXPIRE key seconds``."""
        self.commands.append(("EXPIRE", key, (seconds,)))

    def hset(self, key: str, field: str, value: Any) -> None:
        """``HSET key field value``."""
        self.commands.append(("HSET", key, (field, value)))

    def hsetnx(self, key: str, field: str, value: Any) -> None:
        """``HSETNX key field value``."""
        self.commands.append(("HSETNX", key, (field, value)))

    def hdel(self, key: str, field: str) -> None:
        """``HDEL key field``."""
        self.commands.append(("HDEL", key, (field,)))

    def hincrby(self, key: str, field: str, amount: int = 1) -> None:
        """``HINCRBY key field amount``."""
        self.commands.append(("HINCRBY", key, (field, amount)))

    def hincrbyfloat(self, key: str, field: str, amount: float) -> None:
        """``HINCRBYFLOAT key field amount``; ValueError for an amount that is not finite (Redis would fail
        the script there, after its earlier writes: a script does not roll back)."""
        if not math.isfinite(amount):
            raise ValueError(f"HINCRBYFLOAT {key} {field}: {amount!r} is not a finite amount")
        self.commands.append(("HINCRBYFLOAT", key, (field, repr(float(amount)))))

    def rpush(self, key: str, value: Any) -> None:
        """``RPUSH key value``."""
        self.commands.append(("RPUSH", key, (value,)))

    def ltrim(self, key: str, start: int, end: int) -> None:
        """``LTRIM key start end``."""
        self.commands.append(("LTRIM", key, (start, end)))


def _arguments(reads: Sequence[Read], values: Sequence[Any], writes: Writes) -> tuple[list[str], list[Any]]:
    keys: list[str] = []
    args: list[Any] = [len(reads)]
    for (name, key, *rest), value in zip(reads, values, strict=True):
        keys.append(key)
        args += [
            name.upper(),
            len(rest),
            *rest,
            "0" if value is None else "1",
            "" if value is None else value,
        ]
    args.append(len(writes.commands))
    for command, target, arguments in writes.commands:
        keys.append(target)
        args += [command, len(arguments), *arguments]
    return keys, args


def _apply(
    client: redis.Redis,
    reads: Sequence[Read],
    values: Sequence[Any],
    writes: Writes,
    wait: ReplicaWait | None,
) -> bool:
    keys, args = _arguments(reads, values, writes)
    if wait is None or wait.replicas <= 0:
        return bool(_SCRIPT(keys=keys, args=args, client=client))
    return _apply_and_wait(client, keys, args, wait, reads[0][1])


def _apply_and_wait(
    client: redis.Redis, keys: list[str], args: list[Any], wait: ReplicaWait, what: str
) -> bool:
    """The script, then (only when it applied) ``WAIT`` on the same connection, read with the WAIT's own
    timeout. On one connection taken from the pool by hand, as ``replication.WaitingPipeline`` does after
    EXEC: redis-py's own retries would run the script again on a new connection, and a WAIT there counts
    nothing of this connection's writes."""
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    try:
        connection.send_command("EVALSHA", _SCRIPT.sha, len(keys), *keys, *args)
        try:
            applied = connection.read_response()
        except NoScriptError:
            connection.send_command("EVAL", _APPLY, len(keys), *keys, *args)
            applied = connection.read_response()
        if not applied:
            return False
        acked: int | None = None
        try:
            # At least 1 ms: WAIT with a timeout of 0 blocks until the replicas answer, however long.
            connection.send_command("WAIT", wait.replicas, max(1, round(wait.timeout * 1000)))
            acked = int(connection.read_response(timeout=wait.timeout + WAIT_GRACE))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()  # the writes are on the master; how many replicas have them is unknown
    finally:
        pool.release(connection)
    if acked is None or acked < wait.replicas:
        got = "none answered WAIT" if acked is None else f"{acked} acknowledged"
        raise NotReplicated(
            f"{what} is written on the master, but of the {wait.replicas} replica(s) it needs, {got} "
            f"within {wait.timeout:g}s"
        )
    return True


def transaction(
    client: redis.Redis,
    reads: Sequence[Read],
    body: Callable[[list[Any], Writes], T],
    *,
    also: Sequence[Read] = (),
    max_attempts: int = MAX_ATTEMPTS,
    wait: ReplicaWait | None = None,
) -> T:
    """Read ``reads`` (and ``also``) in one round trip, run ``body(values, writes)``, and apply its writes in
    one more, only if every value of ``reads`` is unchanged; else all again, up to ``max_attempts`` times
    (then StateContention). A body that queues no write costs the reads alone. ``client`` must decode
    responses (``store.text_client()``): values are compared as the strings Redis holds.

    With ``wait`` (``wait.replicas`` > 0), the writes are followed on their connection by ``WAIT``, in the
    same round trip; fewer replicas than asked within ``wait.timeout`` raise NotReplicated, as
    ``state.transaction`` does (a body that finds its record already written should queue a write all the
    same, renewing its TTL, for the WAIT to cover it)."""
    if any(name not in COMPARABLE for name, *_ in reads):
        raise ValueError(f"compared reads are {', '.join(sorted(COMPARABLE))}: {reads!r}")
    for _ in range(max_attempts):
        reader = client.pipeline(transaction=False)
        for name, *rest in (*reads, *also):
            getattr(reader, name)(*rest)
        values: list[Any] = reader.execute()
        writes = Writes()
        result = body(values, writes)
        if not writes.commands or _apply(client, reads, values[: len(reads)], writes, wait):
            return result
    raise StateContention(f"{reads[0][1]} still contended after {max_attempts} attempts")
