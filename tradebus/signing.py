"""Message signing: HMAC-SHA256 over the canonical message, a time window, and replay protection in Redis.

A service with a key (``TRADEBUS_SIGNING_SERVICE`` / ``TRADEBUS_SIGNING_KEY``) signs everything it publishes
through ``tradebus.publisher.send``. A worker with ``TRADEBUS_SIGNING_REQUIRED=1`` verifies every delivery
before it even parses it; a message that is unsigned, signed by a key it does not trust, tampered with,
signed outside the window or seen before is dead-lettered with the reason, never executed.

The canonical form (docs/security.md) is the UTF-8 of these lines joined by ``\\n``, none of which may
itself contain a newline::

    tradebus-v1
    <signer>          the service name, the key's id
    <message id>      the AMQP message_id (required: it is the replay nonce)
    <attempt>         0 when published; a retry is re-signed by the worker with its retry number
    <signed at>       integer Unix milliseconds
    <exchange>        the exchange the message was published to
    <routing key>
    <content type>
    <sha256 of the body, lower-case hex>

Headers: ``x-tradebus-signer``, ``x-tradebus-signed-at`` (milliseconds) and ``x-tradebus-signature``
(``v1=<hex HMAC-SHA256 of the canonical form>``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

import redis

from tradebus import store
from tradebus.application import current_settings
from tradebus.codec import wire_bytes
from tradebus.errors import (
    BadSignature,
    Replayed,
    SignatureCheckUnavailable,
    StaleSignature,
    Unsigned,
    UntrustedSigner,
)
from tradebus.headers import SIGNATURE, SIGNED_AT, SIGNER
from tradebus.settings import SigningSettings

HEADERS = (SIGNER, SIGNATURE, SIGNED_AT)
VERSION = "v1"
DOMAIN = f"tradebus-{VERSION}"


def current() -> SigningSettings:
    """This process's signing settings (``TRADEBUS_SIGNING_*``)."""
    return current_settings().signing


def canonical(
    *,
    signer: str,
    message_id: str,
    attempt: int,
    signed_at: int,
    exchange: str,
    routing_key: str,
    content_type: str,
    body: bytes,
) -> bytes:
    """The bytes a signature covers; BadSignature if a field could be confused with the next one."""
    fields = [DOMAIN, signer, message_id, str(attempt), str(signed_at), exchange, routing_key, content_type]
    if any("\n" in f or "\r" in f for f in fields):
        raise BadSignature("a signed field contains a line break")
    return "\n".join([*fields, hashlib.sha256(body).hexdigest()]).encode()


