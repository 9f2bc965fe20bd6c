"""Flower, secure by default: ``celery -A tradebus flower`` with tradebus's settings and no extra flags.

Flower 2.2 collects its options in this order: ``FLOWER_*`` variables, then the command line, then
``flowerconfig.py`` in the working directory, then the command line again. The Celery command loads the
tradebus app (and with it this module) before Flower parses anything, so tradebus registers a parse
callback on Flower's options (Tornado's global ``options``): it runs after each parse, sees whatever the
operator set through Flower's own channels, and only fills in what is missing:

* basic auth from ``TRADEBUS_FLOWER_USER`` / ``TRADEBUS_FLOWER_PASSWORD`` unless Flower already has a login
  (``--basic_auth``, ``FLOWER_BASIC_AUTH``, or OAuth with ``--auth``);
* with no login at all, the address 127.0.0.1, logged as a warning; an explicit non-loopback address
  without a login is refused (exit 2), and so is ``FLOWER_UNAUTHENTICATED_API``;
* the broker view's ``--broker_api`` from ``TRADEBUS_MANAGEMENT_URL`` (or the broker URL), so queue depths
  come from the RabbitMQ management API with tradebus's login, never typed on a command line; over https,
  Flower's HTTP client verifies it with ``TRADEBUS_BROKER_CA_FILE`` (and shows the client certificate);
* under ``TRADEBUS_REQUIRE_TLS=1`` an explicit ``--broker_api`` that is not https is refused (exit 7, the
  CLI's ``ExitCode.INSECURE``), as tradebus's settings refuse every other connection without TLS.

Flower itself refuses ``/api/...`` without credentials (401) once any login is configured, and without a
login unless ``FLOWER_UNAUTHENTICATED_API`` is set, which tradebus refuses.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from tradebus import tlsonly
from tradebus.errors import FlowerRefused, InsecureConnection, TradebusError
from tradebus.management import Management
from tradebus.settings import Settings

logger = logging.getLogger("tradebus.ops.flower")
LOOPBACK = "127.0.0.1"
#: Flower's escape hatch that opens its API to anyone; tradebus refuses to start with it.
UNAUTHENTICATED_API = "FLOWER_UNAUTHENTICATED_API"
_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})


@dataclass
class Plan:
    """What tradebus changes in Flower's options, and what it tells the operator."""

    changes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def is_loopback(address: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def broker_api(settings: Settings) -> str | None:
    """The management API URL, with tradebus's login, as Flower's ``--broker_api`` wants it (``.../api/``)."""
    if urlsplit(settings.broker_url).scheme not in {"amqp", "amqps", "pyamqp", "pyamqps"}:
        return None
    management = settings.management
    base_url = management.base_url
    if management.others:  # a cluster (one API per node): the first that answers now (``recheck`` moves on)
        base_url = Management(management, timeout=2, tls=settings.tls).answering()
    base = urlsplit(base_url)
    login = f"{quote(management.username, safe='')}:{quote(management.password, safe='')}"
    return urlunsplit((base.scheme, f"{login}@{base.netloc}", f"{base.path}/api/", "", ""))


#: How often Flower's broker view checks, on a cluster, that its management API still answers.
RECHECK_SECONDS = 5.0


def _answers(url: str) -> bool:
    """Whether something takes a TCP connection where ``url`` points."""
    where = urlsplit(url)
    port = where.port or (443 if where.scheme == "https" else 80)
    try:
        with socket.create_connection((where.hostname or "localhost", port), timeout=1):
            return True
    except OSError:
        return False


def recheck(options: Any, settings: Settings) -> str | None:
    """Move Flower's ``broker_api`` option to a management API that answers when its own stopped (a
    cluster's node died); the new URL, or None when nothing changed. Flower reads the option per request."""
    if not options.broker_api or _answers(options.broker_api):
        return None
    api = broker_api(settings)  # the first node that answers now
    if api is None or api == options.broker_api:
        return None
    options.broker_api = api
    return api


def _follow(settings: Settings, interval: float = RECHECK_SECONDS) -> None:
    """Keep Flower's broker view on a live node of the cluster, from a daemon thread."""
    from tornado.options import options

    def run() -> None:
        while True:
            time.sleep(interval)
            try:
                if (moved := recheck(options, settings)) is not None:
                    base = urlsplit(moved)
                    logger.warning("tradebus: broker view moved to %s", base.netloc.rpartition("@")[2])
            except Exception as exc:  # noqa: BLE001 - the broker view waits for a node; Flower runs on
                logger.warning("tradebus: no management API answers: %s", exc)

    threading.Thread(target=run, name="tradebus-broker-api", daemon=True).start()


def plan(options: Mapping[str, Any], settings: Settings, environ: Mapping[str, str]) -> Plan:
    """Decide Flower's missing options from tradebus's settings; FlowerRefused when it would be open."""
    result = Plan()
    if (environ.get(UNAUTHENTICATED_API) or "").strip().lower() in _TRUE:
        raise FlowerRefused(f"{UNAUTHENTICATED_API} would open Flower's API to anyone; unset it")
    basic_auth = list(options.get("basic_auth") or [])
    if not basic_auth and settings.flower.user and settings.flower.password:
        basic_auth = [f"{settings.flower.user}:{settings.flower.password.get_secret_value()}"]
        result.changes["basic_auth"] = basic_auth
        result.notes.append(f"basic auth for {settings.flower.user!r} (TRADEBUS_FLOWER_USER)")
    authenticated = bool(basic_auth) or bool(options.get("auth"))
    address = options.get("address") or ""
    if not authenticated and not options.get("unix_socket"):
        if not address:
            result.changes["address"] = LOOPBACK
            result.warnings.append(
                "no Flower login is configured (TRADEBUS_FLOWER_USER and TRADEBUS_FLOWER_PASSWORD, or "
                f"FLOWER_BASIC_AUTH): listening on {LOOPBACK} only"
            )
        elif not is_loopback(address):
            raise FlowerRefused(
                f"refusing to listen on {address} without a login; set TRADEBUS_FLOWER_USER and "
                "TRADEBUS_FLOWER_PASSWORD (or FLOWER_BASIC_AUTH)"
            )
    if settings.tls.required:
        tlsonly.require(
            tlsonly.management_problems("Flower's --broker_api", options.get("broker_api") or None)
        )
    if not options.get("broker_api") and (api := broker_api(settings)) is not None:
        result.changes["broker_api"] = api
        where = urlsplit(api)  # without its login
        base = f"{where.scheme}://{where.netloc.rpartition('@')[2]}{where.path.removesuffix('/api/')}"
        result.notes.append(f"broker view from the management API at {base}")
    return result


def https_defaults(settings: Settings) -> dict[str, Any] | None:
    """Tornado HTTP client defaults for Flower's broker view over https: tradebus's CA and client
    certificate (Flower only reads a Redis-style ``ssl_ca_certs``, so it would trust the system's CAs)."""
    tls = settings.tls
    if not (tls.ca_file or tls.cert_file):
        return None
    defaults: dict[str, Any] = {"validate_cert": True}
    if tls.ca_file:
        defaults["ca_certs"] = tls.ca_file
    if tls.cert_file:
        defaults["client_cert"], defaults["client_key"] = tls.cert_file, tls.key_file
    return defaults


def configure(settings: Settings) -> None:
    """Tornado parse callback: apply :func:`plan` to Flower's options, or stop Flower with exit code 2."""
    from tornado.options import options

    if "basic_auth" not in options or "broker_api" not in options:
        return  # somebody else's Tornado options, not Flower's
    names = ("basic_auth", "auth", "address", "unix_socket", "broker_api")
    current = {name: getattr(options, name) for name in names}
    try:
        decided = plan(current, settings, os.environ)
    except InsecureConnection as exc:
        from tradebus.ops.exits import ExitCode

        logger.error("tradebus: Flower not started: %s", exc)
        raise SystemExit(ExitCode.INSECURE) from exc
    except TradebusError as exc:  # FlowerRefused, or a TRADEBUS_FLOWER_* setting that makes no sense
        logger.error("tradebus: Flower not started: %s", exc)
        raise SystemExit(2) from exc
    for name, value in decided.changes.items():
        setattr(options, name, value)
    if "broker_api" in decided.changes and settings.management.others:
        _follow(settings)  # a cluster: the view moves on when its node dies
    if (defaults := https_defaults(settings)) is not None:
        from tornado.httpclient import AsyncHTTPClient

        AsyncHTTPClient.configure(None, defaults=defaults)
    for note in decided.notes:
        logger.info("tradebus: %s", note)
    for warning in decided.warnings:
        logger.warning("tradebus: %s", warning)


_installed: list[bool] = []


def install(settings: Settings) -> None:
    """Register :func:`configure` with Flower's options for the default app's ``settings``, once per process
    (``tradebus.app`` calls it)."""
    if _installed:
        return
    from tornado.options import options

    options.add_parse_callback(lambda: configure(settings))
    _installed.append(True)
