"""The Letrade_v1 topology as data (seed 003): three topic exchanges, the ``letrade.dlq`` exchange, the
routing keys of every documented message, one inbox queue per service and one dead-letter queue per key.

Decisions where the seed is silent or cannot be taken literally are in docs/letrade.md:

* market data (``market_data.{exchange}.{symbol}``) travels on ``letrade.events``, the section the seed
  lists it under; requests and their responses share ``letrade.requests``;
* each service consumes one inbox queue with ``x-max-priority``, so a trade command overtakes the market
  data queued before it (priority orders messages within one queue only);
* a dead letter goes to ``letrade.dlq`` with its original key plus ``.dead``; each documented key has a
  dead-letter queue, bound to the ``.dead`` key and to the plain key (what RabbitMQ itself dead-letters,
  a rejected message, keeps its original key);
* every exchange has the alternate exchange ``letrade.unrouted``, by policy (the exchanges themselves are
  declared plainly, topic and durable, as any Letrade service declares them): what no binding takes is
  kept there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kombu import Exchange, Queue

from routing.build import alternate_exchange_policy, durable_queue, exchange, fanout_exchange
from routing.model import QUORUM, THREADS, Policy, PoolProfile, Route, Topology, TopologyOptions
from routing.quorum import DEAD_LETTER_DELIVERY_LIMIT, as_quorum

NAME = "letrade"
DEAD_SUFFIX = ".dead"
DLQ_PREFIX = "letrade.dlq."
#: RabbitMQ's advice: at most 10 priority levels (each level costs the queue an internal sub-queue).
MAX_PRIORITY = 10
#: The seed: "trade messages: priority HIGH". Commands, trade events and capital allocation are trade
#: messages; market data is the bulk they must overtake.
PRIORITY_HIGH = 9
PRIORITY_NORMAL = 5
PRIORITY_LOW = 1
#: Bound on the queue of unroutable messages; past it the publisher's confirm is a nack, never a drop.
UNROUTED_MAX_LENGTH = 100_000
#: ...and on its bytes: a late ``response.market_data`` (its caller gave up) may be up to 128 KB.
UNROUTED_MAX_BYTES = 256 * 1024 * 1024

UNROUTED_EXCHANGE = fanout_exchange("letrade.unrouted")


def _topic(name: str) -> Exchange:
    return exchange(name)


COMMANDS = _topic("letrade.commands")
EVENTS = _topic("letrade.events")
REQUESTS = _topic("letrade.requests")
#: The seed's DLQ exchange: routing key = original routing key + ``.dead``.
DLX = _topic("letrade.dlq")
#: Retries go straight back to the inbox that failed them: every inbox is bound here by its own name.
RETRY = _topic("letrade.retry")
_BY_NAME = {e.name: e for e in (COMMANDS, EVENTS, REQUESTS)}


@dataclass(frozen=True)
class LetradeRoute(Route):
    """A documented message: its name, exchange, routing-key template and priority."""

    name: str = ""
    priority: int = PRIORITY_NORMAL
    #: Whether it must survive a broker restart (market data is stale within seconds: transient).
    persistent: bool = True

    @property
    def dead_letter_queue(self) -> str:
        """The queue that keeps this route's dead letters."""
        return dead_letter_queue_name(self.pattern.replace(".*", ""))


def _route(
    name: str, exchange: Exchange, template: str, priority: int, persistent: bool = True
) -> LetradeRoute:
    return LetradeRoute(exchange.name, template, name=name, priority=priority, persistent=persistent)


_ROUTES = (
    _route("execute_trade", COMMANDS, "commands.execute_trade", PRIORITY_HIGH),
    _route("cancel_order", COMMANDS, "commands.cancel_order", PRIORITY_HIGH),
    _route("trade_executed", EVENTS, "events.trade_executed", PRIORITY_HIGH),
    _route("error", EVENTS, "events.error", PRIORITY_NORMAL),
    _route("market_data", EVENTS, "market_data.{exchange}.{symbol}", PRIORITY_LOW, persistent=False),
    _route("capital_allocation_request", REQUESTS, "request.capital.allocation", PRIORITY_HIGH),
    _route("capital_allocation_response", REQUESTS, "response.capital.allocation", PRIORITY_HIGH),
    _route("market_data_request", REQUESTS, "request.market_data", PRIORITY_NORMAL),
    _route("market_data_response", REQUESTS, "response.market_data", PRIORITY_NORMAL),
)
#: Route name -> route.
ROUTES: dict[str, LetradeRoute] = {r.name: r for r in _ROUTES}
#: The exchange a key's first word belongs to.
EXCHANGE_OF_FAMILY: dict[str, str] = {
    "commands": COMMANDS.name,
    "events": EVENTS.name,
    "market_data": EVENTS.name,
    "request": REQUESTS.name,
    "response": REQUESTS.name,
}


