"""Letrade's JWT on the real broker: with ``TRADEBUS_JWT_REQUIRED=1`` the exchange connector (a ``celery
worker`` process configured only by its environment) executes a command whose token verifies and
dead-letters every other one with its reason; a subscriber that requires tokens does the same."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from routing import letrade
from tests.fixtures.letrade import start_letrade_pools
from tests.live.test_letrade_live import collect, pair, take_all, trade
from tests.support.bus import LETRADE, SETTINGS, Vhost
from tests.support.letrade_samples import PAYLOADS
from tests.support.wait import wait_until
from tradebus.application import TradebusCelery, create_app
from tradebus.headers import REASON
from tradebus.letrade import tokens
from tradebus.letrade.bus import LetradeBus
from tradebus.letrade.messages import Envelope, encode
from tradebus.publisher import send
from tradebus.settings import JWTSettings

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CLIENT, CLIENT_KEY = "strategy_900", "client-jwt-key-" + "c" * 32
CONNECTOR_KEY = "connector-jwt-key-" + "x" * 32
INTRUDER_KEY = "intruder-jwt-key-" + "i" * 32
COMMANDS_DLQ = letrade.ROUTES["execute_trade"].dead_letter_queue
EVENTS_DLQ = letrade.ROUTES["trade_executed"].dead_letter_queue


def app_for(vhost: Vhost, jwt: JWTSettings) -> TradebusCelery:
    """A Letrade app on ``vhost`` with these JWT settings (and no HMAC signing)."""
    return create_app(LETRADE, SETTINGS.with_(broker_url=vhost.url, jwt=jwt))


@pytest.fixture(scope="module")
def connector(letrade_vhost: Vhost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vhost]:
    """The exchange connector, JWT required, trusting the client; its own events carry its tokens."""
    from workers.launch import stop_all

    env = {
        "TRADEBUS_JWT_SERVICE": "exchange_connector",
        "TRADEBUS_JWT_KEY": CONNECTOR_KEY,
        "TRADEBUS_JWT_TRUSTED_KEYS": f"{CLIENT}:{CLIENT_KEY}",
        "TRADEBUS_JWT_REQUIRED": "1",
    }
    log_dir = tmp_path_factory.mktemp("letrade-jwt")
    pools = start_letrade_pools(letrade_vhost, log_dir, ["letrade.exchange_connector"], env)
    yield letrade_vhost
    stop_all(pools)
    print("\n".join((log_dir / f"{p.name}.log").read_text(errors="replace")[-3000:] for p in pools))


@pytest.fixture
def client(connector: Vhost) -> Iterator[LetradeBus]:
    """The strategy's client: issues its tokens and requires the connector's on what it subscribes to."""
    jwt = JWTSettings(
        service=CLIENT,
        key=CLIENT_KEY,  # type: ignore[arg-type]
        trusted={CLIENT: CLIENT_KEY, "exchange_connector": CONNECTOR_KEY},  # type: ignore[dict-item]
        required=True,
    )
    app = app_for(connector, jwt)
    with LetradeBus(connector.url, source=CLIENT, app=app) as bus:
        yield bus
    app.close()


def publish_raw(app: TradebusCelery, message: Envelope, body: bytes, token: str | None) -> None:
    """Publish ``body`` as ``message`` would go out, with ``token`` (or none) in its JWT header."""
    send(
        app,
        body,
        exchange=message.exchange,
        routing_key=message.routing_key,
        message_id=message.message_id,
        headers={tokens.TOKEN_HEADER: token} if token else {},
        priority=message.route.priority,
    )


def issue(message: Envelope, body: bytes, **changes: Any) -> str:
    fields: dict[str, Any] = {
        "issuer": CLIENT,
        "key": CLIENT_KEY,
        "message_id": message.message_id,
        "audience": "letrade",
        "ttl": 60.0,
        **changes,
    }
    return tokens.issue(body, **fields)


def test_a_command_with_a_valid_token_executes_and_its_event_passes_the_subscribers_check(
    client: LetradeBus,
) -> None:
    events: list[dict[str, Any]] = []
    client.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
    order = f"t{uuid.uuid4().hex[:8]}"
    client.publish("letrade.commands", "execute_trade", trade(pair(), order, amount=0.001))
    collect(client, events, lambda: any(e["client_order_id"] == order for e in events))
    assert [e["client_order_id"] for e in events] == [order]


def test_missing_tampered_expired_untrusted_and_replayed_commands_are_dead_lettered_with_their_reason(
    connector: Vhost, client: LetradeBus
) -> None:
    plain = app_for(connector, JWTSettings())
    intruder = app_for(connector, JWTSettings(service="intruder", key=INTRUDER_KEY))  # type: ignore[arg-type]
    take_all(connector, COMMANDS_DLQ)
    cases = ("unsigned", "tampered", "expired", "untrusted", "replay")
    ids = {case: f"t{uuid.uuid4().hex[:8]}" for case in cases}
    events: list[dict[str, Any]] = []
    client.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
    try:
        # No token: a publisher without a key.
        LetradeBus(connector.url, source=CLIENT, app=plain).publish(
            "letrade.commands", "execute_trade", trade(pair(), ids["unsigned"], amount=0.001)
        )
        # A valid token for another body: the amount changed after it was issued.
        original = client.message("commands.execute_trade", trade(pair(), ids["tampered"], amount=0.001))
        altered = original.model_copy(update={"payload": original.payload.model_copy(update={"amount": 5.0})})
        publish_raw(plain, altered, encode(altered), issue(original, encode(original)))
        # A token that expired two minutes ago.
        expired = client.message("commands.execute_trade", trade(pair(), ids["expired"], amount=0.001))
        publish_raw(plain, expired, encode(expired), issue(expired, encode(expired), now=time.time() - 180))
        # Issued by a service the connector does not trust (its own source, its own key).
        LetradeBus(connector.url, source="intruder", app=intruder).publish(
            "letrade.commands", "execute_trade", trade(pair(), ids["untrusted"], amount=0.001)
        )
        # The same message, token and all, twice: it runs once.
        replayed = client.message("commands.execute_trade", trade(pair(), ids["replay"], amount=0.001))
        body = encode(replayed)
        token = issue(replayed, body)
        publish_raw(plain, replayed, body, token)
        publish_raw(plain, replayed, body, token)
        letters: list[Any] = []
        wait_until(lambda: letters.extend(take_all(connector, COMMANDS_DLQ)) or len(letters) >= 5, 60)
        collect(client, events, lambda: bool(events))  # the replayed command's one execution
        client.drain(1.0)
    finally:
        plain.close()
        intruder.close()
    reasons = {json.loads(m.body)["payload"]["client_order_id"]: m.headers[REASON] for m in letters}
    assert reasons == {
        ids["unsigned"]: "unsigned",
        ids["tampered"]: "bad_signature",
        ids["expired"]: "stale_signature",
        ids["untrusted"]: "untrusted_signer",
        ids["replay"]: "replayed",
    }
    assert len(letters) == 5
    # Positive control: the connector runs and the subscriber hears it; only the replayed command executed.
    assert [e["client_order_id"] for e in events] == [ids["replay"]]


def test_a_subscriber_that_requires_tokens_dead_letters_an_event_without_one(
    connector: Vhost, client: LetradeBus
) -> None:
    plain = app_for(connector, JWTSettings())
    take_all(connector, EVENTS_DLQ)
    got: list[dict[str, Any]] = []
    client.subscribe("events.trade_executed", lambda topic, payload: got.append(payload))
    forged, signed = f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    event = {**PAYLOADS["trade_executed"][1], "strategy_id": 900}
    try:
        # An "exchange_connector" event with no token, then a command whose real event will carry one.
        LetradeBus(connector.url, source="exchange_connector", app=plain).publish(
            "letrade.events", "events.trade_executed", {**event, "client_order_id": forged}
        )
        client.publish("letrade.commands", "execute_trade", trade(pair(), signed, amount=0.001))
        collect(client, got, lambda: any(e.get("client_order_id") == signed for e in got))
        letters = wait_until(lambda: take_all(connector, EVENTS_DLQ), 20)
    finally:
        plain.close()
    assert [e.get("client_order_id") for e in got] == [signed]
    assert [(json.loads(m.body)["payload"]["client_order_id"], m.headers[REASON]) for m in letters] == [
        (forged, "unsigned")
    ]


def test_a_command_sent_again_with_a_token_issued_later_runs_once_and_is_not_taken_for_a_replay(
    connector: Vhost, client: LetradeBus
) -> None:
    # A service that died after publishing re-sends its command: the same derived message id and body, a
    # token issued later (tradebus/letrade/tokens.py: the replay nonce holds ``iat``). The connector runs it
    # once and drops the copy as a repeat (tradebus/seen.py) instead of dead-lettering it as a replay.
    plain = app_for(connector, JWTSettings())
    take_all(connector, COMMANDS_DLQ)
    events: list[dict[str, Any]] = []
    client.subscribe("events.trade_executed", lambda topic, payload: events.append(payload))
    again, control = f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    try:
        command = client.message("commands.execute_trade", trade(pair(), again, amount=0.001))
        body = encode(command)
        publish_raw(plain, command, body, issue(command, body, now=time.time() - 2))
        collect(client, events, lambda: any(e["client_order_id"] == again for e in events))
        publish_raw(plain, command, body, issue(command, body))
        # Positive control behind it: a command without a token, whose dead letter shows the DLQ is read.
        LetradeBus(connector.url, source=CLIENT, app=plain).publish(
            "letrade.commands", "execute_trade", trade(pair(), control, amount=0.001)
        )
        letters: list[Any] = []
        wait_until(lambda: letters.extend(take_all(connector, COMMANDS_DLQ)) or len(letters) >= 1, 60)
        client.drain(1.0)
    finally:
        plain.close()
    reasons = {json.loads(m.body)["payload"]["client_order_id"]: m.headers[REASON] for m in letters}
    assert reasons == {control: "unsigned"}
    assert [e["client_order_id"] for e in events] == [again]
