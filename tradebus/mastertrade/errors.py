"""MasterTrade's refusals: valid messages its rules will not act on, dead-lettered with their reason."""

from __future__ import annotations

from tradebus.errors import InvalidMessage, Reason


class StaleMessage(InvalidMessage):
    """A signal or an order too old to act on (a late redelivery or a replay): trading on it now is wrong."""

    reason = Reason.STALE


class OrderRefused(InvalidMessage):
    """An order request the executor must never execute (not risk-approved, or not for paper trading)."""

    reason = Reason.ORDER_REFUSED
