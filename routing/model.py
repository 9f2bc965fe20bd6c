"""The topology as one value: what a profile declares, routes and runs, built by ``routing.build``.

A :class:`Topology` holds a bus's exchanges, queues (with their arguments and bindings), policies, message
routes, worker pools and dead-letter naming. Each profile builds one (``routing.mastertrade.build``,
``routing.letrade.build``) from :class:`TopologyOptions`; the app, the workers, the CLI and the tests are
handed that value. Nothing here reads the environment or imports the app.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

from kombu import Exchange, Queue

from routing.match import ALTERNATE_EXCHANGE, ExchangeBinding, Hop, Router, topic_matches

#: Queue types a topology may be built with: the single-node topology (``classic``), or the critical queues
#: as quorum queues replicated over three nodes (``quorum``, docs/topology.md "Quorum queues").
CLASSIC = "classic"
QUORUM = "quorum"
QUEUE_TYPES: tuple[str, ...] = (CLASSIC, QUORUM)
#: The declared argument that makes a queue a quorum queue.
QUEUE_TYPE_ARGUMENT = "x-queue-type"
#: Above an operator's catch-all policies (priority 0); an operator policy that must win over ours has to
#: repeat our keys.
POLICY_PRIORITY = 10
#: A shard's binding key on its consistent-hash exchange: its weight, one bucket (bucket i is shard i).
SHARD_WEIGHT = "1"
#: The most shards a queue may be split into (each is a queue, a DLQ, two policies and a pool).
MAX_SHARDS = 64
#: A policy's ``apply-to``: queues only, or exchanges only.
QUEUES = "queues"
EXCHANGES = "exchanges"


@dataclass(frozen=True)
class TopologyOptions:
    """How a profile's topology is built: the variants later features choose between.

    ``queue_type`` is the type of the critical queues (``classic`` or ``quorum``) and ``market_data_shards``
    the number of queues market data for the strategy is spread over by symbol (0: the seed's one queue;
    MasterTrade only: Letrade's build ignores it, docs/topology.md "Sharding by symbol"). A value no
    profile builds yet is refused here, at the edge, rather than silently ignored.
    """

    queue_type: str = CLASSIC
    market_data_shards: int = 0

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue type {self.queue_type!r}: built today: {', '.join(QUEUE_TYPES)}")
        if not 0 <= self.market_data_shards <= MAX_SHARDS:
            raise ValueError(f"market_data_shards must be between 0 (off) and {MAX_SHARDS}")


@dataclass(frozen=True)
class Shards:
    """A queue split into shard queues behind a consistent-hash exchange: one shard per symbol.

    ``queue`` is the queue the shards replace (its stage runs on each of them), ``exchange`` the
    ``x-consistent-hash`` exchange bound to each shard with weight 1, in order, so bucket ``i`` is shard
    ``i``; it hashes the header ``header`` (routing/consistent_hash.py).
    """

    queue: str
    exchange: str
    header: str
    queues: tuple[str, ...]


def delay_word(delay: float) -> str:
    """The routing-key word naming a retry delay (``5s``): the delay queue bound to it holds the retry."""
    return f"{round(delay * 1000)}ms" if delay != int(delay) else f"{int(delay)}s"


@dataclass(frozen=True)
class Route:
    """Where a message type is published: an exchange and a routing-key template."""

    exchange: str
    template: str

    @cached_property
    def fields(self) -> tuple[str, ...]:
        """The payload fields the template reads, in order (computed once: every publish asks)."""
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.template) if name)

    @cached_property
    def pattern(self) -> str:
        """The topic pattern every key of this route matches (``market_data.*.*``)."""
        return self.template.format(**{name: "*" for name in self.fields})

    def key(self, **values: str) -> str:
        """The routing key for these field values."""
        return self.template.format(**values)


@dataclass(frozen=True)
class Policy:
    """A RabbitMQ policy applied to exactly one queue or one exchange (``apply_to``), by its exact name.

    RabbitMQ applies one policy per object, the highest priority's: tradebus gives each object at most one
    (``Topology`` checks it), and queue policies and exchange policies never compete (each applies to its
    own kind of object only).
    """

    name: str
    #: The name of the one queue or exchange the policy applies to.
    target: str
    definition: dict[str, Any]
    priority: int = POLICY_PRIORITY
    apply_to: str = QUEUES

    @cached_property
    def pattern(self) -> str:
        """The policy's pattern: the object's name and nothing else."""
        return f"^{re.escape(self.target)}$"

    def as_json(self) -> dict[str, Any]:
        """The body of ``PUT /api/policies/{vhost}/{name}``."""
        return {
            "pattern": self.pattern,
            "definition": self.definition,
            "priority": self.priority,
            "apply-to": self.apply_to,
        }


#: Celery pool types a profile may choose: processes (``prefork``) or threads of the worker's own process
#: (``threads``: for I/O-bound stages; docs/letrade.md, "The exchange connector runs threads").
PREFORK: Final = "prefork"
THREADS: Final = "threads"
PoolType = Literal["prefork", "threads"]


@dataclass(frozen=True)
class PoolProfile:
    """A pool of worker processes (or threads, ``pool``) consuming one worker queue.

    ``pool`` is the Celery pool type its worker runs unless ``-P`` says otherwise: ``prefork``, the default,
    hands each delivery down a pipe to a child process (a crash takes only that child), ``threads`` runs
    ``concurrency`` threads in the worker's own process (no hand-off; for stages that wait on I/O; never
    batched: a batch settles its deliveries from the thread that ran it, off the worker's event loop).

    ``batch_size`` > 1 makes the pool consume in batches (tradebus/batching.py): its worker hands a pool
    process up to ``batch_size`` deliveries at once (at most half its prefetch window), as soon as
    a process is free, and at the latest ``batch_ms`` after the first of them arrived. ``batch_keys``
    limits batching to those routing keys on a queue shared with other messages (empty: every key).
    """

    queue: str
    concurrency: int
    prefetch_multiplier: int
    batch_size: int = 1
    batch_ms: int = 0
    batch_keys: tuple[str, ...] = ()
    pool: PoolType = PREFORK

    def __post_init__(self) -> None:
        if self.pool not in (PREFORK, THREADS) or (self.pool == THREADS and self.batched):
            raise ValueError(f"{self.queue}: pool {self.pool!r}: prefork, or threads and not batched")

    @property
    def batched(self) -> bool:
        """Whether the pool's worker consumes in batches."""
        return self.batch_size > 1

    @property
    def batches_every_key(self) -> bool:
        """Whether every message of the pool's queue is consumed in batches (no unbatched keys: a queue
        whose ``batch_keys`` leave some keys out also serves messages one by one, a request say)."""
        return self.batched and not self.batch_keys

    @property
    def name(self) -> str:
        """The pool's name, which is its queue's name."""
        return self.queue

    @property
    def prefetch_count(self) -> int:
        """The unacknowledged messages RabbitMQ allows this pool."""
        return self.concurrency * self.prefetch_multiplier


@dataclass(frozen=True, eq=False)
class Topology:
    """One bus: everything declared, how messages route, which stages and pools consume what."""

    name: str
    options: TopologyOptions
    #: Every exchange, declared without arguments (as the seed declares them), alternate exchanges first.
    exchanges: tuple[Exchange, ...]
    #: The exchanges publishers address, by name.
    public_exchanges: Mapping[str, Exchange]
    #: Exchanges whose messages must survive a broker restart (delivery mode 2).
    persistent_exchanges: frozenset[str]
    #: Where dead letters go, and where retries go back to their queue (bound there by the queue's name).
    dlx: Exchange
    retry: Exchange
    #: Queues a stage consumes, queues of plain Celery tasks, dead-letter and unrouted queues.
    stage_queues: tuple[Queue, ...]
    task_queues: tuple[Queue, ...]
    dead_letter_queues: tuple[Queue, ...]
    unrouted_queues: tuple[Queue, ...]
    #: Queues whose messages are prices: transient, and stale once dead.
    market_data_queues: frozenset[str]
    #: Queues that must not lose a message when the pool process running it dies (redelivered).
    critical_queues: frozenset[str]
    pools: Mapping[str, PoolProfile]
    #: The queues' dead-letter (quorum queues: also overflow and delivery-limit) policies, and the
    #: exchanges' alternate-exchange policies.
    policies: tuple[Policy, ...]
    #: ``(queue, routing key) -> (exchange, routing key)`` of a dead letter from that queue.
    dead_letter_route: Callable[[str, str], tuple[str, str]]
    #: The prefix of every dead-letter queue's name.
    dead_letter_prefix: str
    #: Modules whose stages and tasks this bus runs (Celery's ``include``).
    stage_modules: tuple[str, ...]
    #: Celery beat's schedule and the routes of plain Celery tasks.
    beat_schedule: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    task_routes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: Exchanges bound to exchanges (the sharded queue's consistent-hash exchange).
    exchange_bindings: tuple[ExchangeBinding, ...] = ()
    #: Queues split into shards by symbol (``TopologyOptions.market_data_shards``).
    shards: tuple[Shards, ...] = ()
    #: Queue this profile can shard -> its consistent-hash exchange, whatever this build's shard count:
    #: what tells a declare over a broker sharded another way that it would be a reshard.
    shardable: Mapping[str, str] = field(default_factory=dict)
    #: Routing key -> the value a tradebus publisher puts in the hash header (the message's symbol), or
    #: None: what ``route`` assumes about a message's headers when it has only its routing key.
    hash_value: Callable[[str], str | None] = field(default=lambda key: None)
    #: Where a stage's retry waits out its delay on the broker (quorum topologies, whose workers cannot
    #: hold a delayed message without holding a prefetch slot): the exchange, and one queue per delay
    #: (``retry_delay_route``). None: the retry waits in the worker (Celery's countdown).
    retry_delay: Exchange | None = None
    delay_queues: tuple[Queue, ...] = ()
    #: ``(exchange, key pattern)`` of the messages a trace begins with (tradebus/tracing.py): MasterTrade's
    #: signals, Letrade's commands. Anything else joins the trace its headers name, or none.
    trace_roots: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        missing = {q.name for q in self.worker_queues} ^ set(self.pools)
        if missing:
            raise ValueError(f"{self.name}: every worker queue needs exactly one pool: {sorted(missing)}")
        exchanges = {e.name for e in self.exchanges}
        unknown = {n for b in self.exchange_bindings for n in (b.source, b.destination)} - exchanges
        if unknown:
            raise ValueError(f"{self.name}: exchange bindings name undeclared exchanges: {sorted(unknown)}")
        self._check_policies()
        self._check_shards()

    def _check_shards(self) -> None:
        """Each shard is bound to its exchange once, with weight 1, in order: bucket i is shard i, the
        assumption of ``route`` and of the stages' misplaced-delivery count (routing/consistent_hash.py)."""
        queues = self.queues_by_name
        hashing = {e.name for e in self.exchanges if e.type == "x-consistent-hash"}
        weights = {
            (b.exchange.name, q.name, b.routing_key)
            for q in self.queues
            for b in q.bindings
            if b.exchange.name in hashing and b.routing_key != SHARD_WEIGHT
        }
        if weights:
            raise ValueError(
                f"{self.name}: consistent-hash bindings of weight other than 1: {sorted(weights)}"
            )
        for shards in self.shards:
            bound = [
                (q.name, b.routing_key)
                for q in self.queues
                for b in q.bindings
                if b.exchange.name == shards.exchange
            ]
            if bound != [(name, SHARD_WEIGHT) for name in shards.queues]:
                raise ValueError(
                    f"{self.name}: {shards.exchange} must bind {', '.join(shards.queues)} in that order, "
                    f"each once with weight {SHARD_WEIGHT!r}, not {bound}"
                )
            if unknown := [name for name in shards.queues if name not in queues]:
                raise ValueError(f"{self.name}: shards name undeclared queues: {unknown}")

    def _check_policies(self) -> None:
        """Each policy names one of this bus's objects, and no object has two (only one would apply)."""
        names = {QUEUES: {q.name for q in self.queues}, EXCHANGES: {e.name for e in self.exchanges}}
        seen: set[tuple[str, str]] = set()
        for policy in self.policies:
            if policy.target not in names.get(policy.apply_to, set()):
                raise ValueError(
                    f"{self.name}: policy {policy.name} applies to no {policy.apply_to[:-1]} of ours"
                )
            if (policy.apply_to, policy.target) in seen:
                raise ValueError(f"{self.name}: two policies for {policy.target}; RabbitMQ would apply one")
            seen.add((policy.apply_to, policy.target))
        unknown = set(self.alternate_exchanges.values()) - names[EXCHANGES]
        if unknown:
            raise ValueError(f"{self.name}: alternate exchanges not declared: {sorted(unknown)}")

    @cached_property
    def worker_queues(self) -> tuple[Queue, ...]:
        """Every queue a worker consumes."""
        return self.stage_queues + self.task_queues

    @cached_property
    def queues(self) -> tuple[Queue, ...]:
        """Every queue declared."""
        return self.worker_queues + self.dead_letter_queues + self.unrouted_queues + self.delay_queues

    @cached_property
    def quorum_queues(self) -> frozenset[str]:
        """The queues declared as quorum queues (replicated; docs/topology.md, "Quorum queues")."""
        return frozenset(
            q.name for q in self.queues if (q.queue_arguments or {}).get(QUEUE_TYPE_ARGUMENT) == QUORUM
        )

    def retry_delay_route(self, queue: str, delay: float) -> tuple[str, str] | None:
        """The exchange and routing key that hold a retry of ``queue`` for ``delay`` seconds on the broker
        and then hand it to ``queue`` through the retry exchange; None when no delay queue holds that delay.
        """
        if self.retry_delay is None:
            return None
        key = f"{queue}.{delay_word(delay)}"
        delay_queues = {q.name for q in self.delay_queues}
        reached = self.route(self.retry_delay.name, key) & delay_queues
        return (self.retry_delay.name, key) if reached else None

    @cached_property
    def queues_by_name(self) -> dict[str, Queue]:
        """Every queue, by name."""
        return {q.name: q for q in self.queues}

    @cached_property
    def alternate_exchanges(self) -> dict[str, str]:
        """Exchange -> its alternate exchange, as the topology's exchange policies set it."""
        return {
            p.target: p.definition[ALTERNATE_EXCHANGE]
            for p in self.policies
            if p.apply_to == EXCHANGES and ALTERNATE_EXCHANGE in p.definition
        }

    @cached_property
    def router(self) -> Router:
        """Routing over this topology's exchanges, bindings and alternate exchanges."""
        return Router(
            self.exchanges,
            self.queues,
            self.alternate_exchanges,
            exchange_bindings=self.exchange_bindings,
            hash_value=self.hash_value,
        )

    def route(self, exchange: str, routing_key: str) -> frozenset[str]:
        """The queues a message published to ``exchange`` with ``routing_key`` reaches (a tradebus
        publisher's message: its hash header is the symbol its key carries, ``hash_value``)."""
        return self.router.route(exchange, routing_key)

    def trace(self, exchange: str, routing_key: str) -> list[Hop]:
        """The exchanges such a message passes through, with the queues each delivered to."""
        return self.router.trace(exchange, routing_key)

    @cached_property
    def shard_of_queue(self) -> dict[str, Shards]:
        """Shard queue -> the shards it is one of."""
        return {name: shards for shards in self.shards for name in shards.queues}

    @cached_property
    def sharded(self) -> dict[str, Shards]:
        """The queue the shards replace -> its shards."""
        return {shards.queue: shards for shards in self.shards}

    def reaches(self, exchange: str, routing_key: str, queue: str) -> bool:
        """Whether such a message can reach ``queue``: it routes there, or ``queue`` is a shard and the
        message reaches one of its shards (which one is the broker's hash of a header a foreign publisher
        may not set: docs/topology.md)."""
        routed = self.route(exchange, routing_key)
        if queue in routed:
            return True
        shards = self.shard_of_queue.get(queue)
        return shards is not None and not routed.isdisjoint(shards.queues)

    def starts_trace(self, exchange: str, routing_key: str) -> bool:
        """Whether a message published to ``exchange`` with ``routing_key`` begins a trace of its own."""
        return any(e == exchange and topic_matches(p, routing_key) for e, p in self.trace_roots)

    def pool(self, name: str) -> PoolProfile:
        """The pool called ``name``; KeyError naming the real ones."""
        try:
            return self.pools[name]
        except KeyError:
            raise KeyError(f"no pool {name!r}; pools: {', '.join(sorted(self.pools))}") from None

    def is_dead_letter_queue(self, name: str) -> bool:
        """Whether ``name`` is one of this bus's dead-letter queues."""
        return name.startswith(self.dead_letter_prefix) and name in self.queues_by_name
