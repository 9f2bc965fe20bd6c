"""A broker URL that names a cluster's nodes: ``amqp://a//;amqp://b//;amqp://c//`` (docs/scaling.md).

Kombu reads a ``;``-separated list as fail-over alternates: a connection goes to the first node that
answers and, when it is lost, to the next (Celery's ``broker_url``, and so the workers, the CLI and Flower,
inherit that). The management API of a cluster is one per node, listed the same way in
``TRADEBUS_MANAGEMENT_URL``. This module splits and rewrites such lists; it connects to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from tradebus.errors import SettingsError
from tradebus.tlsonly import BROKER_TLS

SEPARATOR = ";"


def split(urls: str) -> tuple[str, ...]:
    """Each URL of a ``;``-separated list, stripped, blanks dropped (a single URL is a list of one)."""
    return tuple(part.strip() for part in urls.split(SEPARATOR) if part.strip())


def join(urls: Iterable[str]) -> str:
    """The ``;``-separated list of ``urls``, as Kombu reads it."""
    return SEPARATOR.join(urls)


def first(urls: str) -> str:
    """The first URL of the list (the one a client tries first), or ``urls`` itself when it lists none."""
    listed = split(urls)
    return listed[0] if listed else urls


def vhost(url: str) -> str:
    """The vhost of one AMQP URL: its path without the leading ``/``, unquoted (``/`` when there is none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def on_vhost(urls: str, name: str) -> str:
    """The same nodes, each on vhost ``name`` (scheme, login, host, port and query kept)."""
    return join(
        urlunsplit((parts.scheme, parts.netloc, "/" + quote(name, safe=""), parts.query, ""))
        for parts in map(urlsplit, split(urls))
    )


def check_brokers(name: str, urls: str) -> None:
    """SettingsError unless every node of ``urls`` has a scheme, all are on one vhost and all use TLS or
    none: a client that fails over must land in the same place, as securely."""
    listed = split(urls)
    if not listed:
        raise SettingsError(f"{name} is empty")
    if any("://" not in url for url in listed):
        raise SettingsError(f"{name}: every node needs a scheme (amqp:// or amqps://)")
    if len({vhost(url) for url in listed}) > 1:
        raise SettingsError(f"{name}: every node of the list must name the same vhost")
    if len({urlsplit(url).scheme.lower() in BROKER_TLS for url in listed}) > 1:
        raise SettingsError(f"{name}: the nodes of the list use TLS all or none")
