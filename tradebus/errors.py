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


class WrongStage(TradebusError, TypeError):
    """A message was handed to a stage that does not accept its type."""


class PublishFailed(TradebusError):
    """The broker did not confirm a publish, so it must not be reported as sent."""


class TopologyConflict(TradebusError):
    """A live queue or exchange exists with arguments other than the topology's."""

    def __init__(self, differences: list[tuple[str, str, object, object]]) -> None:
        self.differences = differences
        rows = "; ".join(f"{obj} {arg}: live {live}, wanted {want}" for obj, arg, live, want in differences)
        super().__init__(f"the broker differs from the topology: {rows}")


class BrokerUnreachable(TradebusError):
    """The broker (or its management API) could not be reached."""


class ManagementAPIError(TradebusError):
    """The RabbitMQ management API answered with an error."""


class UnknownPool(TradebusError, KeyError):
    """No worker pool profile has that name."""
