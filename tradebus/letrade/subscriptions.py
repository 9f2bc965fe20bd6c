"""Wildcard subscriptions, as in the seed's examples, compiled into topic bindings plus a client filter.

A topic exchange matches whole words: ``*`` is exactly one word, ``#`` zero or more. So:

* ``market_data.binance.*`` is a topic pattern as it stands: it is bound as written, no filter.
* ``events.trade_*`` asks for a prefix *within* a word, which a topic binding cannot say (``trade_*`` would
  be the literal word ``trade_*``). It is bound as ``events.*`` and the client keeps the keys whose
  second word matches ``trade_*`` (shell-style, within the word); the rest are acknowledged unseen.
* ``*.strategy_123.*`` means "every message of strategy 123", but no Letrade routing key carries a strategy
  (``commands.execute_trade`` has two words, none of them a strategy id), so as a topic pattern it matches
  nothing at all. tradebus publishes every message that belongs to a strategy with its id in the
  ``x-letrade-strategy-id`` header (the payload's ``strategy_id``; an allocation response gets its
  request's); a ``strategy_<id>`` word binds ``commands.#``, ``events.#``, ``request.#`` and
  ``response.#`` and keeps the messages whose header names that strategy. Market data belongs to no
  strategy, so it is not bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from routing.letrade import COMMANDS, EVENTS, EXCHANGE_OF_FAMILY, REQUESTS
from routing.match import topic_matches
from tradebus.errors import BadSubscription
from tradebus.letrade.messages import STRATEGY_HEADER

STRATEGY_WORD = re.compile(r"^strategy_(\d+)$")
#: Where a strategy's messages travel: everything but market data.
STRATEGY_BINDINGS: tuple[tuple[str, str], ...] = (
    (COMMANDS.name, "commands.#"),
    (EVENTS.name, "events.#"),
    (REQUESTS.name, "request.#"),
    (REQUESTS.name, "response.#"),
)
_VALID_WORD = re.compile(r"^[A-Za-z0-9_\-*]+$|^#$")


@dataclass(frozen=True)
class Subscription:
    """A pattern as bindings on the Letrade exchanges and the filter the client applies."""

    pattern: str
    bindings: tuple[tuple[str, str], ...]
    #: The words the routing key must match, shell-style within a word (None: every bound key).
    words: tuple[str, ...] | None = None
    strategy_id: int | None = None

    def accepts(self, routing_key: str, headers: dict[str, Any] | None = None) -> bool:
        """Whether a delivery with ``routing_key`` (and ``headers``) is one the pattern asked for."""
        if self.strategy_id is not None:
            value = (headers or {}).get(STRATEGY_HEADER)
            return value is not None and str(value) == str(self.strategy_id)
        return self.words is None or topic_matches(".".join(self.words), routing_key, globs_in_words=True)


def compile_pattern(pattern: str) -> Subscription:
    """The bindings and filter for ``pattern``; BadSubscription when it cannot match a Letrade key."""
    words = pattern.split(".")
    if not pattern or not all(_VALID_WORD.match(w) for w in words):
        raise BadSubscription(f"{pattern!r} is not a subscription pattern: dot-separated words, '*' and '#'")
    for word in words:
        if found := STRATEGY_WORD.match(word):
            return Subscription(pattern, STRATEGY_BINDINGS, strategy_id=int(found.group(1)))
    partial = any("*" in w and w != "*" for w in words)
    key = ".".join("*" if "*" in w and w != "*" else w for w in words)
    family = words[0]
    if "*" in family or family == "#":
        exchanges: tuple[str, ...] = (COMMANDS.name, EVENTS.name, REQUESTS.name)
    elif family in EXCHANGE_OF_FAMILY:
        exchanges = (EXCHANGE_OF_FAMILY[family],)
    else:
        raise BadSubscription(
            f"{pattern!r} matches no Letrade routing key: they start with "
            f"{', '.join(sorted(EXCHANGE_OF_FAMILY))}"
        )
    return Subscription(pattern, tuple((e, key) for e in exchanges), tuple(words) if partial else None)
