"""TLS-only mode (``TRADEBUS_REQUIRE_TLS=1``): which connection settings would leave the process unencrypted.

Letrade_v1's seed requires TLS on every connection. In this mode tradebus refuses, when its settings are
built and so before anything connects, every setting that names a connection without TLS: the broker
(``amqps://`` only), Redis, which is also the result backend (``rediss://`` only, and never with
``ssl_cert_reqs`` none or optional), and the management API (``https://`` only). ``memory://``, Kombu's
in-process transport (the embedded demo), carries nothing off the machine and is allowed. One
:class:`~tradebus.errors.InsecureConnection` names every offending setting at once, by name and scheme only:
URLs hold passwords, so no URL is ever quoted.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tradebus.errors import InsecureConnection

BROKER_TLS = frozenset({"amqps", "pyamqps"})
#: Kombu transports that never leave the process.
IN_PROCESS = frozenset({"memory"})
REDIS_TLS = frozenset({"rediss"})
MANAGEMENT_TLS = frozenset({"https"})
#: ``ssl_cert_reqs`` values of a ``rediss://`` URL that accept a server without checking its certificate.
UNVERIFIED = frozenset({"none", "optional", "cert_none", "cert_optional"})


def _scheme(url: str) -> str:
    return urlsplit(url.strip()).scheme.lower()


def broker_problems(name: str, url: str) -> list[str]:
    """What is insecure in a broker URL (Kombu's ``;``-separated fail-over list: each one)."""
    problems = []
    for part in url.split(";"):
        scheme = _scheme(part)
        if scheme not in BROKER_TLS | IN_PROCESS:
            problems.append(f"{name} is {scheme or 'a URL without a scheme'}:// (use amqps://)")
    return problems


def redis_problems(name: str, url: str) -> list[str]:
    """What is insecure in a Redis URL: no TLS, or TLS that does not verify the server."""
    scheme = _scheme(url)
    if scheme not in REDIS_TLS:
        return [f"{name} is {scheme or 'a URL without a scheme'}:// (use rediss://)"]
    checks = parse_qs(urlsplit(url).query).get("ssl_cert_reqs", [])
    if any(value.strip().lower() in UNVERIFIED for value in checks):
        return [f"{name} is rediss:// with ssl_cert_reqs={checks[0]} (the certificate must be verified)"]
    return []


def management_problems(name: str, url: str | None) -> list[str]:
    """What is insecure in a management API URL, or a cluster's ``;``-separated list of them (None: derived
    from the broker's, checked there)."""
    if url is None:
        return []
    schemes = {_scheme(part) for part in url.split(";") if part.strip()} or {""}
    return [
        f"{name} is {scheme or 'a URL without a scheme'}:// (use https://)"
        for scheme in sorted(schemes - MANAGEMENT_TLS)
    ]


def sentinel_problems(name: str, sentinels: tuple[tuple[str, int], ...]) -> list[str]:
    """Sentinels are reached over plain TCP (tradebus has no Sentinel over TLS yet): refused when named."""
    return [f"{name} names sentinels, reached without TLS (unset it)"] if sentinels else []


def require(problems: list[str]) -> None:
    """Raise InsecureConnection naming every problem, if there is any."""
    if problems:
        raise InsecureConnection(problems)
