"""The MasterTrade topology as data: exchanges, queues, bindings and routing-key templates.

Imported by ``celeryconfig``, the CLI and the tests. Imports nothing from the app or the tasks.
"""

from routing.exchanges import DLX, EXCHANGES, PERSISTENT_EXCHANGES, PUBLIC_EXCHANGES, RETRY
from routing.keys import CANDLE_INTERVALS, INTERVAL_SECONDS, ROUTES, Route
from routing.match import Hop, route, topic_matches, trace
from routing.policies import POLICIES, Policy
from routing.queues import (
    ARCHIVE_QUEUE,
    DEAD_LETTER_QUEUES,
    MARKET_DATA_QUEUES,
    QUEUES,
    QUEUES_BY_NAME,
    STAGE_QUEUES,
    TASK_QUEUES,
    UNROUTED_QUEUES,
    WORKER_QUEUES,
    dead_letter_queue_name,
)

__all__ = [
    "ARCHIVE_QUEUE",
    "CANDLE_INTERVALS",
    "DEAD_LETTER_QUEUES",
    "DLX",
    "EXCHANGES",
    "INTERVAL_SECONDS",
    "MARKET_DATA_QUEUES",
    "PERSISTENT_EXCHANGES",
    "POLICIES",
    "PUBLIC_EXCHANGES",
    "QUEUES",
    "QUEUES_BY_NAME",
    "RETRY",
    "ROUTES",
    "STAGE_QUEUES",
    "TASK_QUEUES",
    "UNROUTED_QUEUES",
    "WORKER_QUEUES",
    "Hop",
    "Policy",
    "Route",
    "dead_letter_queue_name",
    "route",
    "topic_matches",
    "trace",
]
