"""RabbitMQ users with least privilege: one per service, every permission derived from the topology.

A service is the ``<service>`` of its stage tasks' names (``tradebus.strategy.on_sentiment``): it reads the
queues of its pools and writes only the exchanges of the routes it publishes (routing/services.py), with
topic permissions that limit the routing keys to those routes' templates, so the strategy may publish
``signal.*.*`` but never ``order.request.*``. Every worker also

* publishes dead letters to ``mastertrade.dlx`` and its retries straight back to its own queues through
  ``mastertrade.retry`` (topic permissions: routing key = one of its queues' names);
* uses what its worker needs of Celery's own names: its own pidbox queue (``<pool>@<host>.celery.pidbox``)
  bound to ``celery.pidbox``, ``reply.celery.pidbox`` to answer and ``celeryev`` for its events; it may
  never write ``celery.pidbox``, which would command every worker: only Flower and the admin may
  (tradebus/ops/remote_control.py);
* declares nothing of the topology: it runs with ``TRADEBUS_DECLARE_TOPOLOGY=0`` and the admin user
  declares the topology once (RabbitMQ's definitions at boot, then ``tradebus topology declare``).

Passwords come from ``TRADEBUS_USER_PASSWORD_<SERVICE>`` and leave this module only as RabbitMQ's salted
SHA-256 hash. docs/security.md lists every account and what it may do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from routing import MASTERTRADE, PoolProfile, Topology
from routing.mastertrade.exchanges import DLX, RETRY, TASKS
from routing.mastertrade.keys import ROUTES
from routing.mastertrade.services import EVERY_SERVICE, OWN_NAME_FIELDS, PUBLISHES, REPORTS_ON_EVERY_SERVICE
from tradebus.application import TradebusCelery, create_app, current_settings, topology_for
from tradebus.errors import SettingsError
from tradebus.ops.remote_control import NO_GRANT, OPERATOR, CeleryGrant, worker_grant
from tradebus.settings import USER_PASSWORD_PREFIX
from tradebus.topology import definitions

DEFAULT_USER_PREFIX = "tradebus-"
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
NOTHING = "^$"


def _any_of(names: Iterable[str]) -> str:
    """A permission regex that matches exactly these (already escaped) names."""
    alternatives = sorted(set(names))
    return f"^({'|'.join(alternatives)})$" if alternatives else NOTHING


def key_pattern(route_name: str, service: str) -> str:
    """The routing keys of a route's template as a regex: each ``{field}`` is one word (or the service)."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(ROUTES[route_name].template):
        parts.append(re.escape(literal))
        if name:
            own = OWN_NAME_FIELDS.get(route_name) == name and service not in REPORTS_ON_EVERY_SERVICE
            parts.append(re.escape(service) if own else r"[^.]+")
    return "".join(parts)


