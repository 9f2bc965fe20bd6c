"""Where a routing key goes, computed from the declared topology with RabbitMQ's own rules.

Topic patterns: ``*`` matches exactly one word, ``#`` zero or more. Direct: the key equals the binding key.
Fanout: everything. An exchange's alternate exchange receives a message only when none of the exchange's
own bindings matched it, and it receives the message with the same routing key. tradebus sets alternate
exchanges by policy, not by exchange argument: the router is handed them (``Topology.alternate_exchanges``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

from kombu import Exchange, Queue

ALTERNATE_EXCHANGE = "alternate-exchange"
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
class Hop:
    """One exchange a message passed through, and the queues its bindings delivered to."""

    exchange: str
    queues: tuple[str, ...]


def _binding_matches(exchange_type: str, binding_key: str, key: str) -> bool:
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return binding_key == key
    return topic_matches(binding_key, key)


class Router:
    """Routing over one topology's exchanges and queues (each profile has one, see ``routing``)."""

    def __init__(
        self, exchanges: Iterable[Exchange], queues: Iterable[Queue], alternates: Mapping[str, str]
    ) -> None:
        """``alternates``: exchange -> the alternate exchange its policy names.

        An ``alternate-exchange`` argument, where an exchange has one, wins over the policy (as in RabbitMQ).
        """
        exchanges = tuple(exchanges)
        self._types = {e.name: e.type for e in exchanges}
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
        current: str | None = exchange
        while current is not None:
            kind = self._types[current]
            bindings = self._bindings.get(current, [])
            matched = sorted({q for bk, q in bindings if _binding_matches(kind, bk, key)})
            hops.append(Hop(current, tuple(matched)))
            current = None if matched else self._alternates.get(current)
        return hops

    def _route(self, exchange: str, key: str) -> frozenset[str]:
        """The queues a message published to ``exchange`` with routing ``key`` is delivered to."""
        return frozenset(q for hop in self.trace(exchange, key) for q in hop.queues)
