"""Incidents: ids and their order, atomic creation, and each incident read back from disk.

Ids sort in creation order. An id carries its creation time to the
microsecond (``20261130T195214.180831Z-relay-incident-3f2a``), and a new id
is always later than the newest one in the state dir (it is made under the
state-dir lock, and bumped by a microsecond when the clock says otherwise),
so two incidents started in the same second, or across a clock step back,
still sort in the order they were created. :func:`incident_order` is the one
ordering; ``--last``, ``incidents``, ``status``, ``export``, ``report`` and
``serve`` all go through it. Ids of older versions (whole seconds, no
fraction) stay valid and sort as if made at the start of their second.

An incident directory appears under its final name only once its first
journal line is durable (:func:`stage_incident_dir`, :func:`publish_incident_dir`),
so a crash never leaves a half-made incident behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lockdown import jsonsafe
from lockdown.layout import EVIDENCE_DIR, INCIDENT_JSON, LOCK, STAGING_PREFIX
from lockdown.layout import PLAYBOOK_COPY as PLAYBOOK_COPY
from lockdown.layout import TRIGGERS as TRIGGERS
from lockdown.paths import INCIDENT_ID_RE, ensure_dir, fsync_dir, incident_path, incidents_dir
from lockdown.record.journal import ChainReport, read_journal
from lockdown.record.steps import StepState, read_steps

__all__ = [
    "INCIDENT_JSON",
    "PLAYBOOK_COPY",
    "TRIGGERS",
    "IncidentView",
    "StepState",
    "incident_order",
    "last_incident_id",
    "list_incident_ids",
    "new_incident_id",
    "read_incident",
]

#: incident.json is small (metadata); a larger one is reported as damaged, not read.
MAX_INCIDENT_JSON = 16 << 20
_STAMP_RE = re.compile(r"([0-9]{8}T[0-9]{6})(?:\.([0-9]{6}))?Z-")


def incident_order(incident_id: str) -> tuple[str, int, str]:
    """The sort key of an incident id: creation time to the microsecond, then the id.

    The one ordering of incidents. A string that is not an id sorts first.
    """
    m = _STAMP_RE.match(incident_id)
    if m is None:
        return ("", 0, incident_id)
    return (m.group(1), int(m.group(2) or 0), incident_id)


def _created_at(incident_id: str) -> datetime | None:
    m = _STAMP_RE.match(incident_id)
    if m is None:
        return None
    second = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return second + timedelta(microseconds=int(m.group(2) or 0))


def new_incident_id(root: Path, playbook_name: str, now: datetime | None = None) -> str:
    """A fresh id that sorts after every incident in ``root``. Call it holding the state-dir lock."""
    when = now or datetime.now(UTC)
    last = last_incident_id(root)
    newest = _created_at(last) if last else None
    if newest is not None and when <= newest:
        when = newest + timedelta(microseconds=1)
    stamp = when.strftime("%Y%m%dT%H%M%S") + f".{when.microsecond:06d}Z"
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", playbook_name)[:64] or "playbook"
    return f"{stamp}-{slug}-{secrets.token_hex(2)}"


def stage_incident_dir(root: Path, incident_id: str) -> Path:
    """A new, empty incident directory under a temporary name that no listing shows.

    Call it holding the state-dir lock: a staged directory left by a run that
    died before publishing it is removed first (nothing was changed by it:
    publishing comes before the first step).
    """
    parent = ensure_dir(incidents_dir(root))
    for entry in os.scandir(parent):
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
    path = parent / f"{STAGING_PREFIX}{incident_id}"
    os.mkdir(path, 0o700)
    os.mkdir(path / EVIDENCE_DIR, 0o700)  # made durable with the rest by publish_incident_dir
    return path


def publish_incident_dir(staging: Path, incident_id: str) -> Path:
    """Rename a staged directory to its id, durably: fsync it, rename, fsync the parent."""
    final = staging.parent / incident_id
    fsync_dir(staging)
    os.rename(staging, final)
    fsync_dir(final.parent)
    return final


def operator() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.geteuid())


@dataclass
class IncidentView:
    """An incident read from disk: metadata, chain report and step states."""

    id: str
    path: Path
    meta: dict[str, Any]
    chain: ChainReport
    steps: list[StepState]
    run_status: str | None
    restore_status: str | None
    held: list[StepState]
    meta_problem: str | None = None

    @property
    def containment_active(self) -> bool:
        """A journaled change is not undone (held steps count: a held queue is still held)."""
        return any(s.needs_undo for s in self.steps)

    @property
    def empty(self) -> bool:
        """Created, but no journal line was ever written: nothing was changed."""
        return self.chain.empty

    @property
    def damage(self) -> str | None:
        """What is wrong with the incident's files, or None."""
        if not self.chain.intact:
            return f"journal: {self.chain.problem}"
        return self.meta_problem

    def _meta(self, key: str) -> Any:
        value = self.meta.get(key)
        return value if isinstance(value, (str, int, float)) or value is None else None

    def as_dict(self) -> dict[str, Any]:
        playbook = self.meta.get("playbook")
        trigger = self.meta.get("trigger")
        return {
            "incident_id": self.id,
            "path": str(self.path),
            "playbook": playbook.get("name") if isinstance(playbook, dict) else None,
            "created": self._meta("created"),
            "trigger": trigger.get("kind") if isinstance(trigger, dict) else None,
            "run_status": self.run_status,
            "restore_status": self.restore_status,
            "containment_active": self.containment_active,
            "empty": self.empty,
            "damage": self.damage,
            "incident_json_problem": self.meta_problem,
            "held": [{"id": s.id, "action": s.action, "decision": s.held} for s in self.held],
            "journal": self.chain.as_dict(),
            "steps": [s.as_dict() for s in self.steps],
        }