def dead_letter_queue_name(queue: str) -> str:
    """The dead-letter queue of a key family (``commands.execute_trade``, ``market_data``).

    Letrade's dead letters are kept by routing key, not by the queue that failed them (docs/letrade.md).
    """
    return f"{DLQ_PREFIX}{queue}"


def dead_letter_route(queue: str, routing_key: str) -> tuple[str, str]:
    """Where a message that failed on ``queue`` goes: ``letrade.dlq``, its routing key plus ``.dead``."""
    return DLX.name, f"{routing_key or queue}{DEAD_SUFFIX}"


def _inbox(service: str, *route_names: str) -> Queue:
    routes = [ROUTES[name] for name in route_names]
    arguments: dict[str, Any] = {"x-max-priority": MAX_PRIORITY, "x-dead-letter-exchange": DLX.name}
    name = f"letrade.{service}"
    return durable_queue(
        name, [(_BY_NAME[r.exchange], r.pattern) for r in routes] + [(RETRY, name)], arguments
    )


#: One inbox per service; what each consumes is the seed's sequence diagrams (docs/letrade.md).
EXCHANGE_CONNECTOR = _inbox("exchange_connector", "execute_trade", "cancel_order", "market_data")
CAPITAL_MANAGER = _inbox("capital_manager", "capital_allocation_request")
MARKET_DATA_SERVICE = _inbox("market_data", "market_data_request", "market_data")
STRATEGY = _inbox("strategy", "market_data", "capital_allocation_response", "trade_executed", "error")

STAGE_QUEUES: tuple[Queue, ...] = (EXCHANGE_CONNECTOR, CAPITAL_MANAGER, MARKET_DATA_SERVICE, STRATEGY)
TASK_QUEUES: tuple[Queue, ...] = ()
WORKER_QUEUES: tuple[Queue, ...] = STAGE_QUEUES + TASK_QUEUES

_ROUTE_DLQS: tuple[Queue, ...] = tuple(
    durable_queue(r.dead_letter_queue, [(DLX, r.pattern + DEAD_SUFFIX), (DLX, r.pattern)]) for r in _ROUTES
)
#: A delivery that came back through letrade.retry carries its inbox's name as its key; what RabbitMQ
#: dead-letters of it (a rejection) keeps that key.
INBOX_DLQ = durable_queue(
    dead_letter_queue_name("inboxes"), [(DLX, "letrade.*"), (DLX, "letrade.*" + DEAD_SUFFIX)]
)
DEAD_LETTER_QUEUES: tuple[Queue, ...] = (*_ROUTE_DLQS, INBOX_DLQ)
UNROUTED_QUEUES: tuple[Queue, ...] = (
    durable_queue(
        "letrade.unrouted",
        [(UNROUTED_EXCHANGE, "")],
        {
            "x-max-length": UNROUTED_MAX_LENGTH,
            "x-max-length-bytes": UNROUTED_MAX_BYTES,
            "x-overflow": "reject-publish",
        },
    ),
)
#: Queues whose dead letters are stale prices when the broker expired them: none (no Letrade TTLs).
MARKET_DATA_QUEUES: frozenset[str] = frozenset()

EXCHANGES: tuple[Exchange, ...] = (UNROUTED_EXCHANGE, COMMANDS, EVENTS, REQUESTS, DLX, RETRY)
PUBLIC_EXCHANGES: dict[str, Exchange] = {e.name: e for e in (COMMANDS, EVENTS, REQUESTS, DLX)}
PERSISTENT_EXCHANGES = frozenset({COMMANDS.name, EVENTS.name, REQUESTS.name, DLX.name})
#: Every exchange's alternate exchange is ``letrade.unrouted``, set by policy. Queues need no policy: each
#: dead-letters by its own arguments.
POLICIES = tuple(
    alternate_exchange_policy(e, UNROUTED_EXCHANGE) for e in EXCHANGES if e is not UNROUTED_EXCHANGE
)

