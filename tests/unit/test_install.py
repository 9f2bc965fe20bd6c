"""The install path of a fresh machine (Makefile, scripts/venv.sh, constraints.txt) and the suite's guard."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = {
    re.split(r"[=<>!~ ]", line, maxsplit=1)[0].lower().replace("_", "-"): line
    for line in (ROOT / "constraints.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _requirements() -> list[str]:
    project = PYPROJECT["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["dev"]]


@pytest.mark.parametrize("requirement", _requirements())
def test_every_dependency_is_bounded_by_major_version(requirement: str) -> None:
    assert re.search(r"<\s*\d", requirement), f"{requirement}: no upper bound, a major release could break us"


@pytest.mark.parametrize("requirement", _requirements())
def test_every_dependency_is_pinned_exactly_in_the_constraints_make_install_uses(requirement: str) -> None:
    pinned = CONSTRAINTS.get(_name(requirement))
    assert pinned is not None and "==" in pinned, f"{_name(requirement)} is not pinned in constraints.txt"


def test_make_install_installs_through_the_constraints_and_reinstalls_when_they_change() -> None:
    makefile = (ROOT / "Makefile").read_text()
    install = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert install is not None
    assert "constraints.txt" in install.group(0).splitlines()[0], "the stamp must depend on constraints.txt"
    assert re.search(r"pip install .*-c constraints\.txt", install.group(1))
    assert "scripts/venv.sh" in install.group(1)
    stamp = re.search(r"^STAMP := (.*)$", makefile, re.MULTILINE)
    assert stamp is not None and "constraints.txt" in stamp.group(1)


def test_a_hung_test_fails_after_a_per_test_timeout() -> None:
    options = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert 0 < int(options["timeout"]) <= 600
    assert any(_name(r) == "pytest-timeout" for r in PYPROJECT["project"]["optional-dependencies"]["dev"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_half_made_venv_is_made_again_not_left_to_break_the_next_run(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")  # what an interrupted `python -m venv` leaves
    (venv / "bin" / "python").chmod(0o755)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "venv.sh"), sys.executable, str(venv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "incomplete" in done.stderr
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--version"]
    check = subprocess.run(pip, capture_output=True, check=False)
    assert check.returncode == 0


def test_without_pythons_venv_module_it_says_in_one_line_what_to_install(tmp_path: Path) -> None:
    # A python whose ensurepip is missing, as Debian's python3 without python3-venv; run as a non-root user
    # would be (the script installs the package itself only as root with apt): `id` says uid 1000.
    fake = tmp_path / "python3"
    fake.write_text(
        f'#!/bin/sh\ncase "$*" in *"import ensurepip"*) exit 1;; esac\nexec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    user = tmp_path / "bin"
    user.mkdir()
    (user / "id").write_text("#!/bin/sh\necho 1000\n")
    (user / "id").chmod(0o755)
    env = {"PATH": f"{user}:/usr/bin:/bin"}
    command = ["bash", str(ROOT / "scripts" / "venv.sh"), str(fake), str(tmp_path / ".venv")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install python3." in lines[0] and "-venv" in lines[0], done.stderr
    assert not (tmp_path / ".venv").exists()
