"""One run or restore at a time per state dir (flock on ``state_dir/lock``).

``lockdown guard`` takes the lock only for the moments it re-asserts
containment and journals it (milliseconds, a Docker pause at most); a run or
restore that finds the guard holding it waits up to ``GUARD_WAIT`` seconds
instead of failing with Busy, so the two never fight over the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType

from lockdown.errors import Busy, PrivilegeError
from lockdown.layout import LOCK
from lockdown.paths import ensure_dir

#: How long anyone waits for a guard's re-assertion to release the lock.
GUARD_WAIT = 5.0


class StateLock:
    """Exclusive, non-blocking. ``describe`` is written into the lock file so a
    second caller can name the incident in progress."""

    def __init__(self, root: Path, operation: str) -> None:
        self.root = root
        self.path = root / LOCK
        self.operation = operation
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        try:
            ensure_dir(self.root)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except PermissionError:
            raise PrivilegeError(
                f"cannot use state dir {self.root}: permission denied",
                "run as root, or pass --state-dir / LOCKDOWN_STATE_DIR pointing to a writable directory",
            ) from None
        deadline = time.monotonic() + GUARD_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_holder(fd)
                # an empty holder is a lock being taken or released this instant
                if (not holder or holder.get("operation") == "guard") and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
            os.close(fd)
            what = holder.get("operation", "a run")
            incident = holder.get("incident") or "(starting)"
            pid = holder.get("pid", "?")
            raise Busy(
                f"{what} of incident {incident} is in progress (pid {pid}) in {self.path.parent}",
                hint="wait for it to finish, or check it with `lockdown status`",
            ) from None
        self._fd = fd
        self.update(None)
        return self

    def update(self, incident: str | None) -> None:
        if self._fd is None:
            return
        data = json.dumps({"pid": os.getpid(), "operation": self.operation, "incident": incident})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data.encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def read_holder(root: Path) -> dict[str, object]:
    """Who holds (or last held) the lock: {"pid", "operation", "incident"}, {} if unknown.

    Read without locking: the guard asks this when the lock is busy, to tell
    a restore of its own incident from anything else.
    """
    try:
        fd = os.open(root / "lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data) if data else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}
