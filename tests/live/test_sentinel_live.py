"""The state store and the result backend on Redis with Sentinel (scripts/cluster-redis.sh), and WAIT: a fill
is done only once the replicas it needs have it, and a redelivery that finds it waits for them again."""

from __future__ import annotations

import uuid

import pytest
import redis

import routing
from tests.fixtures.sentinel import ClusterRedis
from tradebus import app, store
from tradebus.application import create_app
from tradebus.errors import NotReplicated
from tradebus.mastertrade import account, samples
from tradebus.settings import Settings

pytestmark = [pytest.mark.broker]


def _node(address: str) -> redis.Redis:
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=5)


def _on_sentinel(
    cluster: ClusterRedis, monkeypatch: pytest.MonkeyPatch, replicas: int, prefix: str | None = None
) -> None:
    """This process's app on the cluster, under ``prefix`` (default: one of its own), each durable write
    WAITing for ``replicas``."""
    settings = Settings.from_env({**cluster.exports, "TRADEBUS_REDIS_WAIT_REPLICAS": str(replicas)})
    monkeypatch.setattr(
        app,
        "settings",
        app.settings.with_(
            redis_url=settings.redis_url,
            redis=settings.redis,
            redis_prefix=prefix or f"sentinel-{uuid.uuid4().hex[:6]}",
        ),
    )


def test_a_fill_fewer_replicas_acknowledged_than_asked_is_not_done_and_its_redelivery_waits_again(
    cluster_redis: ClusterRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    _on_sentinel(cluster_redis, monkeypatch, replicas=2)  # the cluster has one replica
    account.record_price("BTCUSDT", 45_000.0)
    order = samples.order_request(request_id=f"req-{uuid.uuid4().hex[:8]}", quantity=0.01)
    with pytest.raises(NotReplicated, match="of the 2 replica"):
        account.fill(order)
    # Written on the master all the same: the redelivery finds it, books nothing again, and still waits
    # (its WAIT covers the record through a write of its own, not through nothing).
    assert store.client().get(account.fill_outcome(order)) is not None
    with pytest.raises(NotReplicated):
        account.fill(order)
    # Positive control: the one replica there is suffices when one is asked for.
    _on_sentinel(cluster_redis, monkeypatch, replicas=1, prefix=store.key())
    record = account.fill(order)
    assert record["again"] and record["status"] == "filled"
    assert int(store.client().hget(store.key("account", "account"), "fills") or 0) == 1


def test_a_decision_is_on_the_replica_when_decide_returns(
    cluster_redis: ClusterRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    _on_sentinel(cluster_redis, monkeypatch, replicas=1)
    signal = samples.signal(strategy_id=f"sentinel-{uuid.uuid4().hex[:6]}")
    record = account.decide(signal)
    assert record["decision"]["approved"] and not record["again"]
    nodes = [f"127.0.0.1:{port}" for port in cluster_redis.env["CLUSTER_REDIS_PORTS"].split()]
    (replica,) = [node for node in nodes if node != cluster_redis.master()]
    assert _node(replica).get(account.decision_outcome(signal)) is not None


def test_celery_results_are_stored_and_read_through_sentinel(cluster_redis: ClusterRedis) -> None:
    settings = Settings.from_env(cluster_redis.exports)
    results = create_app(routing.build("mastertrade"), settings)
    backend = results.backend
    assert type(backend).__name__ == "SentinelBackend"
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, {"approved": True}, "SUCCESS")
    try:
        assert results.AsyncResult(task_id).get(timeout=10) == {"approved": True}
        assert _node(cluster_redis.master()).exists(f"celery-task-meta-{task_id}")
    finally:
        backend.forget(task_id)
