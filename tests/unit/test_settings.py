"""Settings from the environment, and the management API address derived from the broker URL."""

from __future__ import annotations

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
