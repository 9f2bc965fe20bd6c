"""Services written from the seeds start beside tradebus, in either order (issue 11).

A MasterTrade service declares its exchanges and queues with the seed's own pika snippets, copied below
exactly as the seed writes them (``test_the_declarations_here_are_every_one_the_seed_writes`` checks the copy
against the seed when the seed is at hand). RabbitMQ refuses a redeclaration whose arguments differ from
the live object's and closes the channel, so tradebus declares the seed's objects with the seed's arguments
only, and adds what it needs (alternate exchanges, dead-lettering) by policy (docs/topology.md, "Alternate
exchanges are policies").
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from tests.live.test_cli import run
from tests.support.bus import LETRADE, MASTERTRADE, Vhost
from tests.support.wait import wait_until
from tradebus.ops.cli import ExitCode
from tradebus.topology import diff

SEED = "000_3e24410a67b9faa6.txt"

#: Every ``exchange_declare`` and ``queue_declare`` of the MasterTrade seed, character for character, in its
#: order (the exchanges, the stage queues, the DLX and its queue, the sharding example).
MASTERTRADE_SEED_DECLARATIONS: tuple[str, ...] = (
    """channel.exchange_declare(
    exchange='mastertrade.market',
    exchange_type='topic',
    durable=True,
    auto_delete=False
)""",
    """channel.exchange_declare(
    exchange='mastertrade.trading',
    exchange_type='topic',
    durable=True,
    auto_delete=False
)""",
    """channel.exchange_declare(
    exchange='mastertrade.orders',
    exchange_type='topic',
    durable=True,
    auto_delete=False
)""",
    """channel.exchange_declare(
    exchange='mastertrade.risk',
    exchange_type='topic',
    durable=True,
    auto_delete=False
)""",
    """channel.exchange_declare(
    exchange='mastertrade.system',
    exchange_type='topic',
    durable=True,
    auto_delete=False
)""",
    """channel.queue_declare(
    queue='market_data',
    durable=True,
    arguments={
        'x-message-ttl': 60000,  # 60 seconds
        'x-max-length': 100000,  # Max 100K messages
        'x-overflow': 'drop-head'  # Drop oldest on overflow
    }
)""",
    """channel.queue_declare(
    queue='ticker_updates',
    durable=True,
    arguments={
        'x-message-ttl': 10000,  # 10 seconds
        'x-max-length': 50000
    }
)""",
    """channel.queue_declare(
    queue='sentiment_data',
    durable=True,
    arguments={
        'x-message-ttl': 300000,  # 5 minutes
        'x-max-length': 10000
    }
)""",
    """channel.queue_declare(
    queue='stock_index_data',
    durable=True,
    arguments={
        'x-message-ttl': 300000,  # 5 minutes
        'x-max-length': 1000
    }
)""",
    """channel.queue_declare(
    queue='strategy_service_onchain_metrics',
    durable=True,
    arguments={'x-message-ttl': 300000}
)""",
    """channel.queue_declare(
    queue='strategy_service_whale_alerts',
    durable=True,
    arguments={'x-message-ttl': 600000}  # 10 minutes
)""",
    """channel.queue_declare(
    queue='trading_signals',
    durable=True,
    arguments={
        'x-message-ttl': 30000,  # 30 seconds
        'x-max-length': 10000,
        'x-dead-letter-exchange': 'mastertrade.dlx',
        'x-dead-letter-routing-key': 'dlq.trading_signals'
    }
)""",
    """channel.queue_declare(
    queue='order_requests',
    durable=True,
    arguments={
        'x-message-ttl': 60000,  # 1 minute
        'x-max-length': 5000,
        'x-dead-letter-exchange': 'mastertrade.dlx',
        'x-dead-letter-routing-key': 'dlq.order_requests'
    }
)""",
    """channel.queue_declare(
    queue='order_updates',
    durable=True,
    arguments={'x-message-ttl': 300000}  # 5 minutes
)""",
    """channel.queue_declare(
    queue='risk_checks',
    durable=True,
    arguments={
        'x-message-ttl': 30000,  # 30 seconds
        'x-max-length': 5000
    }
)""",
    """channel.queue_declare(
    queue='system_notifications',
    durable=True,
    arguments={'x-message-ttl': 600000}  # 10 minutes
)""",
    """channel.exchange_declare(
    exchange='mastertrade.dlx',
    exchange_type='direct',
    durable=True
)""",
    """channel.queue_declare(
    queue='dlq.trading_signals',
    durable=True,
    arguments={
        'x-message-ttl': 86400000  # 24 hours
    }
)""",
    """channel.queue_declare(queue='market_data_btc')""",
    """channel.queue_declare(queue='market_data_eth')""",
)

#: Letrade_v1's seed names its three exchanges without declaring them: a service declares them plainly.
LETRADE_PLAIN_DECLARATIONS: tuple[str, ...] = tuple(
    f"channel.exchange_declare(exchange='{name}', exchange_type='topic', durable=True)"
    for name in ("letrade.commands", "letrade.events", "letrade.requests")
)

UNBOUND_KEY = "no.binding.takes.this.key"


def _seed_file() -> Path | None:
    """The seed, found beside the checkout or one of its parents (the worktree layout)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "seeds" / SEED
        if candidate.is_file():
            return candidate
    return None


def _declarations_in(text: str) -> list[str]:
    """Every ``channel.exchange_declare(...)`` and ``channel.queue_declare(...)`` in ``text``, verbatim."""
    calls = []
    for match in re.finditer(r"channel\.(?:exchange_declare|queue_declare)\(", text):
        end, depth = match.end(), 1
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        calls.append(text[match.start() : end])
    return calls


