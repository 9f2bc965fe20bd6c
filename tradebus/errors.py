"""Every error tradebus raises, under one base class, and every reason a message is dead-lettered.

These are the core's errors. A profile's refusals (an order a rule refuses, a stale order:
tradebus/mastertrade/errors.py) subclass InvalidMessage, so a stage dead-letters them with their reason,
which is one of ``Reason``'s.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a message was dead-lettered: the ``x-tradebus-reason`` header, one value per cause."""

    INVALID_MESSAGE = "invalid_message"
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    MISROUTED = "misrouted"
    MESSAGE_TOO_LARGE = "message_too_large"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    BAD_SIGNATURE = "bad_signature"
    UNSIGNED = "unsigned"
    UNTRUSTED_SIGNER = "untrusted_signer"
    STALE_SIGNATURE = "stale_signature"
    REPLAYED = "replayed"
    #: A stage raised while handling a valid message.
    STAGE_ERROR = "stage_error"
    #: A client's subscription handler raised (tradebus/letrade/bus.py).
    HANDLER_ERROR = "handler_error"
    #: A transient failure outlasted every retry.
    MAX_RETRIES = "max_retries"
    #: An operator revoked the message.
    REVOKED = "revoked"
    #: Redelivered more than MAX_REDELIVERIES times: it kills the process running it.
    REDELIVERY_LIMIT = "redelivery_limit"
    #: Domain refusals: an order too old to fill, an order a rule refuses.
    STALE = "stale"
    ORDER_REFUSED = "order_refused"
    #: A sensitive field cannot be decrypted: unknown key id, tampered, or sent in plaintext.
    UNDECRYPTABLE = "undecryptable"


class TradebusError(Exception):
    """Base class for every tradebus error."""


class InvalidMessage(TradebusError, ValueError):
    """A message does not match the wire contract (schema, JSON, type or size)."""

    #: A short machine-readable reason, written into dead-letter headers.
    reason = Reason.INVALID_MESSAGE


class InvalidJSON(InvalidMessage):
    """A message body is not valid JSON."""

    reason = Reason.INVALID_JSON


class SchemaViolation(InvalidMessage):
    """A message is JSON but breaks its schema."""

    reason = Reason.SCHEMA_VIOLATION


class UnknownMessageType(InvalidMessage):
    """A message's ``type`` is not one this stage (or the bus) knows."""

    reason = Reason.UNKNOWN_MESSAGE_TYPE


class Misrouted(InvalidMessage):
    """A message arrived on a queue its own payload does not route to."""

    reason = Reason.MISROUTED


class MessageTooLarge(InvalidMessage):
    """A message is over the 128 KB limit."""

    reason = Reason.MESSAGE_TOO_LARGE


class UnsupportedContentType(InvalidMessage):
    """A message is not JSON (pickle and every other serializer are refused unread)."""

    reason = Reason.UNSUPPORTED_CONTENT_TYPE


class SignatureRejected(InvalidMessage):
    """A message's signature does not prove who sent it and when; it is dead-lettered, never executed."""

    reason = Reason.BAD_SIGNATURE


class Unsigned(SignatureRejected):
    """Signing is required and the message carries no signature."""

    reason = Reason.UNSIGNED


class UntrustedSigner(SignatureRejected):
    """The message is signed by a service whose key this one does not trust."""

    reason = Reason.UNTRUSTED_SIGNER


class BadSignature(SignatureRejected):
    """The signature does not match the message (tampered, wrong key, or malformed)."""

    reason = Reason.BAD_SIGNATURE


class StaleSignature(SignatureRejected):
    """The message was signed outside the accepted time window."""

    reason = Reason.STALE_SIGNATURE


class Replayed(SignatureRejected):
    """This signed message (signer, message id, attempt) was already accepted on this queue."""

    reason = Reason.REPLAYED


class Undecryptable(InvalidMessage):
    """A sensitive field is not ciphertext this service can open (unknown key id, tampered, or plaintext)."""

    reason = Reason.UNDECRYPTABLE


class Transient(TradebusError):
    """A failure that may pass on its own (a service down, a timeout); the stage retries it."""


class WrongStage(TradebusError, TypeError):
    """A message was handed to a stage that does not accept its type."""


class SignatureCheckUnavailable(Transient):
    """The replay check could not reach Redis: the message is retried, never passed unchecked."""


class PublishFailed(Transient):
    """The broker did not confirm a publish, so it must not be reported as sent."""


class TopologyConflict(TradebusError):
    """A live queue or exchange exists with arguments other than the topology's."""

    def __init__(self, differences: list[tuple[str, str, object, object]]) -> None:
        self.differences = differences
        rows = "; ".join(f"{obj} {arg}: live {live}, wanted {want}" for obj, arg, live, want in differences)
        super().__init__(f"the broker differs from the topology: {rows}")


class RequestTimeout(TradebusError, TimeoutError):
    """A request on the bus got no response in time."""


class RequestRefused(TradebusError):
    """A request on the bus was dead-lettered instead of answered."""


class BrokerUnreachable(TradebusError):
    """The broker (or its management API) could not be reached."""


class ManagementNotConnected(BrokerUnreachable):
    """A node's management API took no connection: nothing was sent, so another node may be asked."""


class ManagementAPIError(TradebusError):
    """The RabbitMQ management API answered with an error."""


class UnknownPool(TradebusError, KeyError):
    """No worker pool profile has that name."""


class ShardConcurrency(TradebusError, ValueError):
    """A worker would run more than one process on a shard queue (a symbol's order needs one)."""


class SettingsError(TradebusError, ValueError):
    """A ``TRADEBUS_*`` variable holds a value tradebus cannot use."""


class EncryptionUnavailable(TradebusError):
    """A message carries a sensitive value and no encryption key is configured: it is never sent."""


class FlowerRefused(TradebusError):
    """Flower would be reachable without authentication, so it does not start."""


class BadSubscription(TradebusError, ValueError):
    """A subscription pattern that cannot match any message of the bus."""


class StateContention(Transient):
    """A Redis transaction kept losing to concurrent writers; the message is retried later."""


class NotReplicated(Transient):
    """A durable write reached fewer Redis replicas than asked in time: it is not taken as done."""


class InsecureConnection(TradebusError):
    """``TRADEBUS_REQUIRE_TLS=1`` and a setting names a connection without TLS: nothing connects."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("TRADEBUS_REQUIRE_TLS=1 refuses connections without TLS: " + "; ".join(problems))


class MetricsUnavailable(TradebusError):
    """A worker asked to export metrics cannot (its port is taken, say)."""


class MigrationBlocked(TradebusError):
    """A queue cannot change type now: something still consumes it (stop its workers first)."""


class DeliveriesFailed(TradebusError):
    """Deliveries of a batch (their positions) failed even to dead-letter: only they go back to the queue."""

    def __init__(self, positions: list[int]) -> None:
        super().__init__(positions)
        self.positions = positions