@dataclass(frozen=True)
class Account:
    """One RabbitMQ user: the service it is for, its tags and what it may configure, write and read."""

    service: str
    consumes: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    worker: bool = True
    administrator: bool = False
    extra_configure: tuple[str, ...] = ()
    extra_write: tuple[str, ...] = ()
    extra_read: tuple[str, ...] = ()
    #: May command workers (Flower): remote control is the operators', never a service's.
    operator: bool = False
    #: The exchange where a worker's retries wait out their delay (quorum topology), if any.
    retry_delay: str | None = None

    @property
    def celery(self) -> CeleryGrant:
        """Celery's names: a worker's own pidbox queue, answers and events; commands for operators only."""
        if self.operator:
            return OPERATOR
        return worker_grant(self.consumes) if self.worker else NO_GRANT

    @property
    def configure(self) -> str:
        """Resources it may declare or delete: Celery's own, never the topology."""
        return ".*" if self.administrator else _any_of((*self.celery.configure, *self.extra_configure))

    @property
    def write(self) -> str:
        """Exchanges it publishes to (and queues it binds: Celery's own)."""
        if self.administrator:
            return ".*"
        exchanges = [re.escape(ROUTES[r].exchange) for r in self.publishes]
        if self.worker:
            exchanges += [re.escape(DLX.name), re.escape(RETRY.name)]
            if self.retry_delay:
                exchanges.append(re.escape(self.retry_delay))
        return _any_of((*exchanges, *self.celery.write, *self.extra_write))

    @property
    def read(self) -> str:
        """Queues it consumes (and exchanges it binds Celery's queues to)."""
        if self.administrator:
            return ".*"
        return _any_of((*(re.escape(q) for q in self.consumes), *self.celery.read, *self.extra_read))

    def topic_permissions(self) -> dict[str, str]:
        """Topic exchange -> the routing keys it may publish there. It binds no queue to one (read: none).

        A worker retries through ``mastertrade.retry`` into its own queues only.
        """
        keys: dict[str, list[str]] = {}
        for route_name in self.publishes:
            keys.setdefault(ROUTES[route_name].exchange, []).append(key_pattern(route_name, self.service))
        if self.worker and self.consumes:
            keys[RETRY.name] = [re.escape(queue) for queue in self.consumes]
            if self.retry_delay:
                # ``<queue>.<delay>``: the delay queue's binding picks the delay, the key names the queue.
                keys[self.retry_delay] = [rf"{re.escape(queue)}\.[^.]+" for queue in self.consumes]
        return {exchange: f"^({'|'.join(sorted(set(patterns)))})$" for exchange, patterns in keys.items()}


def _mastertrade_app(shards: int | None = None) -> TradebusCelery:
    """A MasterTrade app, whatever bus this process runs: the users are MasterTrade's services, on the
    topology with ``shards`` (default: the settings', ``TRADEBUS_MARKET_DATA_SHARDS``): shards are queues
    its services read."""
    settings = current_settings()
    return _app_with(settings.market_data_shards if shards is None else shards)


@cache
def _app_with(shards: int) -> TradebusCelery:
    settings = current_settings().with_(market_data_shards=shards)
    return create_app(topology_for(MASTERTRADE, settings), settings)


def _pools(shards: int | None = None) -> dict[str, PoolProfile]:
    """MasterTrade's pools, one per shard when the strategy's market data is sharded."""
    return dict(_mastertrade_app(shards).topology.pools)


def _stage_services(shards: int | None = None) -> dict[str, str]:
    """Worker queue -> the service whose tasks it carries (``tradebus.<service>.<action>``): a stage queue's
    stage task, a task queue's routed tasks (celeryconfig's ``task_routes``)."""
    from tradebus.registry import stage_tasks

    app = _mastertrade_app(shards)
    services = {queue: task.name.split(".")[1] for queue, task in stage_tasks(app).items()}
    for task_name, destination in (app.conf.task_routes or {}).items():
        services.setdefault(destination["queue"], task_name.split(".")[1])
    return services


def service_of_pool(
    pool: str, stage_services: Mapping[str, str] | None = None, shards: int | None = None
) -> str:
    """The service whose user a worker pool runs as: its stage's service, or the pool's own name."""
    services = _stage_services(shards) if stage_services is None else stage_services
    return services.get(_pools(shards)[pool].queue, pool)


def accounts(stage_services: Mapping[str, str] | None = None, shards: int | None = None) -> list[Account]:
    """Every account: one per service that runs a pool or publishes, then Flower, beat and the admin
    (on the topology with ``shards``; default: the settings')."""
    services = _stage_services(shards) if stage_services is None else stage_services
    consumes: dict[str, list[str]] = {name: [] for name in PUBLISHES}
    pools = _pools(shards)
    for pool in pools:
        consumes.setdefault(service_of_pool(pool, services, shards), []).append(pools[pool].queue)
    delay = _mastertrade_app(shards).topology.retry_delay
    found = [
        Account(
            name,
            tuple(sorted(queues)),
            (*PUBLISHES.get(name, ()), *EVERY_SERVICE),
            retry_delay=delay.name if delay is not None else None,
        )
        for name, queues in sorted(consumes.items())
    ]
    return [
        *found,
        # Flower: Celery events and remote control only, and the management API's queue list (tag).
        Account("flower", tags=("management",), worker=False, operator=True),
        # Celery beat: sends periodic tasks to mastertrade.tasks, where only their queue is bound.
        Account("beat", worker=False, extra_write=(re.escape(TASKS.name),)),
        Account("admin", tags=("administrator",), worker=False, administrator=True),
    ]


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + SHA-256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def password_variable(service: str) -> str:
    """The environment variable holding ``service``'s password."""
    return f"{USER_PASSWORD_PREFIX}{service.upper()}"


