"""The topology as data: each profile's exchanges, queues, bindings, routes and pools as one value.

``build(name, **options)`` returns a profile's :class:`Topology` (MasterTrade, the default, or Letrade_v1);
everything else is handed that value. Imports nothing from the app, the stages or the workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from routing import letrade, mastertrade
from routing.match import Hop, Router, topic_matches
from routing.model import Policy, PoolProfile, Route, Topology, TopologyOptions

MASTERTRADE = mastertrade.NAME
LETRADE = letrade.NAME
#: Profile name -> the function that builds its topology.
BUILDERS: dict[str, Callable[[TopologyOptions | None], Topology]] = {
    MASTERTRADE: mastertrade.build,
    LETRADE: letrade.build,
}
PROFILES: tuple[str, ...] = tuple(BUILDERS)


def build(name: str = MASTERTRADE, **options: Any) -> Topology:
    """Profile ``name``'s topology built with ``options`` (see TopologyOptions); ValueError if unknown."""
    key = (name or MASTERTRADE).strip().lower()
    if key not in BUILDERS:
        raise ValueError(f"unknown topology {name!r}: choose one of {', '.join(PROFILES)}")
    return BUILDERS[key](TopologyOptions(**options))


__all__ = [
    "BUILDERS",
    "LETRADE",
    "MASTERTRADE",
    "PROFILES",
    "Hop",
    "Policy",
    "PoolProfile",
    "Route",
    "Router",
    "Topology",
    "TopologyOptions",
    "build",
    "topic_matches",
]
