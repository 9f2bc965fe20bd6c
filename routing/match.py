"""Where a routing key goes, computed from the declared topology with RabbitMQ's own rules.

Topic patterns: ``*`` matches exactly one word, ``#`` zero or more. Direct: the key equals the binding key.
Fanout: everything. Consistent hash (``x-consistent-hash``): exactly one of its queues, the plugin's hash of
a header or of the routing key (routing/consistent_hash.py). An exchange bound to an exchange passes what
the binding matches on with the same routing key. An exchange's alternate exchange receives a message only
when none of the exchange's own bindings matched it, and it receives the message with the same routing key.
tradebus sets alternate exchanges by policy, not by exchange argument: the router is handed them
(``Topology.alternate_exchanges``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

from kombu import Exchange, Queue

from routing.consistent_hash import header_bucket, routing_key_bucket

ALTERNATE_EXCHANGE = "alternate-exchange"
CONSISTENT_HASH = "x-consistent-hash"
#: The consistent-hash exchange's argument naming the header it hashes (without it: the routing key).
HASH_HEADER = "hash-header"
#: Routes remembered per router (routing keys carry symbols and ids, so they are not a closed set).
ROUTE_CACHE_SIZE = 8192


def topic_matches(pattern: str, key: str, *, globs_in_words: bool = False) -> bool:
    """Whether a topic binding ``pattern`` matches routing ``key`` (AMQP 0-9-1 topic semantics).

    With ``globs_in_words``, a word of the pattern may also be a shell-style glob within the word
    (``events.trade_*``): what a client filter can do and a broker binding cannot (tradebus/letrade).
    """
    return _match(tuple(pattern.split(".")), tuple(key.split(".")), globs_in_words)


@lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], words: tuple[str, ...], globs: bool) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:], globs) for i in range(len(words) + 1))
    if not words:
        return False
    same = head in ("*", words[0]) or (globs and fnmatchcase(words[0], head))
    return same and _match(rest, words[1:], globs)


@dataclass(frozen=True)
class ExchangeBinding:
    """An exchange bound to another one: what ``source`` routes with ``routing_key`` goes on to
    ``destination`` (RabbitMQ's exchange-to-exchange bindings)."""

    source: str
    destination: str
    routing_key: str


@dataclass(frozen=True)
class Hop:
    """One exchange a message passed through, and the queues its bindings delivered to.

    ``exchanges``: the exchanges it bound that the message went on to. ``hashed``: on a consistent-hash
    exchange, what was hashed (``header x-tradebus-symbol=BTCUSDT``), the bucket and the bucket count.
    """

    exchange: str
    queues: tuple[str, ...]
    exchanges: tuple[str, ...] = ()
    hashed: tuple[str, int, int] | None = None


def _binding_matches(exchange_type: str, binding_key: str, key: str) -> bool:
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return binding_key == key
    return topic_matches(binding_key, key)


class Router:
    """Routing over one topology's exchanges and queues (each profile has one, see ``routing``)."""

    def __init__(
        self,
        exchanges: Iterable[Exchange],
        queues: Iterable[Queue],
        alternates: Mapping[str, str],
        *,
        exchange_bindings: Iterable[ExchangeBinding] = (),
        hash_value: Callable[[str], str | None] = lambda key: None,
    ) -> None:
        """``alternates``: exchange -> the alternate exchange its policy names.

        An ``alternate-exchange`` argument, where an exchange has one, wins over the policy (as in RabbitMQ).
        ``hash_value``: the value a message with this routing key carries in a consistent-hash exchange's
        header (None: no such header).
        """
        exchanges = tuple(exchanges)
        self._types = {e.name: e.type for e in exchanges}
        self._hash_headers = {
            e.name: (e.arguments or {}).get(HASH_HEADER) for e in exchanges if e.type == CONSISTENT_HASH
        }
        self._hash_value = hash_value
        self._exchange_bindings: dict[str, list[tuple[str, str]]] = {}
        for eb in exchange_bindings:
            self._exchange_bindings.setdefault(eb.source, []).append((eb.routing_key, eb.destination))
        self._alternates: dict[str, str] = dict(alternates)
        for e in exchanges:
            if ALTERNATE_EXCHANGE in (e.arguments or {}):
                self._alternates[e.name] = e.arguments[ALTERNATE_EXCHANGE]
        self._bindings: dict[str, list[tuple[str, str]]] = {}
        for queue in queues:
            for binding in queue.bindings:
                self._bindings.setdefault(binding.exchange.name, []).append((binding.routing_key, queue.name))
        # Per router, bounded, least recently used first out: keys carry order ids, so they never repeat.
        self.route = lru_cache(maxsize=ROUTE_CACHE_SIZE)(self._route)

    def trace(self, exchange: str, key: str) -> list[Hop]:
        """The exchanges a message published to ``exchange`` with ``key`` passes through, in order."""
        if exchange not in self._types:
            raise KeyError(f"unknown exchange {exchange!r}; known: {', '.join(sorted(self._types))}")
        hops: list[Hop] = []
        pending, seen = [exchange], {exchange}
        while pending:
            hop = self._hop(pending.pop(0), key)
            hops.append(hop)
            following = hop.exchanges
            if not hop.queues and not hop.exchanges and hop.exchange in self._alternates:
                following = (self._alternates[hop.exchange],)
            for name in following:  # RabbitMQ visits each exchange once per message
                if name not in seen:
                    seen.add(name)
                    pending.append(name)
        return hops

    def _hop(self, exchange: str, key: str) -> Hop:
        kind = self._types[exchange]
        bindings = self._bindings.get(exchange, [])
        onward = tuple(
            sorted(
                {d for bk, d in self._exchange_bindings.get(exchange, []) if _binding_matches(kind, bk, key)}
            )
        )
        if kind != CONSISTENT_HASH:
            matched = sorted({q for bk, q in bindings if _binding_matches(kind, bk, key)})
            return Hop(exchange, tuple(matched), onward)
        # Weight-1 bindings in declaration order: bucket i is the i-th bound queue (routing/consistent_hash).
        buckets = [q for _, q in bindings]
        if not buckets:
            return Hop(exchange, (), onward)
        header = self._hash_headers.get(exchange)
        if header is None:
            bucket, what = routing_key_bucket(key, len(buckets)), f"routing key {key}"
        else:
            value = self._hash_value(key)
            bucket = header_bucket(value, len(buckets))
            what = f"header {header}={value}" if value is not None else f"no header {header}"
        return Hop(exchange, (buckets[bucket],), onward, (what, bucket, len(buckets)))

    def _route(self, exchange: str, key: str) -> frozenset[str]:
        """The queues a message published to ``exchange`` with routing ``key`` is delivered to."""
        return frozenset(q for hop in self.trace(exchange, key) for q in hop.queues)
