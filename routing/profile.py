"""Which topology this process runs: ``TRADEBUS_TOPOLOGY`` (``mastertrade``, the default, or ``letrade``).

Chosen once, when ``routing`` is first imported: the app, its workers, the CLI and Flower of one process
all serve one bus. ``tradebus --topology letrade ...`` sets the variable before anything imports routing.
"""

from __future__ import annotations

import os

TOPOLOGY_ENV = "TRADEBUS_TOPOLOGY"
MASTERTRADE = "mastertrade"
LETRADE = "letrade"
PROFILES: tuple[str, ...] = (MASTERTRADE, LETRADE)


def selected() -> str:
    """The profile ``TRADEBUS_TOPOLOGY`` names; ValueError for one that does not exist."""
    name = (os.environ.get(TOPOLOGY_ENV) or MASTERTRADE).strip().lower()
    if name not in PROFILES:
        # routing imports nothing from the app, so not a TradebusError; the CLI validates before this.
        raise ValueError(f"{TOPOLOGY_ENV}={name!r}: choose one of {', '.join(PROFILES)}")
    return name


PROFILE = selected()
