"""Where a routing key goes, computed from the declared topology with RabbitMQ's own rules.

Topic patterns: ``*`` matches exactly one word, ``#`` zero or more. Direct: the key equals the binding key.
Fanout: everything. An exchange's alternate exchange receives a message only when none of the exchange's
own bindings matched it, and it receives the message with the same routing key.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from routing.exchanges import ALTERNATE_EXCHANGE, EXCHANGES
from routing.queues import QUEUES


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic binding ``pattern`` matches routing ``key`` (AMQP 0-9-1 topic semantics)."""
    return _match(tuple(pattern.split(".")), tuple(key.split(".")))


@lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


@dataclass(frozen=True)
class Hop:
    """One exchange a message passed through, and the queues its bindings delivered to."""

    exchange: str
    queues: tuple[str, ...]


_TYPES = {e.name: e.type for e in EXCHANGES}
_ALTERNATES = {e.name: (e.arguments or {}).get(ALTERNATE_EXCHANGE) for e in EXCHANGES}
_BINDINGS: dict[str, list[tuple[str, str]]] = {}
for _queue in QUEUES:
    for _binding in _queue.bindings:
        _BINDINGS.setdefault(_binding.exchange.name, []).append((_binding.routing_key, _queue.name))


def _binding_matches(exchange_type: str, binding_key: str, key: str) -> bool:
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return binding_key == key
    return topic_matches(binding_key, key)


def trace(exchange: str, key: str) -> list[Hop]:
    """The exchanges a message published to ``exchange`` with ``key`` passes through, in order."""
    if exchange not in _TYPES:
        raise KeyError(f"unknown exchange {exchange!r}; known: {', '.join(sorted(_TYPES))}")
    hops: list[Hop] = []
    current: str | None = exchange
    while current is not None:
        kind = _TYPES[current]
        matched = sorted({q for bk, q in _BINDINGS.get(current, []) if _binding_matches(kind, bk, key)})
        hops.append(Hop(current, tuple(matched)))
        current = None if matched else _ALTERNATES.get(current)
    return hops


@lru_cache(maxsize=8192)
def route(exchange: str, key: str) -> frozenset[str]:
    """The queues a message published to ``exchange`` with routing ``key`` is delivered to."""
    return frozenset(q for hop in trace(exchange, key) for q in hop.queues)