#: Letrade_v1 gives no consumer counts. Prefetch 1 wherever trade messages arrive: priority reorders only
#: what is still queued, so a deep prefetch buffer of market data would make a trade command wait behind it.
POOLS: dict[str, PoolProfile] = {
    p.name: p
    for p in (
        # Two threads, not processes: the connector waits on Redis and the broker (an exchange's API in
        # production); no hand-off to a child: less CPU per trade and half the memory (docs/letrade.md,
        # "The exchange connector runs threads").
        PoolProfile("letrade.exchange_connector", concurrency=2, prefetch_multiplier=1, pool=THREADS),
        PoolProfile("letrade.capital_manager", concurrency=1, prefetch_multiplier=1),
        PoolProfile("letrade.strategy", concurrency=2, prefetch_multiplier=1),
        # The market-data service takes candles in batches (the seed recommends batching; its requests go
        # one by one): at most half its prefetch window of 10 at once.
        PoolProfile(
            "letrade.market_data",
            concurrency=1,
            prefetch_multiplier=10,
            batch_size=100,
            batch_ms=1_000,
            batch_keys=("market_data.*.*",),
        ),
    )
}
#: Every inbox is critical: each carries trade messages, and letrade.market_data answers requests (a request
#: lost with its process is a caller left waiting).
CRITICAL_QUEUES = frozenset(q.name for q in STAGE_QUEUES)

#: Letrade's services, one stage module each.
STAGE_MODULES: tuple[str, ...] = (
    "tasks.letrade.capital_manager",
    "tasks.letrade.exchange_connector",
    "tasks.letrade.market_data",
    "tasks.letrade.strategy",
)


def build(options: TopologyOptions | None = None) -> Topology:
    """Letrade_v1's bus: its three exchanges, the ``letrade.dlq`` exchange, inboxes, DLQs and pools.

    ``queue_type="quorum"`` makes the dead-letter queues quorum queues, each with a policy giving it an
    explicit, in effect unlimited, delivery limit (routing/quorum.py ``DEAD_LETTER_DELIVERY_LIMIT``); the
    inboxes stay classic priority queues (quorum queues refuse ``x-max-priority``, and the seed's "trade
    messages: priority HIGH" needs it; docs/topology.md, "Quorum queues").

    Sharding by symbol is MasterTrade's: a shard count is ignored here (one environment, e.g. a shared
    ``.env``, may set ``TRADEBUS_MARKET_DATA_SHARDS`` for both buses) and the topology records 0.
    """
    options = replace(options or TopologyOptions(), market_data_shards=0)
    quorum = options.queue_type == QUORUM
    dead_letter_policies = tuple(
        Policy(f"tradebus-quorum.{q.name}", q.name, {"delivery-limit": DEAD_LETTER_DELIVERY_LIMIT})
        for q in DEAD_LETTER_QUEUES
        if quorum
    )
    return Topology(
        name=NAME,
        options=options,
        exchanges=EXCHANGES,
        public_exchanges=PUBLIC_EXCHANGES,
        persistent_exchanges=PERSISTENT_EXCHANGES,
        dlx=DLX,
        retry=RETRY,
        stage_queues=STAGE_QUEUES,
        task_queues=TASK_QUEUES,
        dead_letter_queues=tuple(as_quorum(q) for q in DEAD_LETTER_QUEUES) if quorum else DEAD_LETTER_QUEUES,
        unrouted_queues=UNROUTED_QUEUES,
        market_data_queues=MARKET_DATA_QUEUES,
        critical_queues=CRITICAL_QUEUES,
        pools=POOLS,
        policies=(*POLICIES, *dead_letter_policies),
        dead_letter_route=dead_letter_route,
        dead_letter_prefix=DLQ_PREFIX,
        stage_modules=STAGE_MODULES,
        # One trace per command, through to its event (docs/operations.md, "Traces").
        trace_roots=((COMMANDS.name, "#"),),
    )
