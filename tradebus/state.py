"""State in Redis that concurrent deliveries share: bounded optimistic transactions and publish-once claims.

Several pool processes, and redeliveries of one message, write the same keys at once. These tools keep
that state whole, for any profile (this module knows no message type):

* :func:`transaction` reads, decides and writes under WATCH/MULTI, again when a watched key moved, and
  gives up after ``max_attempts`` with :class:`~tradebus.errors.StateContention`, which the stage retries
  later as a transient failure; with a :class:`~tradebus.replication.ReplicaWait`, it then waits for
  replicas to have the write, or raises :class:`~tradebus.errors.NotReplicated` (also retried);
* :func:`publish_once` publishes what an outcome (a decision, a fill: the key its record is stored under)
  produced from one delivery at a time: it :func:`claim` s ``{outcome}:publishing`` for the delivering
  message's id, publishes, and marks ``{outcome}:published`` (:func:`mark_published`). A claim lapses when
  its holder dies; a later delivery of the same message takes it over at once (:func:`hold`);
* :func:`put_at` keeps a bounded time series in a sorted set, where a point arriving again or late
  replaces itself or slots into place; :func:`put_many_at` does it for many points in one command (a
  batch of candles: one server-side script instead of three commands per point);
* :func:`put_newest` keeps the latest value per field by the time it carries (market time, not arrival),
  and :func:`count_once` counts an event once however often it is delivered: market-data stages stay
  idempotent when a batch is redelivered after newer deliveries were handled.

Clients are passed in, so callers choose one that decodes responses (``store.text_client()``) or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import WatchError

from tradebus.errors import NotReplicated, StateContention
from tradebus.replication import ReplicaWait, WaitingPipeline

T = TypeVar("T")
M = TypeVar("M")
#: One read: a client method's name and its arguments, e.g. ``("hget", key, field)``.
Read = tuple[str, ...]
#: Attempts before a transaction that keeps losing to other writers gives up.
MAX_ATTEMPTS = 50


def read(client: redis.Redis, reads: Sequence[Read]) -> list[Any]:
    """Run ``reads`` in one round trip (a pipeline outside any transaction); their values in order."""
    reader = client.pipeline(transaction=False)
    for name, *args in reads:
        getattr(reader, name)(*args)
    values: list[Any] = reader.execute()
    return values


@overload
def transaction(
    client: redis.Redis,
    watched: Sequence[str],
    body: Callable[[Pipeline], T],
    *,
    max_attempts: int = MAX_ATTEMPTS,
    wait: ReplicaWait | None = None,
) -> T: ...


@overload
def transaction(
    client: redis.Redis,
    watched: Sequence[str],
    body: Callable[[list[Any], Pipeline], T],
    *,
    reads: Sequence[Read],
    max_attempts: int = MAX_ATTEMPTS,
    wait: ReplicaWait | None = None,
) -> T: ...


def transaction(
    client: redis.Redis,
    watched: Sequence[str],
    body: Callable[..., T],
    *,
    reads: Sequence[Read] | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    wait: ReplicaWait | None = None,
) -> T:
    """Run ``body`` as one optimistic transaction on ``watched``; returns what ``body`` returns.

    Without ``reads``, ``body(pipe)`` reads through the watching pipeline (each read a round trip), then
    calls ``pipe.multi()`` and queues its writes. With ``reads``, they run after the WATCH in one pipeline
    on another connection (a change after the WATCH still fails the EXEC, so they cannot be stale) and
    ``body(values, pipe)`` only queues writes: three round trips however many reads. When a watched key
    moved before the EXEC, everything runs again; after ``max_attempts`` it raises StateContention.

    With ``wait`` (``wait.replicas`` > 0), the EXEC is followed on its connection by ``WAIT``; fewer
    replicas than asked within ``wait.timeout`` raise NotReplicated: the write is on the master, maybe not
    on the replica a failover would promote, so it must not be reported as done. WAIT covers the writes of
    its connection and everything the master had before them: a body that finds its record already written
    (a redelivery) should queue a write all the same (renew the record's TTL) for the WAIT to cover it.
    """
    waiting = WaitingPipeline(client, wait) if wait is not None and wait.replicas > 0 else None
    with waiting or client.pipeline() as pipe:
        for _ in range(max_attempts):
            try:
                pipe.watch(*watched)  # type: ignore[no-untyped-call]
                if reads is None:
                    result = body(pipe)
                else:
                    values = read(client, reads)
                    pipe.multi()
                    result = body(values, pipe)
                pipe.execute()
            except WatchError:
                continue
            if waiting is not None and (waiting.acked or 0) < (needed := waiting.replica_wait).replicas:
                acked = "none answered WAIT" if waiting.acked is None else f"{waiting.acked} acknowledged"
                raise NotReplicated(
                    f"{watched[0]} is written on the master, but of the {needed.replicas} replica(s) it "
                    f"needs, {acked} within {needed.timeout:g}s"
                )
            return result
    raise StateContention(f"{', '.join(watched)} still contended after {max_attempts} attempts")


#: hold, server side: KEYS[1] the hold, ARGV[1] the holder, ARGV[2] seconds, ARGV[3] "1" to renew.
#: With KEYS[2] (claim), nobody holds anything once KEYS[2] (``{outcome}:published``) exists.
_HOLD = """
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


#: The script object (its SHA computed once); redis-py's Script sends EVALSHA, and the script itself
#: again when a server does not know it yet (a new or failed-over master).
_hold_script = Script(None, _HOLD.encode())  # type: ignore[arg-type]  # bytes: no client needed for the SHA


def _hold(client: redis.Redis, keys: list[str], holder: str, seconds: int, renew: bool) -> bool:
    # One round trip, atomic where the commands it replaces (SET NX, GET, EXPIRE, and EXISTS for a claim)
    # were two to four and could interleave with another holder's.
    return bool(_hold_script(keys=keys, args=[holder, seconds, "1" if renew else "0"], client=client))


def hold(client: redis.Redis, key: str, holder: str, seconds: int, *, renew: bool = True) -> bool:
    """Whether ``holder`` holds ``key`` now: it took it (nobody held it), or held it already.

    The hold lapses after ``seconds``; ``renew`` restarts that time when the holder asks again.
    """
    return _hold(client, [key], holder, seconds, renew)


def claim(client: redis.Redis, outcome: str, claimant: str, seconds: int) -> bool:
    """Whether the delivery of message ``claimant`` should publish what ``outcome`` produced.

    Not when it is published already, nor while another message is publishing it (its claim lapses after
    ``seconds``). An earlier attempt of the same message (a worker killed while publishing, a retry after
    a failed publish) hands its claim on: RabbitMQ never has one message in two deliveries at once, so the
    holder with the same id is a dead attempt, and waiting for it would publish nothing. One round trip.
    """
    return _hold(client, [f"{outcome}:publishing", f"{outcome}:published"], claimant, seconds, True)


def mark_published(client: redis.Redis, outcome: str, keep_seconds: int) -> None:
    """Note that what ``outcome`` produced reached the broker: for ``keep_seconds``, nobody publishes it."""
    pipe = client.pipeline(transaction=False)
    pipe.set(f"{outcome}:published", "1", ex=keep_seconds)
    pipe.delete(f"{outcome}:publishing")
    pipe.execute()


def publish_once(
    client: redis.Redis,
    outcome: str,
    messages: Iterable[M],
    claimant: str,
    publish: Callable[[M], object],
    *,
    claim_seconds: int,
    keep_seconds: int,
) -> bool:
    """Publish ``messages`` (what ``outcome`` produced) with ``publish`` unless another delivery did or is
    doing it (:func:`claim`); then mark them published. Whether this delivery published them."""
    if not claim(client, outcome, claimant, claim_seconds):
        return False
    for message in messages:
        publish(message)
    mark_published(client, outcome, keep_seconds)
    return True


def put_at(pipe: Pipeline, key: str, member: str, score: float, keep: int) -> None:
    """Queue on ``pipe``: ``member`` at ``score`` in the sorted set ``key``, replacing what was at that
    score, and only the ``keep`` highest scores kept."""
    pipe.zremrangebyscore(key, score, score)
    pipe.zadd(key, {member: score})
    pipe.zremrangebyrank(key, 0, -(keep + 1))


#: put_at for many points, server side: KEYS[1] the set, ARGV[1] how many to keep, then score, member pairs.
_PUT_MANY = """
for i = 2, #ARGV, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
return 1
"""


def put_many_at(pipe: Pipeline, key: str, points: Iterable[tuple[float, str]], keep: int) -> None:
    """Queue on ``pipe``: :func:`put_at` for each ``(score, member)`` in order, as one script call."""
    args: list[Any] = [keep]
    for score, member in points:
        args += [repr(float(score)), member]
    if len(args) > 1:
        pipe.eval(_PUT_MANY, 1, key, *args)


#: put_newest, server side: KEYS[1] the values hash, KEYS[2] the times hash, then field, time, value triples.
_PUT_NEWEST = """
for i = 1, #ARGV, 3 do
  local known = redis.call('HGET', KEYS[2], ARGV[i])
  if not known or tonumber(known) <= tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


def put_newest(pipe: Pipeline, key: str, times: str, entries: Iterable[tuple[str, float, str]]) -> None:
    """Queue on ``pipe``: each ``(field, time, value)`` into the hash ``key`` unless the hash ``times``
    holds a later time for that field, as one script call. A late or redelivered older value never
    overwrites a newer one, whichever process wrote it; entries for one field apply in order."""
    args: list[Any] = []
    for field, at, value in entries:
        args += [field, repr(float(at)), value]
    if args:
        pipe.eval(_PUT_NEWEST, 2, key, times, *args)


#: count_once, server side: KEYS[1] the marker, KEYS[2] the counter hash; ARGV the TTL and the field.
_COUNT_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return false
"""


def count_once(pipe: Pipeline, marker: str, ttl_seconds: int, counter: str, field: str) -> None:
    """Queue on ``pipe``: add one to ``field`` of the hash ``counter`` unless ``marker`` was set in the
    last ``ttl_seconds`` (the same event delivered again), setting it, as one script call."""
    pipe.eval(_COUNT_ONCE, 2, marker, counter, ttl_seconds, field)
