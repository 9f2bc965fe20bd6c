"""docker-compose.tls.yml, the TLS-only overlay, checked by parsing against docker-compose.yml, the RabbitMQ
configuration it mounts, and the certificates scripts/certs.sh makes (there is no Docker engine here).

Merged over the base file as ``docker compose -f docker-compose.yml -f docker-compose.tls.yml`` merges it:
no plain listener or port remains, every service that connects does so with amqps:// / rediss:// / https://,
its CA and client certificate, and TRADEBUS_REQUIRE_TLS=1, and every file a service reads is one the
``certs`` service installs from what the script produces.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.unit.test_compose import ROOT, TRADEBUS_IMAGE, interpolate, login
from tradebus import tls
from tradebus.settings import Settings

OVERLAY = ROOT / "docker-compose.tls.yml"
TLS_CONF = ROOT / "deploy/rabbitmq/tls.conf"
#: What scripts/certs.sh writes.
CERT_FILES = {"ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"}


class _ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (``!override``, ``!reset``)."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    value = (
        loader.construct_sequence(node, deep=True)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_scalar(node)  # type: ignore[arg-type]
    )
    return ("!override", value)


_ComposeLoader.add_constructor("!override", _tagged)
_ComposeLoader.add_constructor("!reset", _tagged)


def load(text: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(text, Loader=_ComposeLoader)
    return data


def merge(base: Any, over: Any) -> Any:
    """Compose's merge: mappings by key, sequences appended (``!override`` replaces), the rest replaced."""
    if isinstance(over, tuple) and over[0] == "!override":
        return over[1]
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merge(base[k], v) if k in base else strip(v) for k, v in over.items()}}
    if isinstance(base, list) and isinstance(over, list) and not all(isinstance(i, str) for i in base + over):
        return over
    if isinstance(base, list) and isinstance(over, list):
        return base + [item for item in over if item not in base]
    return strip(over)


def strip(value: Any) -> Any:
    if isinstance(value, tuple) and value[0] == "!override":
        return value[1]
    return value


def merged_text() -> dict[str, Any]:
    base, over = load((ROOT / "docker-compose.yml").read_text()), load(OVERLAY.read_text())
    services = {name: merge(base["services"].get(name, {}), svc) for name, svc in over["services"].items()}
    return {
        "services": {**base["services"], **services},
        "volumes": {**(base.get("volumes") or {}), **(over.get("volumes") or {})},
    }


@pytest.fixture(scope="module")
def merged() -> dict[str, Any]:
    return merged_text()


def connecting(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every tradebus service that connects (it names a broker)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if "TRADEBUS_BROKER_URL" in (service.get("environment") or {})
    }


def conf(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split(" = ", 1) for line in lines)


