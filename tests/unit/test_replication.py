"""Redis Sentinel and WAIT settings (tradebus/replication.py): parsed at the edge, refused when malformed,
and turned into redis-py's Sentinel client and Celery's ``sentinel://`` result backend."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

import routing
from tradebus.application import celery_config
from tradebus.errors import InsecureConnection, SettingsError
from tradebus.replication import ReplicaWait, celery_backend, master_client, parse_sentinels
from tradebus.settings import Settings

SENTINELS = {"TRADEBUS_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26380,10.0.0.3"}


def test_without_sentinels_redis_is_the_url_and_no_write_waits() -> None:
    settings = Settings.from_env({})
    assert settings.redis.sentinels == ()
    assert settings.redis.wait == ReplicaWait(0, 1.0)
    assert celery_backend(settings.redis_url, settings.redis) == ("redis://localhost:6379/0", {})


def test_sentinels_are_host_port_pairs_and_a_write_then_waits_for_one_replica() -> None:
    settings = Settings.from_env(SENTINELS)
    assert settings.redis.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert settings.redis.master == "tradebus"
    assert settings.redis.wait == ReplicaWait(1, 1.0)


def test_the_master_name_replicas_and_timeout_are_configurable() -> None:
    settings = Settings.from_env(
        {
            **SENTINELS,
            "TRADEBUS_REDIS_MASTER": "orders",
            "TRADEBUS_REDIS_WAIT_REPLICAS": "2",
            "TRADEBUS_REDIS_WAIT_TIMEOUT": "0.25",
        }
    )
    assert (settings.redis.master, settings.redis.wait) == ("orders", ReplicaWait(2, 0.25))
    assert Settings.from_env({**SENTINELS, "TRADEBUS_REDIS_WAIT_REPLICAS": "0"}).redis.wait.replicas == 0
    # WAIT needs no Sentinel: a master with static replicas can ask for it too.
    assert Settings.from_env({"TRADEBUS_REDIS_WAIT_REPLICAS": "1"}).redis.wait.replicas == 1


def test_ipv6_sentinels_are_bracketed() -> None:
    assert parse_sentinels("[::1]:26391,[fe80::2]") == (("::1", 26391), ("fe80::2", 26379))


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"TRADEBUS_REDIS_SENTINELS": "host:port"}, "no numeric port"),
        ({"TRADEBUS_REDIS_SENTINELS": "host:"}, "is not host:port"),
        ({"TRADEBUS_REDIS_SENTINELS": ":26379"}, "is not host:port"),
        ({"TRADEBUS_REDIS_SENTINELS": "host:70000"}, "out of range"),
        ({"TRADEBUS_REDIS_SENTINELS": " , "}, "comma-separated list"),
        ({"TRADEBUS_REDIS_SENTINELS": "::1:26379"}, "as [::1]:port"),
        ({**SENTINELS, "TRADEBUS_REDIS_WAIT_REPLICAS": "-1"}, "0 or more"),
        ({**SENTINELS, "TRADEBUS_REDIS_WAIT_TIMEOUT": "0"}, "positive number of seconds"),
        ({**SENTINELS, "TRADEBUS_REDIS_MASTER": " "}, "cannot be blank"),
        ({"TRADEBUS_REDIS_SENTINEL_PASSWORD": "pw"}, "needs TRADEBUS_REDIS_SENTINELS"),
        ({**SENTINELS, "TRADEBUS_REDIS_URL": "rediss://redis/0"}, "Sentinel over TLS is not supported"),
    ],
)
def test_malformed_settings_are_refused_saying_what_is_wrong(env: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem.replace("[", r"\[")):
        Settings.from_env(env)


def test_a_wait_count_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(SettingsError, match="TRADEBUS_REDIS_WAIT_REPLICAS"):
        Settings.from_env({**SENTINELS, "TRADEBUS_REDIS_WAIT_REPLICAS": "one"})


def test_tls_only_mode_refuses_sentinels_reached_without_tls() -> None:
    with pytest.raises(InsecureConnection) as caught:
        Settings.from_env(
            {**SENTINELS, "TRADEBUS_REQUIRE_TLS": "1", "TRADEBUS_BROKER_URL": "amqps://rabbit//"}
        )
    assert "TRADEBUS_REDIS_SENTINELS names sentinels, reached without TLS (unset it)" in caught.value.problems


def test_celery_results_go_through_sentinel_with_the_database_and_login_of_the_redis_url() -> None:
    settings = Settings.from_env(
        {
            **SENTINELS,
            "TRADEBUS_REDIS_URL": "redis://:p%40ss@ignored:6379/3",
            "TRADEBUS_REDIS_MASTER": "orders",
            "TRADEBUS_REDIS_SENTINEL_PASSWORD": "sentinel-pw",
        }
    )
    config = celery_config(routing.build("mastertrade"), settings)
    assert config["result_backend"] == (
        "sentinel://:p%40ss@10.0.0.1:26379/3;sentinel://:p%40ss@10.0.0.2:26380/3;"
        "sentinel://:p%40ss@10.0.0.3:26379/3"
    )
    assert config["result_backend_transport_options"] == {
        "master_name": "orders",
        "sentinel_kwargs": {"password": "sentinel-pw"},
    }
    assert "result_backend_transport_options" not in celery_config(routing.build("mastertrade"), Settings())


def test_the_state_store_client_asks_the_sentinels_for_the_master() -> None:
    settings = Settings.from_env(
        {**SENTINELS, "TRADEBUS_REDIS_URL": "redis://app:pw@ignored/2", "TRADEBUS_REDIS_MASTER": "orders"}
    )
    client = master_client(
        settings.redis_url, settings.redis, decode=True, connect_timeout=1.0, socket_timeout=2.0
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "orders"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (2, "app", "pw")
    assert kwargs["decode_responses"] is True and kwargs["socket_timeout"] == 2.0
    sentinels = [
        (c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
        for c in pool.sentinel_manager.sentinels
    ]
    assert sentinels == list(settings.redis.sentinels)


def test_letrades_asyncio_client_finds_the_master_through_the_sentinels_too() -> None:
    """``MessageBus.redis`` (subscriptions' record of handled ids) follows a failover like the state store;
    without sentinels it is the URL's Redis (no connection is made here)."""
    from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool

    from tradebus.letrade import MessageBus

    settings = Settings.from_env(
        {**SENTINELS, "TRADEBUS_REDIS_URL": "redis://app:pw@ignored/2", "TRADEBUS_REDIS_MASTER": "orders"}
    )
    pool = MessageBus(settings=settings).redis.connection_pool
    assert isinstance(pool, AsyncSentinelPool) and pool.service_name == "orders"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (2, "app", "pw")
    assert kwargs["socket_timeout"] == 5.0 and kwargs["socket_connect_timeout"] == 2.0
    sentinels = [
        (c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
        for c in pool.sentinel_manager.sentinels
    ]
    assert sentinels == list(settings.redis.sentinels)
    # Positive control: without sentinels, the URL's host.
    plain = MessageBus(settings=Settings.from_env({"TRADEBUS_REDIS_URL": "redis://cache:6390/1"})).redis
    assert not isinstance(plain.connection_pool, AsyncSentinelPool)
    plain_kwargs = plain.connection_pool.connection_kwargs
    assert (plain_kwargs["host"], plain_kwargs["port"], plain_kwargs["db"]) == ("cache", 6390, 1)