def test_the_declarations_here_are_every_one_the_seed_writes() -> None:
    seed = _seed_file()
    if seed is None:
        pytest.skip(f"the seed {SEED} is not beside this checkout")
    assert list(MASTERTRADE_SEED_DECLARATIONS) == _declarations_in(seed.read_text())


def _seed_service(vhost: Vhost, declarations: tuple[str, ...]) -> list[str]:
    """Run each declaration as a seed service does, each on its own channel; the ones the broker refused."""
    refused = []
    connection = pika.BlockingConnection(pika.URLParameters(vhost.url))
    try:
        for source in declarations:
            channel = connection.channel()
            try:
                exec(source, {"channel": channel})  # the seed's code, exactly as it is written
            except ChannelClosedByBroker as exc:
                refused.append(f"{' '.join(source.split())} -> {exc.reply_code} {exc.reply_text}")
            else:
                channel.close()
    finally:
        connection.close()
    return refused


def _take(channel: BlockingChannel, queue: str, body: bytes) -> bool:
    """Whether ``body`` is (now) on ``queue``; takes what it reads."""
    while True:
        method, _, got = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return False
        if got == body:
            return True


def _arrives(vhost: Vhost, exchange: str, key: str, queue: str) -> bool:
    """Publish a message of its own with confirms; whether it reaches ``queue``."""
    body = f"seed-client-{uuid.uuid4().hex}".encode()
    connection = pika.BlockingConnection(pika.URLParameters(vhost.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, key, body)
        return bool(wait_until(lambda: _take(channel, queue, body), timeout=15))
    finally:
        connection.close()


def _depth(vhost: Vhost, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(vhost.url))
    try:
        depth: int = connection.channel().queue_declare(queue, passive=True).method.message_count
        return depth
    finally:
        connection.close()


def _assert_mastertrade_routes(vhost: Vhost) -> None:
    """Unroutable keys end in their unrouted queue; live signals reach trading_signals, backtest ones not."""
    for exchange in ("mastertrade.market", "mastertrade.trading", "mastertrade.orders", "mastertrade.risk"):
        area = exchange.split(".")[1]
        assert MASTERTRADE.route(exchange, UNBOUND_KEY) == {f"unrouted.{area}"}
        assert _arrives(vhost, exchange, UNBOUND_KEY, f"unrouted.{area}"), exchange
    assert _arrives(vhost, "mastertrade.system", "nosystem.key", "unrouted.system")
    assert _arrives(vhost, "mastertrade.dlx", UNBOUND_KEY, "unrouted.dlx")
    assert _arrives(vhost, "mastertrade.trading", "signal.BTCUSDT.strategy-1", "trading_signals")
    # A backtest signal reaches backtest_signals (the positive control), and trading_signals stays empty.
    assert _arrives(vhost, "mastertrade.trading", "signal.backtest.strategy-1", "backtest_signals")
    assert _depth(vhost, "trading_signals") == 0


def _tradebus_declare(vhost: Vhost, topology: str) -> None:
    result = run("--topology", topology, "topology", "declare", env={"TRADEBUS_BROKER_URL": vhost.url})
    assert result.returncode == ExitCode.OK, result.stderr


@pytest.mark.broker
def test_every_seed_declaration_succeeds_on_a_tradebus_broker_and_routing_is_intact(
    fresh_vhost: Vhost,
) -> None:
    _tradebus_declare(fresh_vhost, "mastertrade")
    assert _seed_service(fresh_vhost, MASTERTRADE_SEED_DECLARATIONS) == []
    _assert_mastertrade_routes(fresh_vhost)


@pytest.mark.broker
def test_tradebus_declares_over_a_broker_a_seed_service_set_up_first(fresh_vhost: Vhost) -> None:
    assert _seed_service(fresh_vhost, MASTERTRADE_SEED_DECLARATIONS) == []
    _tradebus_declare(fresh_vhost, "mastertrade")
    management = fresh_vhost.management
    assert diff(MASTERTRADE, management.exchanges(), management.queues(), management.policies()) == []
    live = {p["name"]: p for p in management.policies()}
    assert {p.name: p.as_json()["apply-to"] for p in MASTERTRADE.policies} == {
        name: live[name]["apply-to"] for name in (p.name for p in MASTERTRADE.policies)
    }
    _assert_mastertrade_routes(fresh_vhost)
    # ...and the service restarting afterwards still starts.
    assert _seed_service(fresh_vhost, MASTERTRADE_SEED_DECLARATIONS) == []


@pytest.mark.broker
@pytest.mark.parametrize("seed_first", [False, True], ids=["tradebus-first", "seed-first"])
def test_letrade_services_declaring_their_exchanges_plainly_start_beside_tradebus(
    fresh_vhost: Vhost, seed_first: bool
) -> None:
    if seed_first:
        assert _seed_service(fresh_vhost, LETRADE_PLAIN_DECLARATIONS) == []
    _tradebus_declare(fresh_vhost, "letrade")
    assert _seed_service(fresh_vhost, LETRADE_PLAIN_DECLARATIONS) == []
    for exchange in ("letrade.commands", "letrade.events", "letrade.requests"):
        assert LETRADE.route(exchange, UNBOUND_KEY) == {"letrade.unrouted"}
        assert _arrives(fresh_vhost, exchange, UNBOUND_KEY, "letrade.unrouted"), exchange
    # Positive control: a bound key is delivered to its inbox, not to letrade.unrouted.
    assert _arrives(fresh_vhost, "letrade.commands", "commands.execute_trade", "letrade.exchange_connector")
