"""Every error tradebus raises, under one base class."""

from __future__ import annotations


class TradebusError(Exception):
    """Base class for every tradebus error."""


class InvalidMessage(TradebusError, ValueError):
    """A message does not match the wire contract (schema, JSON, type or size)."""

    #: A short machine-readable reason, written into dead-letter headers.
    reason = "invalid_message"


class InvalidJSON(InvalidMessage):
    """A message body is not valid JSON."""

    reason = "invalid_json"


class SchemaViolation(InvalidMessage):
    """A message is JSON but breaks its schema."""

    reason = "schema_violation"


class UnknownMessageType(InvalidMessage):
    """A message's ``type`` is not one this stage (or the bus) knows."""

    reason = "unknown_message_type"


class Misrouted(InvalidMessage):
    """A message arrived on a queue its own payload does not route to."""

    reason = "misrouted"


class MessageTooLarge(InvalidMessage):
    """A message is over the 128 KB limit."""

    reason = "message_too_large"


class UnsupportedContentType(InvalidMessage):
    """A message is not JSON (pickle and every other serializer are refused unread)."""

    reason = "unsupported_content_type"


class SignatureRejected(InvalidMessage):
    """A message's signature does not prove who sent it and when; it is dead-lettered, never executed."""

    reason = "bad_signature"


class Unsigned(SignatureRejected):
    """Signing is required and the message carries no signature."""

    reason = "unsigned"


class UntrustedSigner(SignatureRejected):
    """The message is signed by a service whose key this one does not trust."""

    reason = "untrusted_signer"


class BadSignature(SignatureRejected):
    """The signature does not match the message (tampered, wrong key, or malformed)."""

    reason = "bad_signature"


class StaleSignature(SignatureRejected):
    """The message was signed outside the accepted time window."""

    reason = "stale_signature"


class Replayed(SignatureRejected):
    """This signed message (signer, message id, attempt) was already accepted on this queue."""

    reason = "replayed"


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


class StaleMessage(InvalidMessage):
    """A signal or an order too old to act on (a late redelivery or a replay): trading on it now is wrong."""

    reason = "stale"


class OrderRefused(InvalidMessage):
    """An order request the executor must never execute (not risk-approved, or not for paper trading)."""

    reason = "order_refused"


class BrokerUnreachable(TradebusError):
    """The broker (or its management API) could not be reached."""


class ManagementAPIError(TradebusError):
    """The RabbitMQ management API answered with an error."""


class UnknownPool(TradebusError, KeyError):
    """No worker pool profile has that name."""


class SettingsError(TradebusError, ValueError):
    """A ``TRADEBUS_*`` variable holds a value tradebus cannot use."""


class FlowerRefused(TradebusError):
    """Flower would be reachable without authentication, so it does not start."""


class BadSubscription(TradebusError, ValueError):
    """A subscription pattern that cannot match any message of the bus."""


class StateContention(Transient):
    """A Redis transaction kept losing to concurrent writers; the message is retried later."""
