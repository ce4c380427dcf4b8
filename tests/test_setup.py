"""scripts/python-env: which Python scripts/demo and scripts/test use (issue 12).

Debian's and Ubuntu's own python3 refuse ``pip install`` (PEP 668), and sudo resets PATH and
drops VIRTUAL_ENV. The choice is run for real, with this host's interpreters, in a checkout
stand-in under tmp_path: the project venv is created there, never in this checkout. Nothing is
installed from a package index here (tests stay on this machine); ``scripts/fresh-check``
runs the whole set-up on a fresh Debian 12.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, unavailable

#: sudo's secure_path on Debian and Ubuntu: no pyenv, no activated venv.
SUDO_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def choose(repo: Path, env: dict[str, str]) -> tuple[int, dict[str, str], str]:
    """Source scripts/python-env and run python_env_choose in a clean environment (as sudo
    leaves it): (exit code, the py/py_why/py_bin it set, stderr)."""
    script = (
        f'repo={repo}; source {REPO / "scripts" / "python-env"}; python_env_choose || exit $?\n'
        'printf "py=%s\\nwhy=%s\\nbin=%s\\n" "$py" "$py_why" "$py_bin"\n'
    )
    r = subprocess.run(
        ["/bin/bash", "-c", script], capture_output=True, text=True, env={"PATH": SUDO_PATH, **env}, timeout=120
    )
    facts = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line and not line.startswith("==>"))
    return r.returncode, facts, r.stderr


def externally_managed(python: Path) -> bool:
    code = (
        "import os, sys, sysconfig; "
        "sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')) else 1)"
    )
    return subprocess.run([str(python), "-c", code]).returncode == 0


@pytest.fixture
def debian_python() -> Path:
    if not (SYSTEM_PYTHON.exists() and externally_managed(SYSTEM_PYTHON)):
        unavailable("no PEP 668 python3 at /usr/bin/python3 (Debian 12 / Ubuntu 24.04 have one)")
    return SYSTEM_PYTHON


def test_a_pep668_python_under_sudo_gets_the_project_venv_and_keeps_it(tmp_path: Path, debian_python: Path) -> None:
    code, facts, err = choose(tmp_path, {})
    assert code == 0, err
    venv_py = tmp_path / ".venv" / "bin" / "python"
    assert facts == {"py": str(venv_py), "why": "a new project venv", "bin": str(tmp_path / ".venv" / "bin")}
    assert (tmp_path / ".venv" / "pyvenv.cfg").is_file()
    in_venv = "import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)"
    assert subprocess.run([str(venv_py), "-c", in_venv]).returncode == 0
    assert subprocess.run([str(venv_py), "-m", "pip", "--version"], capture_output=True).returncode == 0
    # The next run finds it again by its path, whatever PATH says.
    code, facts, err = choose(tmp_path, {"PATH": "/nonexistent"})
    assert code == 0, err
    assert facts["py"] == str(venv_py) and facts["why"] == "the project venv"


def test_a_python_that_takes_packages_is_used_as_it_is(tmp_path: Path) -> None:
    """CI's Python (pyenv here): pip present and no PEP 668 marker, so no venv is made."""
    if externally_managed(Path(sys.executable)) or sys.prefix != sys.base_prefix:
        pytest.skip("the interpreter running the tests is itself PEP 668 managed or a venv")
    bindir = Path(sys.executable).parent
    code, facts, err = choose(tmp_path, {"PATH": f"{bindir}:{SUDO_PATH}"})
    assert code == 0, err
    assert facts["why"] == "python3 on PATH takes packages"
    assert Path(facts["py"]).resolve() == Path(sys.executable).resolve()
    assert not (tmp_path / ".venv").exists()


def test_an_activated_venv_and_lockdown_python_win(tmp_path: Path, debian_python: Path) -> None:
    venv = tmp_path / "elsewhere"
    subprocess.run([str(debian_python), "-m", "venv", "--without-pip", str(venv)], check=True)
    code, facts, err = choose(tmp_path, {"VIRTUAL_ENV": str(venv)})
    assert code == 0, err
    assert (facts["py"], facts["why"]) == (str(venv / "bin" / "python"), "the activated venv")
    code, facts, err = choose(tmp_path, {"VIRTUAL_ENV": str(venv), "LOCKDOWN_PYTHON": sys.executable})
    assert code == 0, err
    assert (facts["py"], facts["why"]) == (sys.executable, "LOCKDOWN_PYTHON")
    assert not (tmp_path / ".venv").exists()


def test_python_older_than_3_11_is_refused_with_what_to_install(tmp_path: Path) -> None:
    old = tmp_path / "bin"
    old.mkdir()
    fake = old / "python3"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.9.2"\nexit 1\n')
    fake.chmod(0o755)
    code, facts, err = choose(tmp_path / "repo", {"PATH": str(old)})
    assert (code, facts) == (5, {})
    assert err == (
        "python-env: lockdown needs Python >= 3.11; python3 on PATH is Python 3.9.2. "
        "Install python3.11 (or newer) and rerun.\n"
    )
    assert not (tmp_path / "repo").exists()


def test_scripts_run_their_tools_with_the_chosen_python() -> None:
    """ruff, mypy and pytest come from the same environment as lockdown (no bare `ruff` on PATH)."""
    text = (REPO / "scripts" / "test").read_text()
    for tool in ("ruff check", "mypy lockdown", "pytest -q"):
        assert f'"$py" -m {tool}' in text
    assert "\nruff " not in text and "\nmypy " not in text and "python3 -m" not in text
    assert ".venv/" in (REPO / ".gitignore").read_text().splitlines()
