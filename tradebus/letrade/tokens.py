"""Letrade's per-message JWT (the seed: "a JWT token in each message, signature verified").

A Letrade service with a key (``TRADEBUS_JWT_SERVICE`` / ``TRADEBUS_JWT_KEY``) puts a token in the
``x-letrade-jwt`` header of everything it publishes (tradebus/letrade/stage.py: ``publish``); the envelope
itself stays exactly the seed's four fields. A stage or a ``LetradeBus`` subscriber with
``TRADEBUS_JWT_REQUIRED=1`` verifies it before it parses the body, and dead-letters what fails with the
signing reasons: ``unsigned``, ``bad_signature``, ``untrusted_signer``, ``stale_signature``, ``replayed``.

The token (docs/security.md, "Letrade's JWT"): HS256 only, whatever its header says; claims

    iss           the issuing service, the key's id: the envelope's ``source``; a retry's is the worker's
    aud           ``TRADEBUS_JWT_AUDIENCE`` (``letrade``)
    iat, exp      issued at, and ``TRADEBUS_JWT_TTL`` (60 s) later
    jti           the AMQP message id (the envelope's ``message_id``): the replay nonce
    body_sha256   lower-case hex SHA-256 of the body exactly as sent, which binds the token to its message
    attempt       0 when published; a retry's token, issued by the worker that schedules it, its number
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
import redis

from tradebus import store
from tradebus.codec import wire_bytes
from tradebus.errors import (
    BadSignature,
    Replayed,
    SettingsError,
    SignatureCheckUnavailable,
    StaleSignature,
    Unsigned,
    UntrustedSigner,
)
from tradebus.settings import JWTSettings

#: The AMQP header a Letrade message carries its token in.
TOKEN_HEADER = "x-letrade-jwt"
#: The one algorithm issued and accepted; a token's own ``alg`` never chooses it.
ALGORITHM = "HS256"
#: Seconds of clock difference tolerated between services, on ``exp`` and ``iat``.
LEEWAY = 5.0
REQUIRED_CLAIMS = ("iss", "aud", "iat", "exp", "jti", "body_sha256")


def digest(body: bytes) -> str:
    """The ``body_sha256`` claim of ``body``."""
    return hashlib.sha256(body).hexdigest()


def issue(
    body: bytes,
    *,
    issuer: str,
    key: str,
    message_id: str,
    audience: str,
    ttl: float,
    attempt: int = 0,
    now: float | None = None,
) -> str:
    """A token for the message ``body`` with id ``message_id`` (what any Letrade publisher, tradebus or
    not, adds in the ``x-letrade-jwt`` header)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + int(ttl),
        "jti": message_id,
        "body_sha256": digest(body),
    }
    if attempt:
        claims["attempt"] = attempt
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def outgoing(body: bytes, *, message_id: str, source: str, settings: JWTSettings) -> dict[str, Any]:
    """The token header of a message this process publishes, or none when it has no key.

    A token's issuer is the envelope's source: a process issues tokens for its own service only.
    """
    if settings.service is None or settings.key is None:
        return {}
    if source != settings.service:
        raise SettingsError(
            f"TRADEBUS_JWT_SERVICE is {settings.service!r}: this process cannot issue the token of a "
            f"message from {source!r}"
        )
    token = issue(
        body,
        issuer=settings.service,
        key=settings.key.get_secret_value(),
        message_id=message_id,
        audience=settings.audience,
        ttl=settings.ttl,
    )
    return {TOKEN_HEADER: token}


def source_of(body: bytes) -> str | None:
    """The envelope's ``source``, or None when the body has none (the schema check then refuses it)."""
    try:
        envelope = json.loads(body)
    except ValueError:
        return None
    source = envelope.get("source") if isinstance(envelope, dict) else None
    return source if isinstance(source, str) else None


def verify(
    token: Any,
    body: bytes,
    *,
    message_id: str,
    attempt: int,
    source: str | None,
    settings: JWTSettings,
    now: float | None = None,
) -> Mapping[str, Any]:
    """Check the token of a message; returns its claims, or raises the SignatureRejected saying why.

    The issuer must be trusted, the signature HS256 under its key, the audience ours, the token unexpired
    and no longer-lived than ``settings.ttl``, and it must name this message: its id, the digest of its
    body, its attempt, and as issuer its envelope's source (or, for a retry, this worker itself). The
    replay check is separate (:func:`claim`).
    """
    if token is None or token == "":
        raise Unsigned("the message carries no JWT and one is required")
    if isinstance(token, bytes):
        token = token.decode(errors="replace")
    if not isinstance(token, str):
        raise BadSignature(f"{TOKEN_HEADER} is not a token")
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise BadSignature(f"malformed JWT: {exc}") from None
    if algorithm != ALGORITHM:
        raise BadSignature(f"JWT algorithm {algorithm!r} refused: Letrade tokens are {ALGORITHM} only")
    issuer = unverified.get("iss")
    if not isinstance(issuer, str):
        raise BadSignature("the JWT names no issuer (iss)")
    secret = settings.trusted.get(issuer)
    if secret is None:
        raise UntrustedSigner(f"JWT issued by {issuer!r}, whose key this service does not trust")
    at = time.time() if now is None else now
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret.get_secret_value(),
            algorithms=[ALGORITHM],
            audience=settings.audience,
            issuer=issuer,
            leeway=LEEWAY,
            options={"require": list(REQUIRED_CLAIMS), "verify_iat": False, "verify_exp": False},
        )
    except jwt.InvalidAudienceError:
        raise BadSignature(f"the JWT is not for audience {settings.audience!r}") from None
    except jwt.InvalidTokenError as exc:
        raise BadSignature(f"the JWT of {issuer!r} does not verify: {exc}") from None
    _check_time(claims, at, settings.ttl)
    _check_binding(claims, body, message_id=message_id, attempt=attempt, source=source, settings=settings)
    return claims


