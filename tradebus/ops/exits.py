"""What ``tradebus`` (and ``celery -A tradebus``) exits with: one named code per kind of failure."""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import Any

import click

from tradebus.errors import InsecureConnection


class ExitCode(IntEnum):
    """What ``tradebus`` exits with."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    TOPOLOGY_CONFLICT = 3
    BROKER_UNREACHABLE = 4
    MANAGEMENT_API_ERROR = 5
    UNHEALTHY = 6
    #: TRADEBUS_REQUIRE_TLS=1 and a setting (or --broker) names a connection without TLS; nothing connected.
    INSECURE = 7
    #: ``topology declare`` declared all it could, but not the queues whose node is down (a cluster): run it
    #: again once the node is back.
    QUEUES_SKIPPED = 8


class TradebusGroup(click.Group):
    """The command group: a connection without TLS refused anywhere (the settings, a demo's ``--broker``)
    ends the command with one line and ExitCode.INSECURE."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InsecureConnection as exc:
            click.echo(str(exc), err=True)
            sys.exit(ExitCode.INSECURE)