@dataclass(frozen=True)
class UserDefinitions:
    """The accounts as RabbitMQ definitions for one vhost, with user names under ``prefix``."""

    vhost: str = "/"
    prefix: str = DEFAULT_USER_PREFIX
    accounts: list[Account] = field(default_factory=accounts)

    def user(self, service: str) -> str:
        """The RabbitMQ user name of ``service``."""
        return f"{self.prefix}{service}"

    def as_json(self, passwords: Mapping[str, str]) -> dict[str, Any]:
        """``vhosts``, ``users``, ``permissions``, ``topic_permissions``; SettingsError without a password."""
        missing = [password_variable(a.service) for a in self.accounts if not passwords.get(a.service)]
        if missing:
            raise SettingsError(f"no password for these users; set {', '.join(missing)}")
        return {
            "vhosts": [{"name": self.vhost}],
            "users": [
                {
                    "name": self.user(a.service),
                    "password_hash": hash_password(passwords[a.service]),
                    "hashing_algorithm": HASHING_ALGORITHM,
                    "tags": list(a.tags),
                    "limits": {},
                }
                for a in self.accounts
            ],
            "permissions": [
                {
                    "user": self.user(a.service),
                    "vhost": self.vhost,
                    "configure": a.configure,
                    "write": a.write,
                    "read": a.read,
                }
                for a in self.accounts
            ],
            "topic_permissions": [
                {
                    "user": self.user(a.service),
                    "vhost": self.vhost,
                    "exchange": ex,
                    "write": keys,
                    "read": NOTHING,
                }
                for a in self.accounts
                for ex, keys in sorted(a.topic_permissions().items())
            ],
        }


def publishers_of(queue: str) -> list[str]:
    """The services whose messages can reach ``queue``: the keys its consumer must trust (docs/security.md).

    Computed like ``tradebus route``: one documented message per route, routed through the topology.
    """
    from tradebus.mastertrade.samples import documented_messages

    topology = _mastertrade_app().topology

    routes: dict[str, set[tuple[str, str]]] = {}
    for message in documented_messages():
        name = "backtest_signal" if getattr(message, "backtest", False) else message.route_name
        routes.setdefault(name, set()).add((message.exchange, message.routing_key))
    services = {a.service: a.publishes for a in accounts() if a.worker}
    # A shard is reached by every symbol's messages, whichever shard the sample's symbol hashes to.
    return sorted(
        s
        for s, names in services.items()
        if any(topology.reaches(ex, key, queue) for r in names for ex, key in routes.get(r, ()))
    )


def export_definitions(
    topology: Topology,
    vhost: str,
    *,
    users: bool = False,
    user_prefix: str = "tradebus-",
    passwords: Mapping[str, str] | None = None,
) -> str:
    """``definitions(topology, vhost)`` as JSON, with the least-privilege users when ``users``.

    The users' passwords come from ``passwords`` (``TRADEBUS_USER_PASSWORD_<SERVICE>``); SettingsError
    names the missing ones.
    """
    data: dict[str, Any] = {}
    if users:
        data |= UserDefinitions(vhost, user_prefix).as_json(passwords or {})
    data |= definitions(topology, vhost)
    return json.dumps(data, indent=2)