def _check_time(claims: Mapping[str, Any], now: float, ttl: float) -> None:
    issued, expires = claims["iat"], claims["exp"]
    if not isinstance(issued, int | float) or not isinstance(expires, int | float):
        raise BadSignature("the JWT's iat and exp must be numbers")
    if expires - issued > ttl + LEEWAY:
        raise StaleSignature(
            f"the JWT lives {expires - issued:.0f}s; this service accepts {ttl:.0f}s at most"
        )
    if issued > now + LEEWAY:
        raise StaleSignature(f"the JWT was issued {issued - now:.0f}s in the future")
    if now > expires + LEEWAY:
        raise StaleSignature(f"the JWT expired {now - expires:.0f}s ago")


def _check_binding(
    claims: Mapping[str, Any],
    body: bytes,
    *,
    message_id: str,
    attempt: int,
    source: str | None,
    settings: JWTSettings,
) -> None:
    issuer = claims["iss"]
    if not hmac.compare_digest(str(claims["body_sha256"]), digest(body)):
        raise BadSignature(f"the JWT of {issuer!r} does not match the message body (altered)")
    if claims["jti"] != message_id:
        raise BadSignature(f"the JWT is for message {claims['jti']!r}, not {message_id!r}")
    if claims.get("attempt", 0) != attempt:
        raise BadSignature(f"the JWT is for attempt {claims.get('attempt', 0)}, not {attempt}")
    # A published message's token comes from its source; a retry's from the worker that scheduled it.
    expected = source if attempt == 0 else settings.service
    if expected is not None and issuer != expected:
        raise BadSignature(f"the JWT was issued by {issuer!r} for a message from {expected!r}")


def claim(
    queue: str, claims: Mapping[str, Any], attempt: int, *, redelivered: bool, now: float | None = None
) -> None:
    """Note the first acceptance of this token's message on ``queue``; Replayed if it was accepted before.

    The nonce is (issuer, jti, attempt, iat), kept until the token can no longer pass: an event its
    publisher sends again after a crash (the same derived id, tradebus/outcomes.py) carries a token issued
    later, so it passes here and is dropped as a repeat instead of dead-lettered. A broker redelivery of
    a message the queue already claimed is not a replay (tradebus/signing.py: ``claim``). Redis unreachable
    raises SignatureCheckUnavailable (transient: retried, never passed).
    """
    issuer, jti = claims["iss"], claims["jti"]
    left = float(claims["exp"]) + LEEWAY - (time.time() if now is None else now)
    key = store.key("jwt", "seen", queue, issuer, f"{jti}:{attempt}:{claims['iat']}")
    try:
        first = store.client().set(key, int(time.time()), nx=True, ex=max(1, int(left) + 1))
    except (redis.RedisError, OSError) as exc:
        raise SignatureCheckUnavailable(f"JWT replay check unavailable: {exc}") from exc
    if not first and not redelivered:
        raise Replayed(f"message {jti!r} (attempt {attempt}) from {issuer!r} was already accepted")


def admit(
    settings: JWTSettings,
    queue: str,
    payload: Any,
    headers: Mapping[str, Any],
    *,
    message_id: str,
    attempt: int = 0,
    redelivered: bool = False,
) -> None:
    """Verify and claim the token of one delivery on ``queue`` when ``settings`` require one.

    Raises a SignatureRejected (dead-letter it) or SignatureCheckUnavailable (retry it).
    """
    if not settings.required:
        return
    if not isinstance(payload, str | bytes):
        raise Unsigned("only a message from the broker can carry a JWT")
    body = wire_bytes(payload)
    claims = verify(
        headers.get(TOKEN_HEADER),
        body,
        message_id=message_id,
        attempt=attempt,
        source=source_of(body),
        settings=settings,
    )
    claim(queue, claims, attempt, redelivered=redelivered)


def check_delivery(task: Any, payload: Any) -> None:
    """Verify the token of the delivery a Letrade stage is running (LetradeStageTask calls it)."""
    request = task.request
    admit(
        task.app.settings.jwt,
        task.queue_name,
        payload,
        task.headers,
        message_id=request.id or "",
        attempt=request.retries or 0,
        redelivered=bool((request.delivery_info or {}).get("redelivered")),
    )


def retry_headers(task: Any) -> dict[str, Any]:
    """The token of the retry ``task`` is about to schedule: this worker vouches for the attempt it
    verified, with its own key (the original token covered attempt 0 and may expire before the retry)."""
    settings: JWTSettings = task.app.settings.jwt
    request = task.request
    args = request.args or ()
    payload = args[0] if args else None
    if settings.service is None or settings.key is None or not isinstance(payload, str | bytes):
        return {}
    token = issue(
        wire_bytes(payload),
        issuer=settings.service,
        key=settings.key.get_secret_value(),
        message_id=request.id or "",
        audience=settings.audience,
        ttl=settings.ttl,
        attempt=(request.retries or 0) + 1,
    )
    return {TOKEN_HEADER: token}
