"""The durable de-duplication store shared by ``serve`` and ``watch``.

Alertmanager re-sends firing alerts every ``repeat_interval`` and an HA pair
sends each one twice, so a repeat must never start a second run. A trigger
is a repeat when

* its key (route + ``fingerprint`` + ``startsAt``) already started an incident, or
* the route's last incident is still running or its containment is still active
  (``read_incident(...).containment_active``).

The store is an append-only, fsync'ed ``<state>/triggers/dedup.jsonl`` (one
line per started incident), read back at start, so it survives a restart.
``exclusive()`` serialises the decide-then-start section across threads (a
mutex) and across processes (``flock`` on ``dedup.lock``), and picks up lines
appended by another process (``serve`` and ``watch`` may share a state dir).

A crash between ``Run.start()`` and the append would lose the record, so
``open()`` also adopts incidents whose ``incident.json`` carries a trigger
``dedup_key`` that the store does not know yet.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lockdown.engine import incident as inc
from lockdown.engine.journal import utcnow
from lockdown.errors import LockdownError
from lockdown.paths import ensure_dir, fsync_dir, incident_path, incidents_dir

TRIGGERS_DIR = "triggers"
DEDUP_FILE = "dedup.jsonl"
DEDUP_LOCK = "dedup.lock"
LOG_MAX_BYTES = 16 * 1024 * 1024


def dedup_key(route: str, fingerprint: str | None, starts_at: str | None) -> str | None:
    """SHA-256 of route, fingerprint and startsAt; None without a fingerprint."""
    if not fingerprint:
        return None
    raw = json.dumps([route, fingerprint, starts_at or ""], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def append_line(path: Path, entry: dict[str, Any], *, sync: bool = True) -> None:
    """Append one JSON line to ``path`` (created 0600, never through a symlink)."""
    raw = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str).encode() + b"\n"
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    new = not path.exists()
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, raw)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if new and sync:
        fsync_dir(path.parent)


class EventLog:
    """A JSON-lines log under ``<state>/triggers/`` (server.log, watch.log).

    Not fsync'ed: it is for the operator, the incident's own files are the
    record. Rotated once to ``NAME.1`` past 16 MiB so a flood cannot fill the disk.
    """

    def __init__(self, root: Path, name: str) -> None:
        self.path = ensure_dir(root / TRIGGERS_DIR) / name
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"time": utcnow(), "event": event, **fields}
        with self._lock:
            try:
                if self.path.exists() and self.path.stat().st_size > LOG_MAX_BYTES:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                append_line(self.path, entry, sync=False)
            except OSError:
                pass  # a full disk must not stop containment; the incident files matter more
        return entry


class DedupStore:
    """Which trigger started which incident, on disk and in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / TRIGGERS_DIR
        self.path = self.dir / DEDUP_FILE
        self._keys: dict[str, str] = {}
        self._routes: dict[str, str] = {}
        self._offset = 0
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None

    # ------------------------------------------------------------ loading
    def open(self) -> DedupStore:
        ensure_dir(self.dir)
        with self.exclusive():
            self._adopt_unrecorded()
        return self

    def _reload(self) -> None:
        """Read lines appended since the last read (by us or another process)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a torn last line (crash) is skipped until completed
        for raw in data[:end].splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self._learn(entry)
        self._offset += end

    def _learn(self, entry: dict[str, Any]) -> None:
        incident_id = entry.get("incident")
        route = entry.get("route")
        if not isinstance(incident_id, str) or not isinstance(route, str):
            return
        key = entry.get("key")
        if isinstance(key, str):
            self._keys[key] = incident_id
        if inc.incident_order(incident_id) >= inc.incident_order(self._routes.get(route, "")):
            self._routes[route] = incident_id

    def _adopt_unrecorded(self) -> None:
        known = set(self._keys.values()) | set(self._routes.values())
        for incident_id in inc.list_incident_ids(self.root):
            if incident_id in known:
                continue
            try:
                meta = json.loads((incidents_dir(self.root) / incident_id / inc.INCIDENT_JSON).read_text())
            except (OSError, ValueError):
                continue
            trigger = meta.get("trigger") if isinstance(meta, dict) else None
            if not isinstance(trigger, dict) or not isinstance(trigger.get("route"), str):
                continue
            self.record(trigger["route"], trigger.get("dedup_key"), incident_id, adopted=True)

    # ------------------------------------------------------------ deciding
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the decide-then-start section against other threads and processes."""
        with self._mutex:
            fd = os.open(self.dir / DEDUP_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._reload()
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def find_repeat(self, route: str, key: str | None) -> tuple[str, str] | None:
        """(incident id, reason) when this trigger repeats one that started an incident.

        Call inside ``exclusive()``.
        """
        if key is not None and key in self._keys:
            return self._keys[key], "same fingerprint and startsAt"
        incident_id = self._routes.get(route)
        if incident_id is not None:
            state = self.incident_state(incident_id)
            if state is not None:
                return incident_id, state
        return None

    def incident_state(self, incident_id: str) -> str | None:
        """Why ``incident_id`` still covers its route ("running" / "containment active"), or None."""
        try:
            view = inc.read_incident(self.root, incident_id)
        except LockdownError:
            return None  # removed by an operator: the route is free again
        if view.run_status == "running":
            return "the route's incident is still running"
        if view.containment_active:
            return "the route's incident is still contained"
        return None

    def route_of_holder(self) -> tuple[str | None, str | None]:
        """(incident id, route) of the run holding the state-dir lock, as far as known."""
        try:
            holder = json.loads((self.root / "lock").read_text() or "{}")
        except (OSError, ValueError):
            return None, None
        incident_id = holder.get("incident") if isinstance(holder, dict) else None
        if not isinstance(incident_id, str):
            return None, None
        for known_route, rid in self._routes.items():
            if rid == incident_id:
                return incident_id, known_route
        route: Any = None
        try:
            meta = json.loads((incidents_dir(self.root) / incident_id / inc.INCIDENT_JSON).read_text())
            route = meta.get("trigger", {}).get("route")
        except (OSError, ValueError, AttributeError):
            pass
        return incident_id, route if isinstance(route, str) else None

    def record(self, route: str, key: str | None, incident_id: str, *, adopted: bool = False) -> None:
        """Durably note that ``route`` (and ``key``) started ``incident_id``. Call inside ``exclusive()``."""
        entry: dict[str, Any] = {"time": utcnow(), "route": route, "key": key, "incident": incident_id}
        if adopted:
            entry["adopted"] = True
        append_line(self.path, entry)
        self._learn(entry)
        self._offset = self.path.stat().st_size

    def last_incident(self, route: str) -> str | None:
        return self._routes.get(route)

    def incident_for_key(self, key: str | None) -> str | None:
        return self._keys.get(key) if key is not None else None

    def incident_ids(self) -> set[str]:
        return set(self._routes.values()) | set(self._keys.values())


def append_trigger(root: Path, incident_id: str, entry: dict[str, Any]) -> None:
    """Append a repeat (or a resolved notice) to the incident's ``triggers.jsonl``, fsync'ed."""
    append_line(incident_path(root, incident_id) / inc.TRIGGERS, {"time": utcnow(), **entry})
