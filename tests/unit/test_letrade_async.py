"""The pure parts both Letrade clients share (tradebus/letrade/client.py, stage.py's ``wire``,
publisher.py's ``outgoing``, deadletter.py's ``letter``, health.py's ``summary``), and the asyncio
client's import and settings. The live behaviour is in tests/live/test_letrade_async_live.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from routing import letrade
from tradebus import headers as h
from tradebus.deadletter import letter
from tradebus.errors import Misrouted, SchemaViolation, UnknownMessageType
from tradebus.health import QueueStats, summary
from tradebus.letrade import client
from tradebus.letrade.messages import STRATEGY_HEADER, parse
from tradebus.letrade.payloads import DEFAULT_EXCHANGE
from tradebus.letrade.stage import wire
from tradebus.letrade.tokens import TOKEN_HEADER
from tradebus.publisher import PERSISTENT, TRANSIENT, outgoing
from tradebus.settings import Settings

#: The seed's Publisher example's payload, as it stands: no ``exchange``, no ``type``.
SEED_EXAMPLE = {"strategy_id": 123, "symbol": "BTC/USDT", "side": "buy", "amount": 0.01}
TOPOLOGY = letrade.build()


def test_the_seed_publisher_examples_payload_takes_the_documented_defaults() -> None:
    message = client.outgoing("letrade.commands", "execute_trade", SEED_EXAMPLE, "strategy")
    assert message.routing_key == "commands.execute_trade"
    assert message.payload.exchange == DEFAULT_EXCHANGE == "binance"  # type: ignore[attr-defined]
    assert message.payload.type == "market"  # type: ignore[attr-defined]


def test_a_really_invalid_payload_still_says_what_is_wrong_and_a_wrong_route_is_refused() -> None:
    with pytest.raises(SchemaViolation, match=r"payload\.amount"):
        client.outgoing("letrade.commands", "execute_trade", {**SEED_EXAMPLE, "amount": -1}, "s")
    with pytest.raises(SchemaViolation, match=r"payload\.exchange"):
        client.outgoing("letrade.commands", "execute_trade", {**SEED_EXAMPLE, "exchange": "Bad Name"}, "s")
    with pytest.raises(Misrouted):
        client.outgoing("letrade.events", "commands.execute_trade", SEED_EXAMPLE, "s")
    with pytest.raises(UnknownMessageType):
        client.request("events.error", {}, "s")


def test_a_request_names_its_response_key_and_a_market_data_request_its_own_id() -> None:
    made = client.request("request.market_data", {"symbol": "BTC/USDT"}, "s", message_id="m-1")
    assert (made.request_id, made.response_key) == ("m-1", "response.market_data")
    allocation = {"strategy_id": 1, "symbol": "BTC/USDT", "side": "buy", "quantity": 1, "price": 2}
    made = client.request("request.capital.allocation", allocation, "s")
    assert made.request_id == made.message.message_id
    assert made.response_key == "response.capital.allocation"


def test_a_message_goes_out_with_its_route_priority_persistence_strategy_signature_and_jwt() -> None:
    keys = {
        "TRADEBUS_SIGNING_SERVICE": "strategy",
        "TRADEBUS_SIGNING_KEY": "s" * 40,
        "TRADEBUS_JWT_SERVICE": "strategy",
        "TRADEBUS_JWT_KEY": "j" * 40,
    }
    settings = Settings.from_env(keys)
    message = client.outgoing("letrade.commands", "execute_trade", SEED_EXAMPLE, "strategy")
    body, extra = wire(message, settings)
    parsed = parse(body, "commands.execute_trade")
    assert (parsed.message_id, parsed.payload) == (message.message_id, message.payload)
    assert extra[STRATEGY_HEADER] == 123 and extra[TOKEN_HEADER]
    properties = outgoing(
        TOPOLOGY,
        settings.signing,
        body,
        exchange=message.exchange,
        routing_key=message.routing_key,
        message_id=message.message_id,
        headers=extra,
        persistent=message.route.persistent,
        priority=message.route.priority,
    )
    assert properties["priority"] == letrade.PRIORITY_HIGH
    assert properties["delivery_mode"] == PERSISTENT
    assert properties["message_id"] == message.message_id
    assert properties["headers"][h.SIGNER] == "strategy" and properties["headers"][h.SIGNATURE]
    unsigned = outgoing(TOPOLOGY, Settings().signing, body, exchange="letrade.events", routing_key="x")
    assert h.SIGNATURE not in unsigned["headers"]
    # Market data is transient: its exchange is persistent, its route is not.
    candle = outgoing(TOPOLOGY, Settings().signing, b"{}", exchange="x", routing_key="y", persistent=False)
    assert candle["delivery_mode"] == TRANSIENT


def test_a_letrade_dead_letter_goes_to_letrade_dlq_on_its_key_plus_dead_with_why() -> None:
    dead = letter(
        TOPOLOGY,
        b'{"a": 1}',
        queue="letrade.subscriber.s.1",
        reason="handler_error",
        error="RuntimeError: " + "x" * 5000,
        delivery_info={"exchange": "letrade.events", "routing_key": "events.error"},
        message_id="m-1",
        retries=3,
    )
    assert (dead.exchange, dead.routing_key) == ("letrade.dlq", "events.error.dead")
    assert dead.headers[h.REASON] == "handler_error" and dead.headers[h.RETRIES] == 3
    assert dead.headers[h.ORIGINAL_ROUTING_KEY] == "events.error"
    assert dead.headers[h.ORIGINAL_MESSAGE_ID] == "m-1"
    assert len(dead.headers[h.ERROR]) == 2000 and dead.content_encoding == "utf-8"
    assert letter(TOPOLOGY, b"\xff", queue="q", reason="r", error="e").content_encoding == "binary"


def test_health_is_healthy_degraded_or_unhealthy_from_the_queues_numbers() -> None:
    workers = ["a", "b"]
    served = {"a": QueueStats(3, 1), "b": QueueStats(4, 1), "d": QueueStats(2, 0)}
    assert summary(served, workers, ["d"], [])["status"] == "healthy"
    assert summary(served, workers, ["d"], [])["queue_depth"] == 7
    assert summary({**served, "b": QueueStats(0, 0)}, workers, ["d"], [])["status"] == "degraded"
    assert summary({**served, "b": QueueStats(None, None)}, workers, ["d"], [])["status"] == "unhealthy"


def test_importing_tradebus_letrade_does_not_import_aio_pika_until_message_bus_is_asked_for() -> None:
    code = (
        "import json, sys, tradebus.letrade, tradebus.letrade.bus; before = 'aio_pika' in sys.modules; "
        "from tradebus.letrade import MessageBus; "
        "print(json.dumps([before, 'aio_pika' in sys.modules, MessageBus.__module__]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [False, True, "tradebus.letrade.aio"]


def test_message_bus_with_no_arguments_reads_its_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tradebus.letrade import MessageBus
    from tradebus.retries import SEED_POLICY

    monkeypatch.setenv("TRADEBUS_BROKER_URL", "amqp://u:p@example.invalid:5672/letrade")
    bus = MessageBus()
    assert bus.url == "amqp://u:p@example.invalid:5672/letrade"
    assert bus.retry_policy == SEED_POLICY and SEED_POLICY.delays == (5.0, 10.0, 20.0)
    assert MessageBus("amqp://x/").url == "amqp://x/"
