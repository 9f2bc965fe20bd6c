"""The package's shape (docs/architecture.md): no import circle, small modules, no process re-exec, and
the topology a value that both buses build side by side."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import routing
from tradebus.application import create_app
from tradebus.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("routing", "tradebus", "tasks", "workers")
#: The longest module the package may have (most stay under 300 lines).
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def circles(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    """Each direct import whose imported module imports its importer back, directly or not."""
    return [
        (module, imported)
        for module in sorted(graph.modules)
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    ]


def test_no_module_imports_itself_through_others() -> None:
    assert circles(grimp.build_graph(*PACKAGES)) == []


def test_a_circle_would_be_seen() -> None:
    """Positive control: one import added the wrong way round (the core's codec importing a profile that
    imports it) is found."""
    graph = grimp.build_graph(*PACKAGES)
    graph.add_import(importer="tradebus.codec", imported="tradebus.mastertrade.wire")
    assert ("tradebus.codec", "tradebus.mastertrade.wire") in circles(graph)


def test_every_module_stays_under_the_size_limit() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules()}
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}


def test_nothing_re_executes_the_interpreter() -> None:
    calls = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("exec")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                calls.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{node.attr}")
    assert calls == []


def test_both_buses_apps_are_built_in_one_process_each_with_its_own_topology_and_stages() -> None:
    settings = Settings()
    mastertrade = create_app(routing.build("mastertrade"), settings)
    letrade = create_app(routing.build("letrade"), settings)
    assert (mastertrade.topology.name, letrade.topology.name) == ("mastertrade", "letrade")
    mastertrade_queues = {q.name for q in mastertrade.conf.task_queues}
    letrade_queues = {q.name for q in letrade.conf.task_queues}
    assert "order_requests" in mastertrade_queues and "letrade.exchange_connector" in letrade_queues
    assert not mastertrade_queues & letrade_queues
    assert "tradebus.execution.execute_order" in mastertrade.tasks
    assert "tradebus.execution.execute_order" not in letrade.tasks
    assert "tradebus.letrade_capital_manager.allocate" in letrade.tasks
    assert "tradebus.letrade_capital_manager.allocate" not in mastertrade.tasks


def test_a_variant_no_profile_builds_yet_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="queue type 'mirrored'"):
        routing.build("mastertrade", queue_type="mirrored")
    with pytest.raises(ValueError, match="unknown topology 'kafka'"):
        routing.build("kafka")


@pytest.mark.parametrize(
    ("imports", "loaded", "apps"),
    [
        ("import tradebus.errors, tradebus.publisher, tradebus.stage", "[]", "[]"),
        # Positive control: the default app, when asked for, is built with its stages and Flower's hook.
        ("import tradebus; tradebus.app", "['tasks.execution', 'tornado']", "['tradebus']"),
    ],
    ids=["core", "default-app"],
)
def test_importing_the_core_builds_no_app_and_loads_no_web_stack(
    imports: str, loaded: str, apps: str
) -> None:
    script = (
        f"import sys; {imports}; from celery import _state; "
        "print(sorted(m for m in ('tornado', 'flower', 'tasks.execution') if m in sys.modules)); "
        "print([a.main for a in _state._get_active_apps() if a.main == 'tradebus'])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split("\n")[:2] == [loaded, apps]


def test_every_core_module_is_in_the_core_layer_the_import_contract_checks() -> None:
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    core = {name.strip() for layer in layers for name in layer.split(":")}
    modules = {f"tradebus.{p.stem}" for p in (ROOT / "tradebus").glob("*.py") if p.stem != "__init__"}
    assert modules - core == set(), "add these core modules to the layers contract in pyproject.toml"