def read_meta(path: Path) -> tuple[dict[str, Any], str | None]:
    """``incident.json`` as a dict, and what is wrong with it (None when nothing is).

    A missing file is not a problem (an incident created by hand or by an
    older version); a truncated, oversized or non-object one is, and is
    reported instead of raised, so one damaged incident never hides the others.
    """
    try:
        with open(path / INCIDENT_JSON, "rb") as fh:
            data = fh.read(MAX_INCIDENT_JSON + 1)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"{INCIDENT_JSON}: cannot be read ({exc.strerror})"
    if len(data) > MAX_INCIDENT_JSON:
        return {}, f"{INCIDENT_JSON}: larger than {MAX_INCIDENT_JSON} bytes"
    try:
        doc = jsonsafe.loads(data, what=INCIDENT_JSON)
    except jsonsafe.JSONError as exc:
        return {}, str(exc)
    if not isinstance(doc, dict):
        return {}, f"{INCIDENT_JSON}: expected an object, got {type(doc).__name__}"
    return doc, None


def read_incident(root: Path, incident_id: str) -> IncidentView:
    """The incident as its files tell it. Damage is reported in the view, never raised."""
    path = incident_path(root, incident_id)
    meta, meta_problem = read_meta(path)
    chain = read_journal(path)
    reader = read_steps(chain.entries)
    started = reader.run_start is not None
    run_status: str | None = reader.run["status"]
    live = started and run_status is None and _run_in_progress(root, incident_id)
    steps = reader.finish(running=live)
    if started and run_status is None:
        run_status = "running" if live else "crashed"
    return IncidentView(
        id=incident_id,
        path=path,
        meta=meta,
        chain=chain,
        steps=steps,
        run_status=run_status,
        restore_status=reader.restore_status,
        held=[s for s in steps if s.held],
        meta_problem=meta_problem,
    )


def _run_in_progress(root: Path, incident_id: str) -> bool:
    """True when the lock file names this incident and its pid is alive."""
    try:
        holder = json.loads((root / LOCK).read_text() or "{}")
        pid = int(holder.get("pid", 0))
        if holder.get("incident") != incident_id or pid <= 0:
            return False
        os.kill(pid, 0)
        return True
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def list_incident_ids(root: Path) -> list[str]:
    """Every incident id in ``root``, oldest first (:func:`incident_order`).

    A symlink is not an incident (``incident_path`` refuses it): listing it
    would make every command that lists incidents fail on it.
    """
    base = incidents_dir(root)
    if not base.is_dir():
        return []
    ids = (p.name for p in base.iterdir() if INCIDENT_ID_RE.match(p.name) and p.is_dir() and not p.is_symlink())
    return sorted(ids, key=incident_order)


def last_incident_id(root: Path) -> str | None:
    ids = list_incident_ids(root)
    return ids[-1] if ids else None
