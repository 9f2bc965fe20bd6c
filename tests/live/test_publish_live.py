"""Publishing on a real broker: a publish the broker does not confirm raises, it never passes for sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from kombu import Exchange, Queue

from tests.support.bus import MASTERTRADE, SETTINGS, Vhost
from tradebus.application import create_app
from tradebus.errors import PublishFailed
from tradebus.publisher import send

pytestmark = pytest.mark.broker


def _drain(vhost: Vhost, queue: str) -> list[bytes]:
    with vhost.connection() as conn:
        channel = conn.channel()
        bodies = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            body = message.body
            bodies.append(body if isinstance(body, bytes) else body.encode())
    return bodies


@pytest.fixture
def app_on(fresh_vhost: Vhost) -> Iterator[Celery]:
    """A tradebus app publishing to a fresh vhost with confirms, as tradebus's does."""
    app = create_app(MASTERTRADE, SETTINGS.with_(broker_url=fresh_vhost.url), main="publisher")
    app.conf.broker_transport_options = {"confirm_publish": True}
    yield app
    app.close()


def test_publish_the_broker_nacks_raises_publish_failed(fresh_vhost: Vhost, app_on: Celery) -> None:
    with fresh_vhost.connection() as conn:
        channel = conn.channel()
        exchange = Exchange("full", type="direct", durable=True)
        Queue(
            "one-slot",
            exchange,
            routing_key="k",
            queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
        )(channel).declare()
    send(app_on, b"first", exchange="full", routing_key="k")
    with pytest.raises(PublishFailed, match="refused"):
        send(app_on, b"second", exchange="full", routing_key="k")
    assert _drain(fresh_vhost, "one-slot") == [b"first"]


def test_publish_to_a_missing_exchange_raises_and_the_next_publish_still_works(
    fresh_vhost: Vhost, app_on: Celery
) -> None:
    with fresh_vhost.connection() as conn:
        Queue("inbox", Exchange("present", type="direct"), routing_key="k")(conn.channel()).declare()
    with pytest.raises(PublishFailed, match="absent"):
        send(app_on, b"lost?", exchange="absent", routing_key="k")
    send(app_on, b"delivered", exchange="present", routing_key="k")
    assert _drain(fresh_vhost, "inbox") == [b"delivered"]
