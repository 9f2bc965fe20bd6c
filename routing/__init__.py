"""The MasterTrade topology as data: exchanges, queues, bindings and routing-key templates.

Imported by ``celeryconfig``, the CLI and the tests. Imports nothing from the app or the tasks.
"""

from routing.exchanges import DLX, EXCHANGES, PERSISTENT_EXCHANGES, PUBLIC_EXCHANGES
from routing.keys import CANDLE_INTERVALS, ROUTES, Route
from routing.match import Hop, route, topic_matches, trace
from routing.queues import (
    DEAD_LETTER_QUEUES,
    QUEUES,
    QUEUES_BY_NAME,
    STAGE_QUEUES,
    UNROUTED_QUEUES,
    dead_letter_queue_name,
)

__all__ = [
    "CANDLE_INTERVALS",
    "DEAD_LETTER_QUEUES",
    "DLX",
    "EXCHANGES",
    "PERSISTENT_EXCHANGES",
    "PUBLIC_EXCHANGES",
    "QUEUES",
    "QUEUES_BY_NAME",
    "ROUTES",
    "STAGE_QUEUES",
    "UNROUTED_QUEUES",
    "Hop",
    "Route",
    "dead_letter_queue_name",
    "route",
    "topic_matches",
    "trace",
]
