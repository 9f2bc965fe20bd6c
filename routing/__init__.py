"""The topology as data: exchanges, queues, bindings and routing-key templates.

Imported by ``celeryconfig``, the CLI and the tests. Imports nothing from the app or the tasks.

Two profiles share the machinery (routing/profile.py): MasterTrade (the default; routing/exchanges.py,
queues.py, keys.py, policies.py) and Letrade_v1 (routing/letrade.py). The names below are the selected
profile's; ``ROUTES``, ``CANDLE_INTERVALS`` and ``INTERVAL_SECONDS`` are MasterTrade's message routes,
whatever the profile (Letrade's are ``routing.letrade.ROUTES``).
"""

from routing import letrade
from routing.keys import CANDLE_INTERVALS, INTERVAL_SECONDS, ROUTES, Route
from routing.match import Hop, Router, topic_matches
from routing.policies import Policy
from routing.profile import LETRADE, MASTERTRADE, PROFILE, PROFILES

if PROFILE == LETRADE:
    from routing.letrade import (
        DEAD_LETTER_QUEUES,
        DLX,
        EXCHANGES,
        MARKET_DATA_QUEUES,
        PERSISTENT_EXCHANGES,
        PUBLIC_EXCHANGES,
        QUEUES,
        QUEUES_BY_NAME,
        RETRY,
        ROUTER,
        STAGE_QUEUES,
        TASK_QUEUES,
        UNROUTED_QUEUES,
        WORKER_QUEUES,
        dead_letter_queue_name,
        dead_letter_route,
    )

    POLICIES: tuple[Policy, ...] = ()
else:
    from routing.exchanges import DLX, EXCHANGES, PERSISTENT_EXCHANGES, PUBLIC_EXCHANGES, RETRY
    from routing.policies import POLICIES
    from routing.queues import (
        DEAD_LETTER_QUEUES,
        MARKET_DATA_QUEUES,
        QUEUES,
        QUEUES_BY_NAME,
        ROUTER,
        STAGE_QUEUES,
        TASK_QUEUES,
        UNROUTED_QUEUES,
        WORKER_QUEUES,
        dead_letter_queue_name,
        dead_letter_route,
    )

route = ROUTER.route
trace = ROUTER.trace

__all__ = [
    "CANDLE_INTERVALS",
    "DEAD_LETTER_QUEUES",
    "DLX",
    "EXCHANGES",
    "INTERVAL_SECONDS",
    "LETRADE",
    "MARKET_DATA_QUEUES",
    "MASTERTRADE",
    "PERSISTENT_EXCHANGES",
    "POLICIES",
    "PROFILE",
    "PROFILES",
    "PUBLIC_EXCHANGES",
    "QUEUES",
    "QUEUES_BY_NAME",
    "RETRY",
    "ROUTER",
    "ROUTES",
    "STAGE_QUEUES",
    "TASK_QUEUES",
    "UNROUTED_QUEUES",
    "WORKER_QUEUES",
    "Hop",
    "Policy",
    "Route",
    "Router",
    "dead_letter_queue_name",
    "dead_letter_route",
    "letrade",
    "route",
    "topic_matches",
    "trace",
]
