"""Mail logs on disk and a real incident that collected them, for the report tests."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli, unavailable

#: Collects host files only (container = "none"): the incident's evidence is exactly ``host_paths``.
COLLECT = 'name = "mail-evidence"\n[[steps]]\nid = "logs"\naction = "logs.files"\ncontainer = "none"\n'


def write_log(tmp_path: Path, lines: list[str], name: str = "mail.log") -> Path:
    """``lines`` as ``tmp_path/name``, one per line."""
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def incident_with_log(tmp_path: Path, log: Path) -> tuple[Path, str]:
    """A real incident (``lockdown run`` of logs.files) whose evidence is ``log``: its state dir and id.

    logs.files checks its privilege on the Docker socket even for host paths,
    so a machine without one cannot make it (``unavailable``).
    """
    if not Path("/var/run/docker.sock").exists():
        unavailable("logs.files needs the Docker socket (its privilege check)")
    pb = tmp_path / "logs.toml"
    pb.write_text(COLLECT + f'host_paths = ["{log}"]\n')
    state = tmp_path / "state"
    r = run_cli("run", str(pb), "--json", state_dir=state)
    assert r.returncode == 0, r.stdout + r.stderr
    return state, str(json.loads(r.stdout)["incident_id"])
