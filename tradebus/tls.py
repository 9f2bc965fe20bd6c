"""TLS to RabbitMQ: ``amqps://`` URLs and certificate files from the environment, as Celery wants them.

``TRADEBUS_BROKER_URL=amqps://...`` turns TLS on; ``TRADEBUS_BROKER_CA_FILE`` names the CA that signed the
broker's certificate (default: the system's CAs), ``TRADEBUS_BROKER_CERT_FILE`` and
``TRADEBUS_BROKER_KEY_FILE`` a client certificate for brokers that ask for one, and
``TRADEBUS_BROKER_TLS_SERVER_NAME`` the name the broker's certificate must carry when it is not the URL's
host. The certificate is always verified and its name always checked: Kombu's bare ``amqps://`` verifies the
chain but skips the name check, which is why tradebus always hands Celery an explicit ``broker_use_ssl``.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kombu import Connection

from tradebus.errors import SettingsError
from tradebus.settings import Settings, TLSSettings


def uses_tls(broker_url: str) -> bool:
    """Whether the broker URL asks for TLS."""
    return urlsplit(broker_url).scheme in {"amqps", "pyamqps"}


def broker_use_ssl(settings: Settings) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for ``settings``, or None when the broker URL is plain ``amqp://``.

    Certificate settings with a plain URL are refused: they would suggest an encryption that is not there.
    """
    tls = settings.tls
    if not uses_tls(settings.broker_url):
        if tls.has_certificates:
            raise SettingsError(
                "TRADEBUS_BROKER_*_FILE / TRADEBUS_BROKER_TLS_SERVER_NAME are set but TRADEBUS_BROKER_URL is "
                "not amqps://; use amqps:// (usually port 5671) or unset them"
            )
        return None
    options: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED,
        # None: Kombu fills in the host of the URL, so the certificate's name is checked against it.
        "server_hostname": tls.server_name,
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
    }
    if tls.ca_file:
        options["ca_certs"] = tls.ca_file
    if tls.cert_file:
        options["certfile"] = tls.cert_file
        options["keyfile"] = tls.key_file
    return options


def broker_connection(settings: Settings, url: str | None = None, **options: Any) -> Connection:
    """A Kombu connection to ``url`` (default: the settings' broker) with the settings' TLS options, as
    Celery's own connections have them (``amqps://`` then verifies with ``TRADEBUS_BROKER_CA_FILE``)."""
    target = settings if url is None or url == settings.broker_url else settings.with_(broker_url=url)
    return Connection(target.broker_url, ssl=broker_use_ssl(target) or False, **options)


def redis_backend_use_ssl(settings: Settings) -> dict[str, Any] | None:
    """Celery's ``redis_backend_use_ssl`` for a ``rediss://`` URL that does not say ``ssl_cert_reqs``:
    verify the certificate, as redis-py does by default (Celery refuses such a URL otherwise). The CA and a
    client certificate travel in the URL (``?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...``), which
    both redis-py and Celery read."""
    parts = urlsplit(settings.redis_url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def client_context(tls: TLSSettings) -> ssl.SSLContext:
    """An ``ssl`` context for https to the management API: the broker's CA, and its client certificate."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context
