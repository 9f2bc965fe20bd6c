"""docker-compose.yml, checked by parsing (there is no Docker engine here) against the pool profiles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.profiles import POOLS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_every_pool_has_one_worker_service_started_by_its_profile(compose: dict[str, Any]) -> None:
    pools = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:2] == ["tradebus", "worker"]:
            pools.setdefault(command[2], []).append(name)
    assert pools == {pool: [f"worker-{pool.replace('_', '-')}"] for pool in POOLS}


def test_worker_services_are_not_sized_by_hand(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        command = " ".join(service.get("command") or [])
        assert not re.search(r"(^| )(-c|--concurrency|--prefetch-multiplier)( |=|$)", command), command


def test_broker_is_rabbitmq_312_with_management_and_workers_wait_for_the_topology(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["rabbitmq"]["image"] == "rabbitmq:3.12-management"
    assert services["topology"]["command"] == ["tradebus", "topology", "declare"]
    for name, service in services.items():
        if name.startswith("worker-"):
            assert service["depends_on"]["topology"]["condition"] == "service_completed_successfully"
            assert "TRADEBUS_BROKER_URL" in service["environment"]
            assert "TRADEBUS_REDIS_URL" in service["environment"]


def test_no_credentials_are_written_into_the_compose_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "guest" not in text
    assert "mastertrade123" not in text
    for password in re.findall(r"PASSWORD[^}]*}", text):
        assert password.startswith("PASSWORD:?"), password


def test_image_installs_every_package_the_app_imports() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("routing", "tradebus", "tasks", "workers", "celeryconfig.py"):
        assert package in dockerfile
