"""Incidents: ids, directories, and the state of each step read back from the journal."""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lockdown.actions import REGISTRY, get_action
from lockdown.engine.journal import ChainReport, read_journal
from lockdown.paths import (
    INCIDENT_ID_RE,
    ensure_dir,
    incident_path,
    incidents_dir,
)

INCIDENT_JSON = "incident.json"
PLAYBOOK_COPY = "playbook.toml"
TRIGGERS = "triggers.jsonl"


def new_incident_id(playbook_name: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", playbook_name)[:64] or "playbook"
    return f"{stamp}-{slug}-{secrets.token_hex(2)}"


def create_incident_dir(root: Path, incident_id: str) -> Path:
    parent = ensure_dir(incidents_dir(root))
    path = parent / incident_id
    os.mkdir(path, 0o700)
    ensure_dir(path / "evidence")
    return path


def operator() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.geteuid())


@dataclass
class StepState:
    """One step as the journal tells it."""

    number: int
    id: str
    action: str
    state: str = "not-run"
    describe: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    undo: dict[str, Any] | None = None
    has_intent: bool = False
    held: str | None = None
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    undo_notes: list[str] = field(default_factory=list)
    undo_error: str | None = None

    @property
    def needs_undo(self) -> bool:
        return self.has_intent and self.undo is not None and self.state not in ("undone",)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("undo")
        return d


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

    @property
    def containment_active(self) -> bool:
        return any(s.needs_undo and s.held is None for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.id,
            "path": str(self.path),
            "playbook": self.meta.get("playbook", {}).get("name"),
            "created": self.meta.get("created"),
            "trigger": self.meta.get("trigger", {}).get("kind"),
            "run_status": self.run_status,
            "restore_status": self.restore_status,
            "containment_active": self.containment_active,
            "held": [{"id": s.id, "action": s.action, "decision": s.held} for s in self.held],
            "journal": self.chain.as_dict(),
            "steps": [s.as_dict() for s in self.steps],
        }


def read_incident(root: Path, incident_id: str) -> IncidentView:
    path = incident_path(root, incident_id)
    meta_path = path / INCIDENT_JSON
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    chain = read_journal(path)
    steps: dict[str, StepState] = {}
    run_status: str | None = None
    restore_status: str | None = None
    started_run = False
    for entry in chain.entries:
        phase = entry.get("phase")
        if phase == "run-start":
            started_run = True
            for item in entry.get("plan", []):
                steps[item["id"]] = StepState(
                    number=item["number"],
                    id=item["id"],
                    action=item["action"],
                    describe=item.get("describe", ""),
                    params=item.get("params", {}),
                )
            continue
        if phase == "run-end":
            run_status = entry.get("status")
            continue
        if phase == "restore-end":
            restore_status = entry.get("status")
            continue
        sid = entry.get("step")
        if not isinstance(sid, str) or sid not in steps:
            continue
        s = steps[sid]
        if phase == "intent":
            s.state = "running"
            s.has_intent = True
            s.undo = entry.get("undo")
            s.started = entry.get("time")
            if entry.get("resolved"):
                s.params = {**s.params, **entry["resolved"]}
        elif phase == "intent-update":
            s.undo = entry.get("undo")
        elif phase in ("applied", "failed"):
            s.state = phase
            s.ended = entry.get("time")
            s.seconds = entry.get("seconds")
            s.notes = entry.get("notes", [])
            s.error = entry.get("error")
        elif phase == "undo-intent":
            s.state = "undoing"
        elif phase in ("undone", "undo-failed"):
            s.state = phase
            s.undo_notes = entry.get("notes", [])
            s.undo_error = entry.get("error")
    held: list[StepState] = []
    live = started_run and run_status is None and _run_in_progress(root, incident_id)
    for s in steps.values():
        if s.state == "running" and not live:
            s.state = "interrupted"  # the process died between intent and result
        if s.needs_undo and s.action in REGISTRY:
            decision = get_action(s.action).held_undo
            if decision:
                s.held = decision
                held.append(s)
    return IncidentView(
        id=incident_id,
        path=path,
        meta=meta,
        chain=chain,
        steps=sorted(steps.values(), key=lambda s: s.number),
        run_status=run_status if run_status or not started_run else ("running" if live else "crashed"),
        restore_status=restore_status,
        held=held,
    )


def _run_in_progress(root: Path, incident_id: str) -> bool:
    """True when the lock file names this incident and its pid is alive."""
    try:
        holder = json.loads((root / "lock").read_text() or "{}")
        pid = int(holder.get("pid", 0))
        if holder.get("incident") != incident_id or pid <= 0:
            return False
        os.kill(pid, 0)
        return True
    except (OSError, ValueError, TypeError):
        return False


def list_incident_ids(root: Path) -> list[str]:
    base = incidents_dir(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and INCIDENT_ID_RE.match(p.name))


def last_incident_id(root: Path) -> str | None:
    ids = list_incident_ids(root)
    return ids[-1] if ids else None
