"""docker-compose.yml, checked by parsing (there is no Docker engine here) against the code it runs.

Every pool of routing/mastertrade/pools.py has a worker service with its queue, concurrency and prefetch,
running as its service's least-privilege user and signing as that service; RabbitMQ imports the definitions
`tradebus topology export --users` writes; nothing starts before the broker is healthy; no secret is in the
file, and every one it needs is in .env.example.
"""

from __future__ import annotations

import ast
import glob
import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import routing
from tests.support.bus import MASTERTRADE
from tradebus import tls
from tradebus.ops.cli import main
from tradebus.ops.users import accounts, password_variable, publishers_of, service_of_pool
from tradebus.settings import Settings
from workers.cpu import weight
from workers.profiled import MARKET_DATA_NICENESS
from workers.profiles import yields_cpu

#: Compose runs MasterTrade's pools.
POOLS = MASTERTRADE.pools
ROOT = Path(__file__).resolve().parents[2]
TRADEBUS_IMAGE = "tradebus:latest"
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?P<op>:?[?-])?(?P<arg>[^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def worker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pool -> its service, for every service started with ``tradebus worker POOL``."""
    return {
        service["command"][2]: service
        for service in compose["services"].values()
        if (service.get("command") or [])[:2] == ["tradebus", "worker"]
    }


def login(url: str) -> tuple[str, str]:
    """(user, password) of an AMQP URL whose password is a ``${...}`` (urlsplit would stop at its ``?``)."""
    match = re.fullmatch(r"amqp://(?P<user>[^:@]+):(?P<password>\$\{[^}]+\}|[^@]+)@rabbitmq:5672//", url)
    assert match, url
    return match["user"], match["password"]


def interpolate(text: str, environ: dict[str, str]) -> str:
    """Compose's variable substitution (``${V}``, ``${V:-default}``, ``${V:?error}``)."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"]
        if environ.get(name):
            return environ[name]
        if op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return arg if op.endswith("-") else ""

    return VARIABLE.sub(value, text)


def test_every_pool_has_one_worker_service_started_by_its_profile(compose: dict[str, Any]) -> None:
    pools: dict[str, list[str]] = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:2] == ["tradebus", "worker"]:
            pools.setdefault(command[2], []).append(name)
    assert pools == {pool: [f"worker-{pool.replace('_', '-')}"] for pool in POOLS}


def test_worker_services_are_not_sized_by_hand(compose: dict[str, Any]) -> None:
    for service in worker_services(compose).values():
        command = " ".join(service.get("command") or [])
        assert not re.search(r"(^| )(-c|--concurrency|--prefetch-multiplier)( |=|$)", command), command


def test_each_worker_service_shows_its_queue_concurrency_and_prefetch_as_the_profile_sets_them(
    compose: dict[str, Any],
) -> None:
    for pool, service in worker_services(compose).items():
        profile = POOLS[pool]
        assert service["labels"] == {
            "tradebus.pool.queue": profile.queue,
            "tradebus.pool.concurrency": str(profile.concurrency),
            "tradebus.pool.prefetch-multiplier": str(profile.prefetch_multiplier),
        }, pool
        # `docker compose up --scale worker-order-requests=2`: a fixed container name would stop it, a
        # fixed hostname would give both replicas one Celery node name (`POOL@%h`) and one pidbox.
        assert "container_name" not in service, f"{pool}: a fixed name would stop --scale"
        assert "hostname" not in service, f"{pool}: a fixed hostname would give replicas one node name"
        assert not service.get("ports"), f"{pool}: a published port would clash between replicas"


def market_data_shares(topology: routing.Topology, pool: str) -> int | None:
    """The ``cpu_shares`` a worker service of ``pool`` must have: the weight of the niceness its worker takes
    (containers are weighed by their cgroups, where a process's niceness does not reach; workers/cpu.py)."""
    profile = topology.pools[pool]
    window = profile.concurrency * profile.prefetch_multiplier
    return weight(MARKET_DATA_NICENESS) if yields_cpu(topology, [pool], window) else None


def test_batched_market_data_workers_yield_the_cpu_by_their_containers_weight(
    compose: dict[str, Any],
) -> None:
    shares = {pool: service.get("cpu_shares") for pool, service in worker_services(compose).items()}
    assert shares == {pool: market_data_shares(MASTERTRADE, pool) for pool in POOLS}
    # The six market-data pools, at nice 5's weight; the order path's at the default.
    assert sorted(p for p, s in shares.items() if s == 335) == [
        "executor_market_data",
        "market_data",
        "orderbook_updates",
        "strategy_market_data",
        "ticker_updates",
        "trade_updates",
    ]
    text = (ROOT / "docker-compose.shards.yml").read_text()
    sharded = routing.build("mastertrade", market_data_shards=int(yaml.safe_load(text)["x-shards"]))
    checked = 0
    for service in yaml.safe_load(text)["services"].values():
        if (service.get("command") or [])[:2] == ["tradebus", "worker"]:
            pool = service["command"][2]
            assert service.get("cpu_shares") == market_data_shares(sharded, pool) == 335, pool
            checked += 1
    assert checked == int(yaml.safe_load(text)["x-shards"])


def test_each_worker_runs_as_its_services_least_privilege_user_and_declares_nothing(
    compose: dict[str, Any],
) -> None:
    for pool, service in worker_services(compose).items():
        env = service["environment"]
        owner = service_of_pool(pool)
        user, password = login(env["TRADEBUS_BROKER_URL"])
        assert user == f"tradebus-{owner}", pool
        assert password == f"${{{password_variable(owner)}:?see .env.example}}", pool
        assert env["TRADEBUS_DECLARE_TOPOLOGY"] == "0"
        assert env["TRADEBUS_REDIS_URL"].startswith("redis://:${TRADEBUS_REDIS_PASSWORD:?")


def test_each_worker_signs_as_its_service_and_trusts_exactly_the_publishers_of_its_queue(
    compose: dict[str, Any],
) -> None:
    for pool, service in worker_services(compose).items():
        env = service["environment"]
        owner = service_of_pool(pool)
        assert env["TRADEBUS_SIGNING_SERVICE"] == owner
        assert env["TRADEBUS_SIGNING_KEY"] == f"${{TRADEBUS_SIGNING_KEY_{owner.upper()}:?see .env.example}}"
        trusted = [item.split(":", 1) for item in env["TRADEBUS_SIGNING_TRUSTED_KEYS"].split(",") if item]
        assert {name for name, _ in trusted} | {owner} == set(publishers_of(POOLS[pool].queue)) | {owner}
        for name, key in trusted:
            assert key == f"${{TRADEBUS_SIGNING_KEY_{name.upper()}:?see .env.example}}"
        assert env["TRADEBUS_SIGNING_REQUIRED"] == "${TRADEBUS_SIGNING_REQUIRED:-1}"


def test_broker_is_rabbitmq_312_with_management_and_nothing_starts_before_it_is_healthy(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["rabbitmq"]["image"] == "rabbitmq:3.12-management"
    assert services["rabbitmq"]["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert services["topology"]["command"] == ["tradebus", "topology", "declare"]
    for name, service in services.items():
        if service.get("image") != TRADEBUS_IMAGE or name == "definitions":
            continue
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        if name != "topology":
            assert service["depends_on"]["topology"]["condition"] == "service_completed_successfully", name
    assert services["rabbitmq"]["depends_on"]["definitions"]["condition"] == "service_completed_successfully"


def test_rabbitmq_imports_the_definitions_the_definitions_service_writes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    command = services["definitions"]["command"]
    assert command[:5] == ["tradebus", "topology", "export", "--users", "--vhost"]
    written = Path(command[command.index("--output") + 1])
    (writer_mount,) = services["definitions"]["volumes"]
    volume, writer_dir = writer_mount.split(":")
    reader_mount = next(v for v in services["rabbitmq"]["volumes"] if v.startswith(f"{volume}:"))
    reader_dir = reader_mount.split(":")[1]
    conf_mount = next(
        v for v in services["rabbitmq"]["volumes"] if v.startswith("./deploy/rabbitmq/rabbitmq.conf:")
    )
    assert conf_mount.split(":")[1].startswith("/etc/rabbitmq/conf.d/")
    conf = dict(
        line.split(" = ", 1) for line in (ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    assert conf["definitions.import_backend"] == "local_filesystem"
    assert Path(conf["definitions.local.path"]) == Path(reader_dir) / written.relative_to(writer_dir)
    assert services["definitions"]["user"] == "999:999"  # the rabbitmq image's uid reads the 0600 file
    assert "install -d -o 999 -g 999 -m 0700 /definitions" in (ROOT / "Dockerfile").read_text()
    assert volume in compose["volumes"]


def test_every_rabbitmq_setting_we_write_is_one_rabbitmq_knows() -> None:
    schemas = glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbit-*/priv/schema/rabbit.schema")
    assert schemas, "RabbitMQ's config schema is installed with the broker (make services)"
    schema = Path(schemas[0]).read_text()
    for line in (ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text().splitlines():
        if line and not line.startswith("#"):
            key = line.split(" = ")[0]
            generic = re.sub(r"\.(guest)$", ".$user", key)
            assert f'"{key}"' in schema or f'"{generic}"' in schema, key


def test_the_committed_topology_definitions_are_what_tradebus_topology_export_produces() -> None:
    exported = CliRunner().invoke(main, ["topology", "export", "--vhost", "/"])
    assert exported.exit_code == 0
    committed = (ROOT / "deploy/rabbitmq/topology.json").read_text()
    assert committed == exported.output, (
        "regenerate: tradebus topology export --vhost / > deploy/rabbitmq/topology.json"
    )


def test_the_definitions_service_has_a_password_for_every_account_and_nothing_else(
    compose: dict[str, Any],
) -> None:
    env = compose["services"]["definitions"]["environment"]
    # ...and the number of shards: the definitions hold the topology every other service builds.
    assert set(env) == {password_variable(a.service) for a in accounts()} | {"TRADEBUS_MARKET_DATA_SHARDS"}
    assert env["TRADEBUS_MARKET_DATA_SHARDS"] == compose["x-tradebus-env"]["TRADEBUS_MARKET_DATA_SHARDS"]


def test_flower_beat_and_the_simulator_run_with_their_own_users(compose: dict[str, Any]) -> None:
    services = compose["services"]
    flower = services["flower"]
    assert flower["command"][:4] == ["celery", "-A", "tradebus", "flower"]
    assert flower["environment"]["TRADEBUS_FLOWER_PASSWORD"].startswith("${TRADEBUS_FLOWER_PASSWORD:?")
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])
    assert services["beat"]["command"][:4] == ["celery", "-A", "tradebus", "beat"]
    assert services["simulator"]["command"][:2] == ["tradebus", "simulate"]
    assert services["simulator"]["command"][-2:] == ["--duration", "0"]
    users = {
        name: login(service["environment"]["TRADEBUS_BROKER_URL"])[0]
        for name, service in services.items()
        if "TRADEBUS_BROKER_URL" in service.get("environment", {})
    }
    assert (users["flower"], users["beat"], users["simulator"], users["topology"]) == (
        "tradebus-flower",
        "tradebus-beat",
        "tradebus-market_data",
        "tradebus-admin",
    )
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


def test_no_credentials_are_written_into_the_compose_file_and_every_secret_is_required() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "guest" not in text
    assert "mastertrade123" not in text
    for match in VARIABLE.finditer(text):
        if re.search(r"PASSWORD|_KEY|AUTH", match["name"]) and match["name"] != "TRADEBUS_FLOWER_USER":
            assert match["op"] == ":?", f"{match[0]} must be required, with no default"


def test_dotenv_fills_every_secret_compose_needs_from_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    # The cluster override (docker-compose.cluster.yml) adds the nodes' Erlang cookie.
    cluster = (ROOT / "docker-compose.cluster.yml").read_text()
    names = {m["name"] for m in VARIABLE.finditer(text + cluster)}
    listed = {line.split("=")[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert names == listed
    dotenv = subprocess.run(
        ["bash", str(ROOT / "scripts/dotenv.sh")], capture_output=True, text=True, timeout=60
    )
    environ = dict(
        line.split("=", 1) for line in dotenv.stdout.splitlines() if line and not line.startswith("#")
    )
    for name, value in environ.items():
        if re.search(r"PASSWORD|_KEY", name):
            assert re.fullmatch(r"[A-Za-z0-9_-]{32,}", value), name
    rendered = yaml.safe_load(interpolate(text, environ))
    url = rendered["services"]["worker-order-requests"]["environment"]["TRADEBUS_BROKER_URL"]
    assert login(url) == ("tradebus-execution", environ["TRADEBUS_USER_PASSWORD_EXECUTION"])
    with pytest.raises(KeyError, match="TRADEBUS_USER_PASSWORD_ADMIN"):
        interpolate(text, {k: v for k, v in environ.items() if k != "TRADEBUS_USER_PASSWORD_ADMIN"})


def test_every_tradebus_service_starts_with_settings_tradebus_accepts() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    dotenv = subprocess.run(
        ["bash", str(ROOT / "scripts/dotenv.sh")], capture_output=True, text=True, timeout=60
    )
    environ = dict(
        line.split("=", 1) for line in dotenv.stdout.splitlines() if line and not line.startswith("#")
    )
    rendered = yaml.safe_load(interpolate(text, environ))
    checked = 0
    for name, service in rendered["services"].items():
        if service.get("image") == TRADEBUS_IMAGE:
            env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
            settings = Settings.from_env(env)  # raises SettingsError on any inconsistent variable
            tls.broker_use_ssl(settings)
            checked += 1
            if name.startswith("worker-"):
                assert settings.signing.required and settings.signing.key, name
    assert checked == len(POOLS) + 5  # definitions, topology, beat, flower, simulator


def test_readme_says_how_a_pool_scales_out(compose: dict[str, Any]) -> None:
    """The README's shell block has a `docker compose up --scale <pool service>=N` that would work."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", readme, flags=re.S | re.M)
    commands = [shlex.split(line, comments=True) for block in blocks for line in block.splitlines()]
    scaling = [argv for argv in commands if argv[:3] == ["docker", "compose", "up"] and "--scale" in argv]
    assert scaling, "no `docker compose up --scale` in the README's shell blocks"
    for argv in scaling:
        service, _, replicas = argv[argv.index("--scale") + 1].partition("=")
        assert int(replicas) > 1, argv
        assert service in compose["services"], f"{service} is no service of docker-compose.yml"
        pool = compose["services"][service]
        # A pool's worker: one of the topology's pools, and nothing that pins it to a single replica.
        assert pool["labels"]["tradebus.pool.queue"] in POOLS, service
        assert "container_name" not in pool and "ports" not in pool, service


def dockerfile_copies() -> dict[str, str]:
    """What the Dockerfile's COPY instructions put in the image: each source, by where it lands.

    A source copied into a directory (``COPY a b ./``) lands under its own name; one copied to a path
    (``COPY routing ./routing``) lands there. Paths are relative to WORKDIR.
    """
    landed: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        *sources, target = args
        for source in sources:
            where = f"{target.rstrip('/')}/{source}" if target.endswith("/") else target
            landed[source] = str(Path(where)).removeprefix("./")
    return landed


def local_imports() -> set[str]:
    """The top-level modules of this repository that the installed code imports (files and packages)."""
    local = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    local |= {p.stem for p in ROOT.glob("*.py")}
    wanted: set[str] = set()
    todo = [ROOT / "tradebus", ROOT / "routing", ROOT / "tasks", ROOT / "workers", ROOT / "celeryconfig.py"]
    for path in todo:
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in files:
            for node in ast.walk(ast.parse(file.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                wanted |= {n.split(".")[0] for n in names if n.split(".")[0] in local}
    # Loaded by name: each profile's stage modules (Celery imports them) and the Celery configuration.
    for profile in ("mastertrade", "letrade"):
        wanted |= {m.split(".")[0] for m in routing.build(profile).stage_modules}
    return wanted | {"celeryconfig"}


def test_image_installs_every_package_the_app_imports() -> None:
    copied = dockerfile_copies()
    imported = local_imports()
    assert {"routing", "tradebus", "tasks", "workers", "celeryconfig"} <= imported
    for module in sorted(imported):
        source = f"{module}.py" if (ROOT / f"{module}.py").exists() else module
        assert copied.get(source) == source, f"{source} is not copied to WORKDIR/{source}: {copied}"
    # `pip install .` (the Dockerfile's) installs what setuptools is told to package: all of them.
    # With the OTLP exporter extra: the image can export traces (docs/operations.md, "Traces").
    assert (
        "pyproject.toml" in copied
        and "pip install --no-cache-dir '.[otlp]'" in (ROOT / "Dockerfile").read_text()
    )
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packaged = set(config["py-modules"]) | {p.rstrip("*") for p in config["packages"]["find"]["include"]}
    assert imported <= packaged


def test_definitions_json_is_valid_for_rabbitmq() -> None:
    data = json.loads((ROOT / "deploy/rabbitmq/topology.json").read_text())
    assert set(data) == {"exchanges", "queues", "bindings", "policies"}
    assert {item["vhost"] for key in data for item in data[key]} == {"/"}


def test_the_broker_enables_the_consistent_hash_exchange_the_shards_need(compose: dict[str, Any]) -> None:
    mount = next(
        v
        for v in compose["services"]["rabbitmq"]["volumes"]
        if v.startswith("./deploy/rabbitmq/enabled_plugins:")
    )
    assert mount.split(":")[1] == "/etc/rabbitmq/enabled_plugins"
    plugins = (ROOT / "deploy/rabbitmq/enabled_plugins").read_text().strip()
    assert plugins.startswith("[") and plugins.endswith("].")
    assert set(plugins[1:-2].split(",")) == {
        "rabbitmq_consistent_hash_exchange",
        "rabbitmq_management",  # the image's own, which the file replaces
        "rabbitmq_prometheus",
    }
    assert "rabbitmq_consistent_hash_exchange" in (ROOT / "scripts/services.sh").read_text()


def test_the_shards_override_pins_n_and_runs_one_pool_per_shard_like_the_unsharded_strategy_pool(
    compose: dict[str, Any],
) -> None:
    text = (ROOT / "docker-compose.shards.yml").read_text()
    override = yaml.safe_load(text)["services"]
    count = int(yaml.safe_load(text)["x-shards"])
    sharded = routing.build("mastertrade", market_data_shards=count)
    unsharded = compose["services"]["worker-strategy-market-data"]
    assert override.pop("worker-strategy-market-data") == {"profiles": ["unsharded"]}
    workers = {f"worker-strategy-market-data-{i}" for i in range(count)}
    assert (
        workers <= set(override)
        and len([n for n in override if n.startswith("worker-strategy-market-data-")]) == count
    )
    # Every other service of the bus builds the same topology: the same N, whatever .env says.
    pinned = {
        n for n, s in compose["services"].items() if "TRADEBUS_MARKET_DATA_SHARDS" in s.get("environment", {})
    }
    assert set(override) - workers == pinned - {"worker-strategy-market-data"}
    for name in pinned - {"worker-strategy-market-data"}:
        assert override[name] == {"environment": {"TRADEBUS_MARKET_DATA_SHARDS": str(count)}}
    for i, service in enumerate(override[f"worker-strategy-market-data-{i}"] for i in range(count)):
        pool = sharded.pools[f"strategy_market_data.{i}"]
        assert service["command"] == ["tradebus", "worker", pool.queue]
        assert service["labels"] == {
            "tradebus.pool.queue": pool.queue,
            "tradebus.pool.concurrency": str(pool.concurrency),
            "tradebus.pool.prefetch-multiplier": str(pool.prefetch_multiplier),
        }
        env = service["environment"]
        assert env["TRADEBUS_MARKET_DATA_SHARDS"] == str(count)
        assert {k: v for k, v in env.items() if k != "TRADEBUS_MARKET_DATA_SHARDS"} == {
            k: v for k, v in unsharded["environment"].items() if k != "TRADEBUS_MARKET_DATA_SHARDS"
        }
        assert service["depends_on"] == unsharded["depends_on"]
        assert "container_name" not in service and "hostname" not in service
