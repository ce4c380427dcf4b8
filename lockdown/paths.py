"""State-directory layout and safe handling of user-given names.

Every directory lockdown creates is 0700 and every file 0600: an incident
directory holds mail, addresses and process lists.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
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
    """The state dir: ``--state-dir``, then ``LOCKDOWN_STATE_DIR``, then /var/lib/lockdown.

    Checked with :func:`check_state_dir` before anything reads or writes it.
    """
    if explicit:
        root = Path(explicit)
    else:
        env = os.environ.get("LOCKDOWN_STATE_DIR")
        root = Path(env) if env else DEFAULT_STATE_DIR
    check_state_dir(root)
    return root


def check_state_dir(root: Path) -> None:
    """Refuse a state dir that anyone but this user (or root) could change, as sshd's StrictModes does.

    Why: lockdown runs as root and ``restore`` writes back what an incident's
    journal says (sysctls such as ``kernel.core_pattern``). Whoever can write
    the state dir or a parent of it can swap ``incidents/`` for a symlink, or
    plant an incident with a valid hash chain, and have root write their
    values (issue 13). Checked, on the path as given and as resolved: the
    state dir and every existing parent is owned by root or this user (the
    state dir itself by root when running as root), and is writable by
    neither group nor others; ``incidents/`` is a real directory held to the
    same rules. One difference from sshd, which refuses ``/tmp``: a parent
    owned by root with the sticky bit set (``/tmp``, mode 1777) is accepted,
    because there nobody else can rename or remove the entries in it that
    they do not own. Raises BadInput (exit 2) naming the path and the fix.
    """
    uid = os.geteuid()
    given = Path(os.path.abspath(root))
    real = Path(os.path.realpath(root))
    for path in dict.fromkeys([*_existing_chain(given), *_existing_chain(real)]):
        _check_owned(root, path, uid, is_state=path in (given, real))
    inc = real / "incidents"
    try:
        st = os.lstat(inc)
    except (FileNotFoundError, PermissionError):
        return  # none yet, or not ours to read: opening it later fails with its own message
    if stat.S_ISLNK(st.st_mode):
        raise BadInput(
            f"unsafe state dir {root}: {inc} is a symbolic link (to {os.readlink(inc)})",
            hint=f"remove the link and let lockdown create {inc} as a directory (only root should write there)",
        )
    _check_owned(root, inc, uid, is_state=True)


def _existing_chain(path: Path) -> list[Path]:
    """``path`` and its parents, those that exist (not following a symlink at the end)."""
    return [p for p in (path, *path.parents) if os.path.lexists(p)]


def _check_owned(root: Path, path: Path, uid: int, *, is_state: bool) -> None:
    st = os.lstat(path)
    owners = {0} if is_state and uid == 0 else {0, uid}
    if st.st_uid not in owners:
        who = "root" if owners == {0} else f"root or {_user(uid)}"
        raise BadInput(
            f"unsafe state dir {root}: {path} is owned by {_user(st.st_uid)}, not by {who}",
            hint=f"chown {who.split()[0]} {path}, or choose another --state-dir "
            "(lockdown refuses a state dir others can change, like sshd's StrictModes)",
        )
    if stat.S_ISLNK(st.st_mode):
        return  # its target is checked on the resolved path
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"unsafe state dir {root}: {path} is not a directory")
    loose = st.st_mode & 0o022
    sticky_parent = not is_state and st.st_uid == 0 and st.st_mode & stat.S_ISVTX
    if loose and not sticky_parent:
        who = {0o020: "group", 0o002: "others", 0o022: "group and others"}[loose]
        raise BadInput(
            f"unsafe state dir {root}: {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod go-w {path}, or choose another --state-dir "
            "(lockdown refuses a state dir others can change, like sshd's StrictModes)",
        )


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


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


def write_staged(path: Path, data: bytes) -> None:
    """Write a new file's ``data`` and fsync it, in a directory not yet visible.

    For a staged incident directory (``publish_incident_dir``): the directory
    is fsynced as a whole before it is renamed into place, so a file in it
    needs neither the temporary name of ``atomic_write`` nor a directory
    fsync of its own. Each of those costs a few milliseconds between an alert
    and the first change.
    """
    fd = create_file(path)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


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
