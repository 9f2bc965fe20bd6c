"""Letrade stages: tradebus's stage machinery (tradebus/stage.py), reading the Letrade envelope.

A Letrade service consumes one inbox queue (routing/letrade.py), so several stages share it, each taking
the routing keys of one message (``keys``). A body is validated against the payload its routing key names;
retries follow the seed's policy (3, 5000 ms, x2) through ``letrade.retry``, and what fails for good goes
to ``letrade.dlq`` with its routing key plus ``.dead`` and the reason in its headers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from celery import Celery

from routing.letrade import ROUTES
from tradebus import headers as h
from tradebus import registry
from tradebus.application import current
from tradebus.letrade import tokens
from tradebus.letrade.messages import STRATEGY_HEADER, Envelope, encode, parse
from tradebus.publisher import send
from tradebus.settings import Settings
from tradebus.stage import StageTask

R = TypeVar("R")


def wire(
    message: Envelope,
    settings: Settings,
    *,
    strategy_id: int | None = None,
    headers: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The body of ``message`` (validated, 128 KB at most, sensitive fields sealed) and its Letrade headers:
    type, strategy and, when this service has a key, the seed's JWT. Pure: both clients and every stage
    publish a Letrade message as this makes it, through tradebus/publisher.py's ``outgoing``.

    ``strategy_id`` names the strategy of a message whose payload does not (an allocation response).
    """
    body = encode(message, settings.encryption.keyring)
    strategy = strategy_id if strategy_id is not None else message.strategy_id
    extra = {h.TYPE: message.type, **(headers or {})}
    if strategy is not None:
        extra[STRATEGY_HEADER] = strategy
    # The seed's JWT, when this service has a key (tradebus/letrade/tokens.py), in a header: the envelope
    # keeps exactly its four fields.
    extra |= tokens.outgoing(
        body, message_id=message.message_id, source=message.source, settings=settings.jwt
    )
    return body, extra


def publish(
    message: Envelope,
    *,
    strategy_id: int | None = None,
    headers: Mapping[str, Any] | None = None,
    app: Celery | None = None,
) -> str:
    """Publish ``message`` on its exchange and key, with its priority, confirmed; returns its message id."""
    app = app or current()
    body, extra = wire(message, app.settings, strategy_id=strategy_id, headers=headers)
    return send(
        app,
        body,
        exchange=message.exchange,
        routing_key=message.routing_key,
        message_id=message.message_id,
        headers=extra,
        persistent=message.route.persistent,
        priority=message.route.priority,
    )


class LetradeStageTask(StageTask):
    """A stage of a Letrade inbox: parses the envelope its routing key names."""

    message_base = Envelope

    @staticmethod
    def type_name(cls: type[Any]) -> str:
        """Letrade names a message by its route."""
        return str(cls.route_name)

    def authenticate(self, payload: Any, content_type: str | None) -> None:
        """tradebus's signature when required, then the seed's JWT when required (``TRADEBUS_JWT_*``)."""
        super().authenticate(payload, content_type)
        tokens.check_delivery(self, payload)

    def retry_credentials(self, content_type: str | None) -> dict[str, Any]:
        """This worker's signature and JWT for the retry it schedules."""
        return {**super().retry_credentials(content_type), **tokens.retry_headers(self)}

    def decode(self, payload: Any, content_type: str | None) -> Any:
        """Validate ``payload`` as the message its original routing key names, or raise InvalidMessage."""
        _, routing_key = self.origin()
        return parse(payload, routing_key, content_type, self.app.settings.encryption.keyring)

    def send_message(self, message: Any, message_id: str | None) -> str:
        """Publish the Letrade message on its route, with its priority."""
        return publish(message, app=self.app)


def letrade_stage(
    name: str, *, queue: str, accepts: type[Envelope], **options: Any
) -> Callable[[Callable[[Any], R]], Any]:
    """Make ``fn(message)`` the stage ``name`` for ``accepts`` messages arriving on inbox ``queue``."""
    pattern = ROUTES[accepts.route_name].pattern
    return registry.stage(
        name, queue=queue, accepts=accepts, keys=(pattern,), base=LetradeStageTask, **options
    )
