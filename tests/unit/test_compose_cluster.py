"""docker-compose.cluster.yml (three RabbitMQ nodes, Redis with Sentinel), checked by parsing against
docker-compose.yml, which it overrides, and against the code: every service that connects lists the three
nodes with its own login, the nodes cluster by the names they carry, and the sentinels watch the master the
services name (there is no Docker engine here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_compose import ROOT, VARIABLE, interpolate
from tradebus import nodes
from tradebus.settings import Settings

NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")
SENTINELS = ("redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3")
CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"


def merged(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, as far as these tests need it: mappings merge, the rest is
    replaced (this file writes each list it changes whole)."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {
            k: merged(base[k], override[k]) if k in base and k in override else override.get(k, base.get(k))
            for k in {**base, **override}
        }
    return override


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def cluster(base: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = merged(base, yaml.safe_load(CLUSTER_FILE.read_text()))
    return data


def hostnames(compose: dict[str, Any]) -> set[str]:
    """Every name a container can reach another by: service names and network aliases."""
    names = set(compose["services"])
    for service in compose["services"].values():
        for network in (service.get("networks") or {}).values():
            names |= set((network or {}).get("aliases", []))
    return names


def test_three_rabbitmq_nodes_cluster_by_the_names_they_carry(
    base: dict[str, Any], cluster: dict[str, Any]
) -> None:
    conf = (ROOT / "deploy/rabbitmq/cluster.conf").read_text()
    listed = set(re.findall(r"cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)", conf))
    assert "peer_discovery_backend = classic_config" in conf and "pause_minority" in conf
    services = cluster["services"]
    assert (
        {services[name]["hostname"] for name in NODES} == listed == {"rabbitmq-1", "rabbitmq-2", "rabbitmq-3"}
    )
    assert listed <= hostnames(cluster), "each node's host name must resolve on the compose network"
    cookies, data = set(), set()
    for name in NODES:
        node = services[name]
        assert node["image"] == base["services"]["rabbitmq"]["image"]
        assert "./deploy/rabbitmq/cluster.conf:/etc/rabbitmq/conf.d/30-cluster.conf:ro" in node["volumes"]
        assert "rabbitmq-definitions:/etc/rabbitmq/definitions:ro" in node["volumes"]
        cookies.add(node["environment"]["RABBITMQ_ERLANG_COOKIE"])
        data |= {v for v in node["volumes"] if v.endswith(":/var/lib/rabbitmq")}
        assert node["healthcheck"]["test"], name
        for port in node.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    assert cookies == {"${TRADEBUS_ERLANG_COOKIE:?see .env.example}"}
    assert len(data) == 3, "each node needs a data volume of its own"
    assert {v.split(":")[0] for v in data} - {"rabbitmq-data"} <= set(cluster["volumes"])


def test_every_cluster_setting_is_one_rabbitmq_knows() -> None:
    import glob

    schemas = glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbit-*/priv/schema/rabbit.schema")
    assert schemas, "RabbitMQ's config schema is installed with the broker (make services)"
    schema = Path(schemas[0]).read_text()
    for line in (ROOT / "deploy/rabbitmq/cluster.conf").read_text().splitlines():
        if line and not line.startswith("#"):
            key = line.split(" = ")[0]
            generic = re.sub(r"\.\d+$", ".$node", key)
            assert f'"{key}"' in schema or f'"{generic}"' in schema, key


def test_every_service_that_connects_lists_the_three_nodes_with_its_own_login(
    base: dict[str, Any], cluster: dict[str, Any]
) -> None:
    override = yaml.safe_load(CLUSTER_FILE.read_text())["services"]
    connecting = {
        n for n, s in base["services"].items() if "TRADEBUS_BROKER_URL" in (s.get("environment") or {})
    }
    assert connecting <= set(override), "a service left on the single node"
    for name in connecting:
        single = base["services"][name]["environment"]["TRADEBUS_BROKER_URL"]
        env = cluster["services"][name]["environment"]
        listed = nodes.split(env["TRADEBUS_BROKER_URL"])
        assert listed == tuple(single.replace("@rabbitmq:", f"@rabbitmq-{n}:") for n in (1, 2, 3)), name
        assert env["TRADEBUS_QUEUE_TYPE"] == "quorum"
        assert nodes.split(env["TRADEBUS_MANAGEMENT_URL"]) == tuple(
            f"http://rabbitmq-{n}:15672" for n in (1, 2, 3)
        )
    assert cluster["services"]["definitions"]["environment"]["TRADEBUS_QUEUE_TYPE"] == "quorum"
    waits = cluster["services"]["topology"]["depends_on"]
    assert {"rabbitmq", "rabbitmq-2", "rabbitmq-3"} <= set(waits)


def test_the_services_settings_read_the_cluster_as_three_nodes(cluster: dict[str, Any]) -> None:
    text = yaml.safe_dump(cluster)
    dotenv = subprocess.run(
        ["bash", str(ROOT / "scripts/dotenv.sh")], capture_output=True, text=True, timeout=60
    )
    environ = dict(
        line.split("=", 1) for line in dotenv.stdout.splitlines() if line and not line.startswith("#")
    )
    rendered = yaml.safe_load(interpolate(text, environ))
    checked = 0
    for name, service in rendered["services"].items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        if "TRADEBUS_BROKER_URL" not in env:
            continue
        settings = Settings.from_env(env)  # SettingsError on nodes that disagree (tradebus/nodes.py)
        assert settings.queue_type == "quorum", name
        assert len(nodes.split(settings.broker_url)) == 3
        assert settings.management.base_urls == tuple(f"http://rabbitmq-{n}:15672" for n in (1, 2, 3))
        checked += 1
    assert checked >= 5


def test_redis_has_a_replica_and_three_sentinels_watching_the_master_the_services_name(
    cluster: dict[str, Any],
) -> None:
    services = cluster["services"]
    replica = " ".join(services["redis-replica"]["command"])
    assert "--replicaof redis 6379" in replica and '--masterauth "$$REDISCLI_AUTH"' in replica
    masters = set()
    for name in SENTINELS:
        script = services[name]["command"][-1]
        monitor = re.search(r"sentinel monitor (\S+) redis 6379 (\d)", script)
        assert monitor and monitor[2] == "2", name  # two of three sentinels agree before a fail-over
        masters.add(monitor[1])
        assert "auth-pass" in script and "exec redis-sentinel" in script
    for name, service in services.items():
        env = service.get("environment") or {}
        if "TRADEBUS_REDIS_SENTINELS" in env:
            assert env["TRADEBUS_REDIS_SENTINELS"].split(",") == [f"{s}:26379" for s in SENTINELS], name
            assert {env["TRADEBUS_REDIS_MASTER"]} == masters, name


def test_no_credential_is_written_and_every_secret_is_required_and_in_env_example() -> None:
    text = CLUSTER_FILE.read_text()
    assert "guest" not in text
    example = (ROOT / ".env.example").read_text()
    listed = {line.split("=")[0] for line in example.splitlines() if line and not line.startswith("#")}
    for match in VARIABLE.finditer(text):
        assert match["name"] in listed, match["name"]
        if re.search(r"PASSWORD|_KEY|AUTH|COOKIE", match["name"]):
            assert match["op"] == ":?", f"{match[0]} must be required, with no default"
