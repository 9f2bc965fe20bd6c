"""Settings from the environment, and the management API address derived from the broker URL."""

from __future__ import annotations

import pytest

from tradebus import nodes
from tradebus.errors import SettingsError
from tradebus.settings import DEFAULT_BROKER_URL, ManagementSettings, Settings


def test_unset_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.broker_url == DEFAULT_BROKER_URL == "amqp://guest:guest@localhost:5672//"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.management == ManagementSettings("http://localhost:15672", "guest", "guest", "/")


def test_management_api_follows_the_broker_host_login_and_vhost() -> None:
    settings = Settings.from_env({"TRADEBUS_BROKER_URL": "amqp://trader:s%40cret@rabbit:5672/prod"})
    assert settings.management == ManagementSettings("http://rabbit:15672", "trader", "s@cret", "prod")
    assert settings.management.quoted_vhost == "prod"


def test_explicit_management_url_is_used_as_written_and_keeps_the_broker_login_when_it_has_none() -> None:
    settings = Settings.from_env(
        {
            "TRADEBUS_BROKER_URL": "amqp://trader:pw@rabbit//",
            "TRADEBUS_MANAGEMENT_URL": "https://proxy/rabbitmq/",
        }
    )
    assert settings.management == ManagementSettings("https://proxy/rabbitmq", "trader", "pw", "/")


def test_management_url_with_its_own_login_replaces_both_user_and_password() -> None:
    settings = Settings.from_env(
        {
            "TRADEBUS_BROKER_URL": "amqp://trader:pw@rabbit//",
            "TRADEBUS_MANAGEMENT_URL": "http://ops:x@mgmt:15672",
        }
    )
    assert settings.management == ManagementSettings("http://mgmt:15672", "ops", "x", "/")


def test_tls_broker_and_ipv6_host_give_a_usable_management_address() -> None:
    assert Settings.from_env({"TRADEBUS_BROKER_URL": "amqps://u:p@rabbit:5671/v"}).management.base_url == (
        "https://rabbit:15671"
    )
    assert Settings.from_env({"TRADEBUS_BROKER_URL": "amqp://u:p@[::1]:5672//"}).management.base_url == (
        "http://[::1]:15672"
    )


def test_pyproject_installs_every_package_of_the_source_tree() -> None:
    import tomllib
    from pathlib import Path

    from setuptools import find_packages

    root = Path(__file__).resolve().parents[2]
    find = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    listed = set(find_packages(root, include=find["include"], exclude=find.get("exclude", ())))
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for top in ("tradebus", "tasks", "routing", "workers")
        for init in (root / top).rglob("__init__.py")
    }
    assert listed == found


CLUSTER = "amqp://trader:pw@r1:5672/prod;amqp://trader:pw@r2:5672/prod; amqp://trader:pw@r3:5673/prod"


def test_a_cluster_url_list_keeps_the_vhost_and_login_and_gives_one_management_api_per_host() -> None:
    """Regression: the list was read as one URL, its vhost ``prod;amqp://...``."""
    management = Settings.from_env({"TRADEBUS_BROKER_URL": CLUSTER}).management
    assert management == ManagementSettings(
        "http://r1:15672", "trader", "pw", "prod", ("http://r2:15672", "http://r3:15672")
    )
    assert management.base_urls == ("http://r1:15672", "http://r2:15672", "http://r3:15672")


def test_an_explicit_management_list_is_used_as_written_with_the_first_urls_login() -> None:
    settings = Settings.from_env(
        {
            "TRADEBUS_BROKER_URL": CLUSTER,
            "TRADEBUS_MANAGEMENT_URL": "http://ops:x@127.0.0.1:15681;http://127.0.0.1:15682/;",
        }
    )
    assert settings.management == ManagementSettings(
        "http://127.0.0.1:15681", "ops", "x", "prod", ("http://127.0.0.1:15682",)
    )


def test_broker_nodes_on_different_vhosts_or_mixing_tls_are_refused() -> None:
    with pytest.raises(SettingsError, match="same vhost"):
        Settings.from_env({"TRADEBUS_BROKER_URL": "amqp://r1/a;amqp://r2/b"})
    with pytest.raises(SettingsError, match="TLS all or none"):
        Settings.from_env({"TRADEBUS_BROKER_URL": "amqps://r1//;amqp://r2//"})
    with pytest.raises(SettingsError, match="scheme"):
        Settings.from_env({"TRADEBUS_BROKER_URL": "amqp://r1//;r2:5672"})
    # Positive control: the same nodes on one vhost, all with TLS.
    assert Settings.from_env({"TRADEBUS_BROKER_URL": "amqps://r1/a;amqps://r2/a"}).management.vhost == "a"


def test_node_lists_split_and_move_to_another_vhost_node_by_node() -> None:
    assert nodes.split(CLUSTER) == (
        "amqp://trader:pw@r1:5672/prod",
        "amqp://trader:pw@r2:5672/prod",
        "amqp://trader:pw@r3:5673/prod",
    )
    assert nodes.split("amqp://one//") == ("amqp://one//",)
    assert nodes.first(CLUSTER) == "amqp://trader:pw@r1:5672/prod"
    moved = nodes.on_vhost("amqps://u:p@r1:5671//?heartbeat=5;amqps://u:p@r2:5671//", "t e/st")
    assert moved == "amqps://u:p@r1:5671/t%20e%2Fst?heartbeat=5;amqps://u:p@r2:5671/t%20e%2Fst"
    assert {nodes.vhost(url) for url in nodes.split(moved)} == {"t e/st"}
    assert nodes.vhost("amqp://r1") == nodes.vhost("amqp://r1/") == "/"


def test_kombu_reads_the_list_as_fail_over_alternates_each_with_its_own_port() -> None:
    """What the workers, the CLI and Flower rely on: Kombu (and so Celery's broker_url) takes the list."""
    from kombu import Connection

    connection = Connection(nodes.on_vhost(CLUSTER, "v"))
    assert connection.alt == list(nodes.split(nodes.on_vhost(CLUSTER, "v")))
    assert (connection.hostname, connection.port, connection.virtual_host) == ("r1", 5672, "v")
    connection.switch(connection.alt[2])
    assert (connection.hostname, connection.port, connection.virtual_host) == ("r3", 5673, "v")