def _mac(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def sign(
    body: bytes,
    *,
    service: str,
    key: str,
    message_id: str,
    exchange: str,
    routing_key: str,
    content_type: str,
    attempt: int = 0,
    now: float | None = None,
) -> dict[str, Any]:
    """The signature headers for a message (what any publisher, tradebus or not, adds)."""
    signed_at = int((time.time() if now is None else now) * 1000)
    form = canonical(
        signer=service,
        message_id=message_id,
        attempt=attempt,
        signed_at=signed_at,
        exchange=exchange,
        routing_key=routing_key,
        content_type=content_type,
        body=body,
    )
    return {SIGNER: service, SIGNED_AT: signed_at, SIGNATURE: f"{VERSION}={_mac(key, form)}"}


def outgoing(
    body: bytes,
    *,
    message_id: str,
    exchange: str,
    routing_key: str,
    content_type: str,
    settings: SigningSettings | None = None,
) -> dict[str, Any]:
    """Signature headers for a publish by this process, or none when it has no key (``send`` calls it)."""
    settings = settings or current()
    if settings.service is None or settings.key is None:
        return {}
    return sign(
        body,
        service=settings.service,
        key=settings.key.get_secret_value(),
        message_id=message_id,
        exchange=exchange,
        routing_key=routing_key,
        content_type=content_type,
    )


def verify(
    body: bytes,
    headers: Mapping[str, Any],
    *,
    message_id: str,
    attempt: int,
    exchange: str,
    routing_key: str,
    content_type: str,
    settings: SigningSettings,
    now: float | None = None,
) -> str:
    """Check the signature of a message; returns the signer, or raises the SignatureRejected saying why.

    The replay check is separate (:func:`claim`): a signature is checked first, so forgeries never reach
    Redis.
    """
    signer, signature, signed_at = (headers.get(name) for name in HEADERS)
    if signer is None and signature is None and signed_at is None:
        raise Unsigned("the message carries no signature and signing is required")
    if not isinstance(signer, str) or not isinstance(signature, str) or signed_at is None:
        raise BadSignature(f"incomplete signature headers: {', '.join(HEADERS)} are all required")
    secret = settings.trusted.get(signer)
    if secret is None:
        raise UntrustedSigner(f"signed by {signer!r}, whose key this service does not trust")
    key = secret.get_secret_value()
    try:
        signed_ms = int(signed_at)
    except (TypeError, ValueError):
        raise BadSignature(f"{SIGNED_AT} is not an integer of milliseconds: {signed_at!r}") from None
    scheme, _, mac = signature.partition("=")
    if scheme != VERSION:
        raise BadSignature(f"unknown signature scheme {scheme!r}; this service verifies {VERSION}")
    form = canonical(
        signer=signer,
        message_id=message_id,
        attempt=attempt,
        signed_at=signed_ms,
        exchange=exchange,
        routing_key=routing_key,
        content_type=content_type,
        body=body,
    )
    if not hmac.compare_digest(_mac(key, form), mac):
        raise BadSignature(f"the signature of {signer!r} does not match the message (altered or wrong key)")
    age = (time.time() if now is None else now) - signed_ms / 1000
    if abs(age) > settings.window:
        when = "in the future" if age < 0 else "ago"
        raise StaleSignature(f"signed {abs(age):.0f}s {when}; the window is {settings.window:.0f}s")
    return signer


def claim(
    queue: str,
    signer: str,
    message_id: str,
    attempt: int,
    *,
    window: float,
    redelivered: bool,
    signed_at: int = 0,
) -> None:
    """Note the first acceptance of this message on ``queue``; Replayed if it was accepted before.

    The nonce is (signer, message id, attempt, signed at): a retry is re-signed with its own attempt
    number, so the worker's own retry is never mistaken for a replay; an outcome its publisher sends again
    after a crash (tradebus/outcomes.py: the same message id) is signed anew, a later ``signed at``, so it
    passes here and the stage drops it as a repeat (tradebus/seen.py) instead of dead-lettering it as a
    forgery. A copy of the signed bytes, which only someone without the key would send, is a replay. A
    broker redelivery (``redelivered``, set by RabbitMQ and not by any publisher) of a message this queue
    already claimed is the same message coming back after a lost acknowledgement, not a replay. The key
    lives as long as a signature can pass the window.
    Redis unreachable raises SignatureCheckUnavailable (transient: the message is retried, never passed).
    """
    key = store.key("signing", "seen", queue, signer, f"{message_id}:{attempt}:{signed_at}")
    try:
        first = store.client().set(key, int(time.time()), nx=True, ex=int(2 * window) + 1)
    except (redis.RedisError, OSError) as exc:
        raise SignatureCheckUnavailable(f"replay check unavailable: {exc}") from exc
    if not first and not redelivered:
        raise Replayed(f"message {message_id!r} (attempt {attempt}) from {signer!r} was already accepted")


def as_bytes(payload: str | bytes) -> bytes:
    """The wire bytes of a payload the consumer handed over as text (bytes that are not UTF-8 included)."""
    return wire_bytes(payload)


def check_delivery(task: Any, payload: Any, content_type: str | None) -> None:
    """Verify the delivery ``task`` is running, when this worker requires signatures (StageTask calls it).

    Raises a SignatureRejected (dead-letter it) or SignatureCheckUnavailable (retry it).
    """
    settings: SigningSettings = task.app.settings.signing
    if not settings.required:
        return
    if not isinstance(payload, str | bytes):
        raise Unsigned("only a message from the broker can carry a signature")
    request = task.request
    exchange, routing_key = task.origin()
    attempt = request.retries or 0
    signer = verify(
        as_bytes(payload),
        task.headers,
        message_id=request.id or "",
        attempt=attempt,
        exchange=exchange,
        routing_key=routing_key,
        content_type=content_type or "",
        settings=settings,
    )
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    signed_at = int(task.headers.get(SIGNED_AT) or 0)  # verify() checked it is an integer
    claim(
        task.queue_name,
        signer,
        request.id,
        attempt,
        window=settings.window,
        redelivered=redelivered,
        signed_at=signed_at,
    )


def retry_headers(task: Any, content_type: str | None) -> dict[str, Any]:
    """Signature headers for the retry ``task`` is about to schedule: this worker vouches for the attempt.

    The original signature covered attempt 0 and was checked on arrival; the retry is a new message from
    this worker (its own key, attempt = retries + 1, a fresh timestamp), so the replay check and the window
    treat it as what it is.
    """
    settings: SigningSettings = task.app.settings.signing
    if settings.service is None or settings.key is None:
        return {}
    request = task.request
    args = request.args or ()
    payload = args[0] if args else b""
    if not isinstance(payload, str | bytes):
        return {}
    exchange, routing_key = task.origin()
    return sign(
        as_bytes(payload),
        service=settings.service,
        key=settings.key.get_secret_value(),
        message_id=request.id or "",
        exchange=exchange,
        routing_key=routing_key,
        content_type=content_type or "",
        attempt=(request.retries or 0) + 1,
    )