def installed(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Volume -> {file name: the file of scripts/certs.sh it is a copy of}, from the certs service."""
    script = compose["services"]["certs"]["command"][-1]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["certs"]["volumes"]}
    assert mounts["/certs"] == "./certs"
    result: dict[str, dict[str, str]] = {}
    for source, target in re.findall(r"install [^;]*?(/certs/[^\s;]+) (/tls-[^\s;]+)", script):
        directory, _, name = target.rpartition("/")
        result.setdefault(mounts[directory], {})[name] = source.removeprefix("/certs/")
    return result


def test_every_connecting_service_uses_tls_urls_its_certificates_and_requires_tls(
    merged: dict[str, Any],
) -> None:
    base = load((ROOT / "docker-compose.yml").read_text())
    services = connecting(merged)
    assert set(services) == set(connecting(base))  # none left out of the overlay
    for name, service in services.items():
        env = service["environment"]
        plain_user = login(base["services"][name]["environment"]["TRADEBUS_BROKER_URL"])
        tls_url = env["TRADEBUS_BROKER_URL"]
        assert tls_url.startswith("amqps://") and tls_url.endswith("@rabbitmq:5671//"), name
        assert login(tls_url.replace("amqps://", "amqp://").replace(":5671//", ":5672//")) == plain_user, name
        assert env["TRADEBUS_REQUIRE_TLS"] == "1", name
        assert env["TRADEBUS_MANAGEMENT_URL"] == "https://rabbitmq:15671", name
        assert env["TRADEBUS_REDIS_URL"].startswith("rediss://"), name
        assert "tls-client:/tls:ro" in service["volumes"], name
        for value in env.values():
            assert not re.match(r"(amqp|redis|http)://", str(value)), (name, value)


def test_every_tls_service_starts_with_settings_the_tls_only_mode_accepts(merged: dict[str, Any]) -> None:
    dotenv = subprocess.run(
        ["bash", str(ROOT / "scripts/dotenv.sh")], capture_output=True, text=True, timeout=60
    )
    environ = dict(
        line.split("=", 1) for line in dotenv.stdout.splitlines() if line and not line.startswith("#")
    )
    for name, service in connecting(merged).items():
        env = {k: interpolate(str(v), environ) for k, v in service["environment"].items()}
        settings = Settings.from_env(env)  # InsecureConnection on any URL without TLS
        assert settings.tls.required, name
        options = tls.broker_use_ssl(settings)
        assert options is not None and options["ca_certs"] == "/tls/ca.pem", name
        assert (options["certfile"], options["keyfile"]) == ("/tls/client.pem", "/tls/client.key"), name
        query = parse_qs(urlsplit(settings.redis_url).query)
        assert query["ssl_cert_reqs"] == ["required"], name
        assert urlsplit(settings.redis_url).password == environ["TRADEBUS_REDIS_PASSWORD"]
        assert service.get("image") == TRADEBUS_IMAGE


def test_rabbitmq_listens_on_tls_only_with_the_certificates_the_certs_service_installs(
    merged: dict[str, Any],
) -> None:
    rabbitmq = merged["services"]["rabbitmq"]
    assert rabbitmq["ports"] == ["127.0.0.1:5671:5671", "127.0.0.1:15671:15671"]
    assert "./deploy/rabbitmq/tls.conf:/etc/rabbitmq/conf.d/30-tls.conf:ro" in rabbitmq["volumes"]
    assert "tls-server:/etc/rabbitmq/tls:ro" in rabbitmq["volumes"]
    assert rabbitmq["healthcheck"]["test"][-2:] == ["check_port_listener", "5671"]
    assert rabbitmq["depends_on"]["certs"] == {"condition": "service_completed_successfully"}
    settings = conf(TLS_CONF)
    assert settings["listeners.tcp"] == "none"
    assert settings["listeners.ssl.default"] == "5671"
    assert settings["management.ssl.port"] == "15671"
    assert not [key for key in settings if key.startswith(("management.tcp", "management.listener"))]
    assert (settings["ssl_options.verify"], settings["ssl_options.fail_if_no_peer_cert"]) == (
        "verify_peer",
        "true",
    )
    server = installed(merged)["tls-server"]
    for key in ("cacertfile", "certfile", "keyfile"):
        for prefix in ("ssl_options", "management.ssl"):
            path = settings[f"{prefix}.{key}"]
            assert path.startswith("/etc/rabbitmq/tls/") and path.rpartition("/")[2] in server, path
    assert server == {"ca.pem": "ca.pem", "server.pem": "server.pem", "server.key": "server.key"}


def test_every_rabbitmq_tls_setting_is_one_rabbitmq_knows() -> None:
    schemas = glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbit-*/priv/schema/rabbit.schema")
    schemas += glob.glob(
        "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_management-*/priv/schema/*"
    )
    assert len(schemas) >= 2, "RabbitMQ's config schemas are installed with the broker (make services)"
    schema = "".join(Path(path).read_text() for path in schemas)
    for key in conf(TLS_CONF):
        generic = re.sub(
            r"\.\d+$", ".$version", re.sub(r"^listeners\.ssl\.default$", "listeners.ssl.$name", key)
        )
        assert f'"{key}"' in schema or f'"{generic}"' in schema, key


def test_redis_listens_on_tls_only_and_requires_client_certificates(merged: dict[str, Any]) -> None:
    redis = merged["services"]["redis"]
    command = redis["command"][-1]
    flags = dict(re.findall(r"--([a-z-]+) (\S+)", command))
    assert (flags["port"], flags["tls-port"], flags["tls-auth-clients"]) == ("0", "6379", "yes")
    assert "ports" not in redis  # reachable on compose's network only
    server, client = installed(merged)["tls-server"], installed(merged)["tls-client"]
    assert "tls-server:/tls:ro" in redis["volumes"]
    for flag in ("tls-cert-file", "tls-key-file", "tls-ca-cert-file"):
        assert flags[flag].removeprefix("/tls/") in server, flag
    check = redis["healthcheck"]["test"]
    assert "--tls" in check and check[check.index("--cert") + 1].removeprefix("/tls-client/") in client


def test_clients_read_the_files_the_certs_service_installs_for_them(merged: dict[str, Any]) -> None:
    client = installed(merged)["tls-client"]
    assert client == {"ca.pem": "ca.pem", "client.pem": "client.pem", "client.key": "client.key"}
    for service in connecting(merged).values():
        env = service["environment"]
        redis_files = parse_qs(urlsplit(env["TRADEBUS_REDIS_URL"].replace("${", "").replace("}", "")).query)
        paths = [
            env["TRADEBUS_BROKER_CA_FILE"],
            env["TRADEBUS_BROKER_CERT_FILE"],
            env["TRADEBUS_BROKER_KEY_FILE"],
        ]
        paths += [redis_files[key][0] for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")]
        for path in paths:
            assert path.startswith("/tls/") and path.removeprefix("/tls/") in client, path
    assert {"tls-server", "tls-client"} <= set(merged["volumes"])
    assert not set().union(*(set(files.values()) for files in installed(merged).values())) - CERT_FILES
    assert "ca.key" not in set().union(*(set(files.values()) for files in installed(merged).values()))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_certificate_script_makes_a_ca_and_certificates_that_verify_for_the_compose_hostnames(
    tmp_path: Path,
) -> None:
    out = tmp_path / "certs"
    made = subprocess.run(
        ["bash", str(ROOT / "scripts/certs.sh"), str(out)], capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    assert {p.name for p in out.iterdir()} == CERT_FILES
    for key in ("ca.key", "server.key", "client.key"):
        assert (out / key).stat().st_mode & 0o077 == 0, key
    for cert in ("server.pem", "client.pem"):
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(out / "ca.pem"), str(out / cert)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert verify.stdout.strip() == f"{out / cert}: OK", verify.stderr
    for name, purpose in (("rabbitmq", "sslserver"), ("redis", "sslserver"), ("localhost", "sslserver")):
        check = subprocess.run(
            ["openssl", "verify", "-CAfile", str(out / "ca.pem"), "-purpose", purpose,
             "-verify_hostname", name, str(out / "server.pem")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, (name, check.stdout, check.stderr)
    client = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "ca.pem"), "-purpose", "sslclient",
         str(out / "client.pem")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert client.returncode == 0, client.stderr
    again = subprocess.run(
        ["bash", str(ROOT / "scripts/certs.sh"), str(out)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode != 0 and "exists" in again.stderr  # never overwrites a deployment's CA


def test_the_overlay_writes_no_credential_and_requires_every_secret_it_names() -> None:
    from tests.unit.test_compose import VARIABLE

    text = OVERLAY.read_text()
    listed = {
        line.split("=")[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    for match in VARIABLE.finditer(text):
        assert match["name"] in listed, match[0]
        if re.search(r"PASSWORD|_KEY|AUTH", match["name"]):
            assert match["op"] == ":?", f"{match[0]} must be required, with no default"
    assert not re.search(r"://[^:${}\s]+:[^$@\s]+@", text)  # no literal user:password@ in a URL
