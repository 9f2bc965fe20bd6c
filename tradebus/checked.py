"""Compare-and-write: an optimistic transaction in two Redis round trips, without WATCH.

``state.transaction`` with reads costs three round trips (WATCH, the reads, MULTI/EXEC). Here the reads go
in one pipeline, the body decides and queues its writes on a :class:`Writes`, and one server-side script
applies them only if every value read is still what it was (else everything runs again): the decision
rests on nothing but those values, so it is as safe as a WATCH on their keys, and a write elsewhere in a
watched hash (another pair's price) no longer forces a retry. Reads are ``GET`` and ``HGET``, compared by
value; ``also`` reads (a seen-id check, say) ride in the same round trip without being compared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from tradebus.errors import NotReplicated, StateContention
from tradebus.replication import ReplicaWait

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
        """``HINCRBYFLOAT key field amount``."""
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
    # WAIT counts the replicas that have this connection's writes: the script and the WAIT go down one
    # connection, in one round trip (a pipeline outside MULTI; EVALSHA, and the script itself only when
    # the server does not know it, as redis-py's Script does).
    pipe = client.pipeline(transaction=False)
    pipe.evalsha(_SCRIPT.sha, len(keys), *keys, *args)
    pipe.execute_command("WAIT", wait.replicas, max(1, round(wait.timeout * 1000)))  # type: ignore[no-untyped-call]
    applied, acked = pipe.execute(raise_on_error=False)
    if isinstance(applied, NoScriptError):
        client.script_load(_APPLY)
        return _apply(client, reads, values, writes, wait)
    if isinstance(applied, Exception):
        raise applied
    if not applied:
        return False
    if isinstance(acked, Exception) or int(acked) < wait.replicas:
        got = f"{acked}" if isinstance(acked, Exception) else f"{acked} acknowledged"
        raise NotReplicated(
            f"{reads[0][1]} is written on the master, but of the {wait.replicas} replica(s) it needs, "
            f"{got} within {wait.timeout:g}s"
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
