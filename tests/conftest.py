"""The test session: a RabbitMQ vhost and a Redis key prefix of its own, and fixtures by concern.

``tests.support.bus`` points the environment at the session's vhost *before* tradebus is imported. Broker
tests fail when RabbitMQ or Redis is missing and ``TRADEBUS_REQUIRE_BROKER=1`` (as in CI); elsewhere they
skip and say why. ``unit/`` needs no broker; ``live/`` talks to the real RabbitMQ and Redis.
"""

import tests.support.bus  # noqa: F401 - first: the session's vhost and prefix, before tradebus loads

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.users",
    "tests.fixtures.flower",
    "tests.fixtures.browser",
    "tests.fixtures.letrade",
    "tests.fixtures.cluster",
    "tests.fixtures.sentinel",
]
