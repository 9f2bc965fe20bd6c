"""When a stage retries: the seed's policy (3 retries, 5 s first delay, x2 backoff) for transient errors.

A transient error is one that may pass by itself: Redis or the broker unreachable or timing out, a publish
the broker did not confirm, or a stage raising :class:`~tradebus.errors.Transient`. Anything else is
either an invalid message (dead-lettered at once, a retry cannot fix it) or a bug in the stage
(dead-lettered at once with its traceback logged).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from kombu.exceptions import OperationalError

from tradebus.errors import Transient


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed message is tried again."""

    max_retries: int
    first_delay: float
    multiplier: float

    def delay(self, retries_done: int) -> float:
        """Seconds to wait before retry number ``retries_done + 1``."""
        return self.first_delay * self.multiplier**retries_done

    @property
    def delays(self) -> tuple[float, ...]:
        """Every delay of the policy, in order."""
        return tuple(self.delay(n) for n in range(self.max_retries))


#: Letrade_v1's policy (``x-max-retries: 3``, ``x-retry-delay: 5000``, ``x-backoff-multiplier: 2``).
SEED_POLICY = RetryPolicy(max_retries=3, first_delay=5.0, multiplier=2.0)

#: Exceptions that mean "try again later". Builtin ConnectionError and TimeoutError cover sockets.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    Transient,
    ConnectionError,
    TimeoutError,
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OperationalError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass by itself, so the message deserves another try."""
    return isinstance(exc, TRANSIENT_ERRORS)
