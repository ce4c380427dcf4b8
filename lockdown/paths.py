"""State-directory layout and safe handling of user-given names.

Every directory lockdown creates is 0700 and every file 0600: an incident
directory holds mail, addresses and process lists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lockdown.errors import BadInput, IncidentNotFound
from lockdown.layout import INCIDENTS_DIR

DEFAULT_STATE_DIR = Path("/var/lib/lockdown")
#: An incident id: creation time (to the microsecond; whole seconds for ids of
#: older versions), playbook slug, random suffix. ``\Z``, not ``$``: ``$`` also
#: matches before a trailing newline.
INCIDENT_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}(?:\.[0-9]{6})?Z-[A-Za-z0-9._-]{1,64}-[0-9a-f]{4,8}\Z")
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=-]*\Z")


def state_dir(explicit: str | Path | None = None) -> Path:
    """The state dir: ``--state-dir``, then ``LOCKDOWN_STATE_DIR``, then /var/lib/lockdown."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("LOCKDOWN_STATE_DIR")
    return Path(env) if env else DEFAULT_STATE_DIR


def incidents_dir(root: Path) -> Path:
    return root / INCIDENTS_DIR


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) 0700 and fsync the parent so it survives a crash."""
    if path.is_dir():
        return path
    parent = path.parent
    if not parent.is_dir():
        ensure_dir(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fsync_dir(parent)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_file(path: Path, *, exclusive: bool = True) -> int:
    """Open a new 0600 file for writing without following a symlink at the last component."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    return os.open(path, flags, 0o600)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = create_file(tmp, exclusive=False)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def check_incident_id(incident_id: str) -> str:
    """Reject ids that could name anything outside the incidents directory."""
    if not INCIDENT_ID_RE.match(incident_id):
        raise BadInput(
            f"invalid incident id {incident_id!r}: expected something like "
            "20261122T234500Z-relay-incident-3f2a",
            hint="list incidents with `lockdown incidents`",
        )
    return incident_id


def check_relative_name(name: str, what: str = "path") -> str:
    """A relative path of safe components: no absolute paths, no ``..``, no empty parts."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise BadInput(f"invalid {what} {name!r}: must be a relative path")
    for part in name.split("/"):
        if part in ("", ".", "..") or not SAFE_NAME_RE.match(part):
            raise BadInput(f"invalid {what} {name!r}: bad component {part!r}")
    return name


def incident_path(root: Path, incident_id: str) -> Path:
    check_incident_id(incident_id)
    path = incidents_dir(root) / incident_id
    if path.is_symlink() or not path.is_dir():
        raise IncidentNotFound(
            f"no incident {incident_id} in {incidents_dir(root)}",
            hint="list incidents with `lockdown incidents`, or pass --state-dir",
        )
    return path
