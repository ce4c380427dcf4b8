"""The durable de-duplication store shared by ``serve`` and ``watch``.

Alertmanager re-sends firing alerts every ``repeat_interval`` and an HA pair
sends each one twice, so a repeat must never start a second run. A trigger
is a repeat when

* its key (route + ``fingerprint`` + ``startsAt`` as an instant, see
  :func:`instant`) already started an incident, or
* it is a generic alert without a fingerprint whose identity (a hash of its
  body minus status and times) started an incident less than
  ``server.generic_dedup_window`` seconds ago, or
* the route's last incident is still running or its containment is still active
  (``read_incident(...).containment_active``).

The store is an append-only, fsync'ed ``<state>/triggers/dedup.jsonl`` (one
line per started incident), read back at start, so it survives a restart.
``exclusive()`` serialises the decide-then-start section across threads (a
mutex) and across processes (``flock`` on ``dedup.lock``), and picks up lines
appended by another process (``serve`` and ``watch`` may share a state dir).

A route's last incident that cannot be read back (damaged, deleted, nested
too deep) never decides anything: it is logged as ``incident-unreadable`` and
treated as not covering the route, so the alert still gets an answer.

A crash between ``Run.start()`` and the append would lose the record, so
``open()`` also adopts incidents whose ``incident.json`` carries a trigger
``dedup_key`` that the store does not know yet.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lockdown import jsonsafe
from lockdown.errors import LockdownError
from lockdown.paths import ensure_dir, fsync_dir, incident_path, incidents_dir
from lockdown.record import incident as inc
from lockdown.record.journal import utcnow

TRIGGERS_DIR = "triggers"
DEDUP_FILE = "dedup.jsonl"
DEDUP_LOCK = "dedup.lock"
LOG_MAX_BYTES = 16 * 1024 * 1024


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,12}))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)

#: What reading back a damaged incident may raise; none of it may end a request.
UNREADABLE = (LockdownError, ValueError, OSError, RecursionError, TypeError, KeyError, AttributeError)


def instant(starts_at: str | None) -> str:
    """``startsAt`` as an instant at millisecond precision, in UTC: ``2026-11-30T19:52:14.180Z``.

    Alertmanager's webhook sends nanoseconds (``...14.180831842Z``) and its API
    v2, or a relay that re-serialises the alert, sends milliseconds
    (``...14.180Z``) or another offset; all are the same alert. Fractions are
    truncated (Go's formatting truncates too). Text that is not RFC 3339 is
    compared as it is.
    """
    if not starts_at:
        return ""
    m = _RFC3339.fullmatch(starts_at.strip())
    if m is None:
        return starts_at
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    millis = int((m.group(7) or "0")[:3].ljust(3, "0"))
    offset = 0 if m.group(8) else (int(m.group(10)) * 60 + int(m.group(11))) * (1 if m.group(9) == "+" else -1)
    try:
        when = datetime.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=datetime.UTC)
        when -= datetime.timedelta(minutes=offset)
    except (ValueError, OverflowError):
        return starts_at
    return f"{when.year:04d}-{when:%m-%dT%H:%M:%S}.{millis:03d}Z"


def dedup_key(route: str, fingerprint: str | None, starts_at: str | None) -> str | None:
    """SHA-256 of route, fingerprint and startsAt (as an :func:`instant`); None without a fingerprint."""
    if not fingerprint:
        return None
    raw = json.dumps([route, fingerprint, instant(starts_at)], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def identity_key(route: str, raw: dict[str, Any]) -> str:
    """SHA-256 of route and a generic alert's identity: its body without status and times.

    For a generic alert without a fingerprint; repeats within the window are
    duplicates (:meth:`DedupStore.record` with ``expires``).
    """
    identity = {k: v for k, v in raw.items() if k not in ("status", "startsAt", "endsAt", "time", "timestamp")}
    text = json.dumps(["identity", route, identity], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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

    def __init__(self, root: Path, on_unreadable: Callable[[str, str], None] | None = None) -> None:
        self.root = root
        self.dir = root / TRIGGERS_DIR
        self.path = self.dir / DEDUP_FILE
        #: Told (incident id, why) when an incident cannot be read back; the dispatcher logs it.
        self.on_unreadable = on_unreadable
        self._keys: dict[str, str] = {}
        self._expires: dict[str, float] = {}
        self._routes: dict[str, str] = {}
        #: Incidents seen ended (run over, containment restored): nothing makes them cover a route again.
        self._ended: set[str] = set()
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
                entry = jsonsafe.loads(raw, what=DEDUP_FILE)
            except jsonsafe.JSONError:
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
            expires = entry.get("expires")
            if isinstance(expires, (int, float)) and not isinstance(expires, bool):
                self._expires[key] = float(expires)
            else:
                self._expires.pop(key, None)
        if inc.incident_order(incident_id) >= inc.incident_order(self._routes.get(route, "")):
            self._routes[route] = incident_id

    def _adopt_unrecorded(self) -> None:
        known = set(self._keys.values()) | set(self._routes.values())
        for incident_id in inc.list_incident_ids(self.root):
            if incident_id in known:
                continue
            meta = self._meta(incident_id)
            trigger = meta.get("trigger") if isinstance(meta, dict) else None
            if not isinstance(trigger, dict) or not isinstance(trigger.get("route"), str):
                continue
            expires = trigger.get("dedup_expires")
            expires = float(expires) if isinstance(expires, (int, float)) and not isinstance(expires, bool) else None
            self.record(trigger["route"], trigger.get("dedup_key"), incident_id, adopted=True, expires=expires)

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
            expires = self._expires.get(key)
            if expires is None:
                return self._keys[key], "same fingerprint and startsAt"
            if time.time() < expires:
                return self._keys[key], "the same alert (no fingerprint: same identity) within the dedup window"
        incident_id = self._routes.get(route)
        if incident_id is not None:
            state = self.incident_state(incident_id)
            if state is not None:
                return incident_id, state
        return None

    def incident_state(self, incident_id: str) -> str | None:
        """Why ``incident_id`` still covers its route ("running" / "containment active"), or None.

        An incident seen ended is not read again: reading it verified its whole journal, between
        the next alert of the route and that alert's first change (after a restore, every one).
        """
        if incident_id in self._ended:
            return None
        try:
            view = inc.read_incident(self.root, incident_id)
        except UNREADABLE as exc:  # removed by an operator, or damaged: the route is free again
            if self.on_unreadable is not None:
                self.on_unreadable(incident_id, f"{type(exc).__name__}: {exc}"[:500])
            return None
        if view.damage is not None:  # the reader reports damage instead of raising: same decision
            if self.on_unreadable is not None:
                self.on_unreadable(incident_id, view.damage[:500])
            return None
        if view.run_status == "running":
            return "the route's incident is still running"
        if view.containment_active:
            return "the route's incident is still contained"
        self._ended.add(incident_id)
        return None

    def route_of_holder(self) -> tuple[str | None, str | None]:
        """(incident id, route) of the run holding the state-dir lock, as far as known."""
        try:
            holder = jsonsafe.loads((self.root / "lock").read_bytes() or b"{}", what="lock")
        except (OSError, jsonsafe.JSONError):
            return None, None
        incident_id = holder.get("incident") if isinstance(holder, dict) else None
        if not isinstance(incident_id, str):
            return None, None
        for known_route, rid in self._routes.items():
            if rid == incident_id:
                return incident_id, known_route
        trigger = self._meta(incident_id).get("trigger")
        route = trigger.get("route") if isinstance(trigger, dict) else None
        return incident_id, route if isinstance(route, str) else None

    def _meta(self, incident_id: str) -> dict[str, Any]:
        """An incident's ``incident.json``, or ``{}`` when it is missing or damaged."""
        try:
            raw = (incidents_dir(self.root) / incident_id / inc.INCIDENT_JSON).read_bytes()
            meta = jsonsafe.loads(raw, what=f"{incident_id}/{inc.INCIDENT_JSON}")
        except (OSError, jsonsafe.JSONError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def record(
        self, route: str, key: str | None, incident_id: str, *, adopted: bool = False, expires: float | None = None
    ) -> None:
        """Durably note that ``route`` (and ``key``) started ``incident_id``. Call inside ``exclusive()``.

        ``expires`` (Unix time) makes the key a repeat only until then (identity keys).
        """
        entry: dict[str, Any] = {"time": utcnow(), "route": route, "key": key, "incident": incident_id}
        if adopted:
            entry["adopted"] = True
        if expires is not None:
            entry["expires"] = round(expires, 3)
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
