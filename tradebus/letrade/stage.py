"""Letrade stages: tradebus's stage machinery (tradebus/stage.py), reading the Letrade envelope.

A Letrade service consumes one inbox queue (routing/letrade.py), so several stages share it, each taking
the routing keys of one message (``keys``). A body is validated against the payload its routing key names;
retries follow the seed's policy (3, 5000 ms, x2) through ``letrade.retry``, and what fails for good goes
to ``letrade.dlq`` with its routing key plus ``.dead`` and the reason in its headers.

A market-data stage also takes batched candles (tradebus/letrade/feed.py, docs/letrade.md "Batched market
data"): each candle validated on its own, an invalid one dead-lettered alone, the others handled at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from celery import Celery
from celery.utils.log import get_task_logger

from routing.letrade import ROUTES
from tradebus import headers as h
from tradebus import metrics, recorder, registry
from tradebus.application import current, running
from tradebus.deadletter import dead_letter
from tradebus.errors import InvalidMessage, Reason, SignatureCheckUnavailable
from tradebus.letrade import feed, tokens
from tradebus.letrade.messages import (
    STRATEGY_HEADER,
    CandleBatchMessage,
    Envelope,
    MarketDataMessage,
    encode,
    is_batch,
    parse,
)
from tradebus.publisher import send
from tradebus.retries import is_transient
from tradebus.settings import Settings
from tradebus.stage import StageTask

logger = get_task_logger(__name__)

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

    # --- batched market data (tradebus/letrade/feed.py) -------------------------------------------------
    #: A market-data stage's ``fn(batch)``, run once per batched message with its valid candles; without
    #: one, the stage's own function runs once per candle.
    candle_batch_handler: Callable[[CandleBatchMessage], Any] | None = None

    def run_stage(self, payload: Any) -> Any:
        """A batched market-data message takes the batch path; anything else is one message."""
        if CandleBatchMessage in self.accepts and isinstance(payload, str | bytes) and is_batch(payload):
            with running(self.app):
                return self._run_batch(payload)
        return super().run_stage(payload)

    def _run_batch(self, payload: str | bytes) -> None:
        """Validate each candle on its own, dead-letter the invalid ones alone, handle the rest at once."""
        content_type = self.headers.get(h.CONTENT_TYPE)
        try:
            self.authenticate(payload, content_type)
            received = feed.receive(payload, self.origin()[1], content_type)
            if problem := self.mismatch(received.batch):
                raise problem
        except InvalidMessage as exc:
            self.dead_letter(payload, exc.reason, str(exc))
            return
        except SignatureCheckUnavailable as exc:
            self.retry_or_give_up(payload, exc)
            return
        if not self.request.retries:  # a retry's invalid candles were dead-lettered by its first attempt
            for rejected in received.rejected:
                self._dead_letter_candle(rejected)
        batch = received.batch
        if not batch.payload.candles:
            return
        if self.over_redelivery_limit():
            self.dead_letter(payload, Reason.REDELIVERY_LIMIT, "redelivered too many times; it may crash")
            return
        self._record_batch(batch)
        try:
            if self.candle_batch_handler is not None:
                self.candle_batch_handler(batch)
            else:
                for candle in feed.candles(batch):
                    self.handler(candle)
        except InvalidMessage as exc:
            self.dead_letter(encode(batch), exc.reason, str(exc))
        except Exception as exc:  # every failure ends in a retry or the DLQ with its reason
            if is_transient(exc):
                self.retry_or_give_up(payload, exc)
                return
            logger.exception("%s: stage %s failed on batch %s", self.queue_name, self.name, self.request.id)
            self.dead_letter(encode(batch), Reason.STAGE_ERROR, f"{type(exc).__name__}: {exc}")

    def _dead_letter_candle(self, rejected: feed.Rejected) -> None:
        """One invalid candle of a batch, alone, as the single-candle message it stood for."""
        exchange, routing_key = self.origin()
        logger.warning(
            "%s: dead-lettering candle %s: %s", self.queue_name, rejected.message_id, rejected.error
        )
        dead_letter(
            self.app,
            rejected.body,
            queue=self.queue_name,
            reason=rejected.error.reason,
            error=str(rejected.error),
            delivery_info={"exchange": exchange, "routing_key": routing_key},
            message_id=rejected.message_id,
        )
        # A dead letter of its own; the message it came in stays a success (its other candles ran).
        metrics.dead_lettered(self.queue_name, self.name, rejected.error.reason)

    def _record_batch(self, batch: CandleBatchMessage) -> None:
        """Note the delivery, counted as its candles (Redis down must not stop the stage)."""
        published = self.headers.get(h.PUBLISHED_AT)
        latency = (time.time() - float(published)) * 1000 if published and not self.request.retries else None
        entry = {
            "id": self.request.id,
            "type": batch.type,
            "exchange": batch.exchange,
            "routing_key": batch.routing_key,
            "candles": len(batch.payload.candles),
            "redelivered": bool((self.request.delivery_info or {}).get("redelivered")),
            "retries": self.request.retries or 0,
        }
        try:
            recorder.record(self.queue_name, self.name, entry, latency, count=len(batch.payload.candles))
        except Exception as exc:  # noqa: BLE001 - observability must never cost a message
            logger.warning("%s: could not record %s: %s", self.queue_name, self.request.id, exc)


def letrade_stage(
    name: str,
    *,
    queue: str,
    accepts: type[Envelope],
    batch: Callable[[CandleBatchMessage], Any] | None = None,
    **options: Any,
) -> Callable[[Callable[[Any], R]], Any]:
    """Make ``fn(message)`` the stage ``name`` for ``accepts`` messages arriving on inbox ``queue``.

    A market-data stage also takes batched candles (tradebus/letrade/feed.py): ``batch(batch_message)``
    handles a batch's valid candles at once, else ``fn`` runs once per candle.
    """
    pattern = ROUTES[accepts.route_name].pattern
    accepted: tuple[type[Envelope], ...] = (accepts,)
    if accepts is MarketDataMessage:
        accepted = (MarketDataMessage, CandleBatchMessage)
        if batch is not None:
            options["candle_batch_handler"] = staticmethod(batch)
    elif batch is not None:
        raise TypeError(f"stage {name}: only a market-data stage takes batches")
    return registry.stage(
        name, queue=queue, accepts=accepted, keys=(pattern,), base=LetradeStageTask, **options
    )
