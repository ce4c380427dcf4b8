"""The state dir is refused when anyone but root could change it, like sshd's StrictModes (issue 13).

Each test makes its own directories under a fresh root-owned 0755 directory,
so that only the modes the test sets are in play (pytest's own tmp dirs are
0700 and sit under /tmp, which is root-owned 1777).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli, unavailable

WAIT = 'name = "wait"\n\n[[steps]]\naction = "wait"\nseconds = 0\n'
STRICT = "(lockdown refuses a state dir others can change, like sshd's StrictModes)"


@pytest.fixture
def base() -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("the ownership cases need root")
    path = Path(tempfile.mkdtemp(prefix="lkd-state-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def refused(r: subprocess.CompletedProcess[str], message: str, hint: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == f"lockdown: error: {message}\n  -> {hint}\n"


def unsafe(r: subprocess.CompletedProcess[str], state: Path, where: Path, why: str, fix: str) -> None:
    """Refused with the StrictModes message: ``where`` (``state`` or a parent) ``why``; ``fix`` it."""
    refused(r, f"unsafe state dir {state}: {where} {why}", f"{fix} {where}, or choose another --state-dir {STRICT}")


def make_state(base: Path, mode: int = 0o700) -> Path:
    """``base/state``, created with ``mode`` (chmod, so the umask does not narrow it)."""
    state = base / "state"
    state.mkdir(mode=0o700)
    os.chmod(state, mode)
    return state


def wait_playbook(base: Path) -> Path:
    """A one-step playbook that changes nothing: what a refused run would have run."""
    pb = base / "wait.toml"
    pb.write_text(WAIT)
    return pb


def test_a_state_dir_writable_by_others_is_refused(base: Path) -> None:
    state = make_state(base, 0o777)
    r = run_cli("incidents", state_dir=state)
    unsafe(r, state, state, "is writable by group and others (mode 0777)", "chmod go-w")
    os.chmod(state, 0o720)
    r = run_cli("status", "--state-dir", str(state))
    unsafe(r, state, state, "is writable by group (mode 0720)", "chmod go-w")
    os.chmod(state, 0o700)
    r = run_cli("incidents", "--json", state_dir=state)
    assert r.returncode == 0, r.stderr


def test_a_parent_writable_by_others_is_refused_unless_sticky_and_root_owned(base: Path) -> None:
    parent = base / "shared"
    parent.mkdir()
    state = parent / "state"  # not created yet: run would create it
    os.chmod(parent, 0o777)
    pb = wait_playbook(base)
    r = run_cli("run", str(pb), state_dir=state)
    unsafe(r, state, parent, "is writable by group and others (mode 0777)", "chmod go-w")
    assert not state.exists()
    # /tmp-like: root-owned and sticky, nobody else can rename or remove the state dir in it
    os.chmod(parent, 0o1777)
    r = run_cli("run", str(pb), "--json", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "contained"
    # ... but not when someone else owns that sticky directory
    os.chown(parent, 65534, 65534)
    r = run_cli("incidents", state_dir=state)
    unsafe(r, state, parent, "is owned by nobody (uid 65534), not by root", "chown root")


def test_a_state_dir_owned_by_another_user_is_refused_when_running_as_root(base: Path) -> None:
    state = make_state(base)
    os.chown(state, 65534, 65534)
    r = run_cli("restore", "--last", state_dir=state)
    unsafe(r, state, state, "is owned by nobody (uid 65534), not by root", "chown root")


def test_a_symlinked_state_dir_is_checked_where_it_points(base: Path) -> None:
    elsewhere = base / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.chown(elsewhere, 65534, 65534)
    link = base / "state"
    link.symlink_to(elsewhere)
    r = run_cli("incidents", state_dir=link)
    unsafe(r, link, elsewhere, "is owned by nobody (uid 65534), not by root", "chown root")


def test_symlinked_incidents_dir_is_refused_and_nothing_is_written(base: Path) -> None:
    """The issue's redirection: `incidents/` swapped for a link to where the attacker wants the incident."""
    state = make_state(base)
    target = base / "target"
    target.mkdir(mode=0o700)
    (state / "incidents").symlink_to(target)
    pb = wait_playbook(base)
    for args in (("run", str(pb)), ("incidents",), ("status",), ("restore", "--last")):
        r = run_cli(*args, state_dir=state)
        refused(
            r,
            f"unsafe state dir {state}: {state}/incidents is a symbolic link (to {target})",
            f"remove the link and let lockdown create {state}/incidents as a directory (only root should write there)",
        )
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in state.iterdir()) == ["incidents"]


def test_incidents_dir_writable_by_others_is_refused(base: Path) -> None:
    state = make_state(base)
    (state / "incidents").mkdir(mode=0o700)
    os.chmod(state / "incidents", 0o777)
    r = run_cli("incidents", state_dir=state)
    unsafe(r, state, state / "incidents", "is writable by group and others (mode 0777)", "chmod go-w")


def test_serve_refuses_an_unsafe_state_dir_from_its_config(base: Path) -> None:
    state = make_state(base, 0o777)
    token = base / "webhook.token"
    token.write_text("a-token-long-enough-for-anyone\n")
    token.chmod(0o600)
    pb = wait_playbook(base)
    config = base / "lockdown.toml"
    config.write_text(
        f'state_dir = "{state}"\n[server]\nlisten = "127.0.0.1:0"\ntoken_file = "{token}"\n'
        f'[[routes]]\nalert = "A"\nplaybook = "{pb}"\n'
    )
    r = run_cli("serve", "--config", str(config), timeout=60)
    unsafe(r, state, state, "is writable by group and others (mode 0777)", "chmod go-w")
