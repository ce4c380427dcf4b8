"""Shared fixtures: real network namespaces, a real Docker Engine, the CLI.

In CI (CI=true) a test that needs Docker or netns must run: a missing
facility is a failure there, never a skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bridge import docker_bridge  # noqa: F401 - the tests import it from here

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


# Runs the lockdown CLI as nobody: ``python3 -c AS_NOBODY COMMAND ARGS...``.
# The interpreter and its library may live where nobody cannot read them
# (/root/.pyenv here), and typer and the actions import parts of themselves
# lazily. So the code is loaded as root first: every action module, then the
# same command once with its output thrown away (``run`` as a --dry-run,
# ``verify`` as itself since it writes nothing, anything else as --help).
# Then every privilege is dropped for good and the real command runs.
AS_NOBODY = """
import contextlib, io, os, sys
import encodings.idna, psutil, pyroute2
from lockdown.actions import REGISTRY, get_action
from lockdown.cli import main
for name in REGISTRY:
    get_action(name)
args = sys.argv[1:]
warm_up = args + ["--dry-run"] if args[0] == "run" else args if args[0] == "verify" else [args[0], "--help"]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    main(warm_up)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
assert (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()) == (65534, 65534, 65534, 65534, [])
sys.exit(main(args))
"""


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy and return its value; fail naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """One line of the child's stdout, or fail after ``timeout`` (never hang the suite)."""
    import threading

    stdout = proc.stdout
    assert stdout is not None
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not got:  # (a select() on the pipe would miss lines the text buffer already holds)
        raise AssertionError(f"no line on stdout within {timeout}s (exit code {proc.poll()})")
    return got[0]


def run_finished(state: Path, incident_id: str) -> bool:
    """The incident's run has ended (contained, failed, crashed...), as its journal says."""
    from lockdown.record.incident import read_incident

    return read_incident(state, incident_id).run_status not in (None, "running")


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where every facility must be present."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def unique(prefix: str = "lkd") -> str:
    """A short unique name (<= 15 chars for interface names): lkd-xxxxxx."""
    return f"{prefix}-{secrets.token_hex(3)}"


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, input=input)


def ip_json(*args: str, netns: str | None = None) -> Any:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-j", *args]
    out = sh(*cmd).stdout
    return json.loads(out) if out.strip() else []


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    return d


@pytest.fixture
def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root")


@pytest.fixture
def netns(need_root: None) -> Iterator[str]:
    """A fresh network namespace named lkd-xxxxxx, removed afterwards."""
    if shutil.which("ip") is None:
        unavailable("iproute2 is not installed")
    name = unique()
    result = sh("ip", "netns", "add", name, check=False)
    if result.returncode != 0:
        unavailable(f"cannot create a network namespace: {result.stderr.strip()}")
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def run_cli(
    *args: str,
    netns: str | None = None,
    env: dict[str, str] | None = None,
    state_dir: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``lockdown`` CLI in a subprocess (optionally inside a netns)."""
    cmd = [sys.executable, "-m", "lockdown", *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    full_env = dict(os.environ)
    full_env.pop("LOCKDOWN_STATE_DIR", None)
    if state_dir is not None:
        full_env["LOCKDOWN_STATE_DIR"] = str(state_dir)
    full_env.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture
def docker_engine() -> Iterator[Any]:
    """A docker SDK client for a real, running engine."""
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        unavailable(f"no Docker engine: {exc} (run scripts/setup-test-env)")
        raise
    yield client
    client.close()
