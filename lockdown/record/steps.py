"""The one reader of a journal's meaning: journal entries in, step states out.

``status``, ``restore``, ``/metrics`` (through ``record.incident``),
``export`` (``case.json``) and ``verify`` (through
``evidence.manifest.TimelineBuilder``) all call :class:`StepReader`, so they
cannot disagree about whether a step is applied, undone or held, or whether
containment is active. Entries come from the journal's chain check
(``record.journal``), already parsed with bounded nesting; here every field is
type-checked, because a hash-consistent journal can still be hand-made.

It is fed one entry at a time so that ``export`` and ``verify`` can stream a
large journal without keeping it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from lockdown.record import drift

#: Drift records a timeline keeps (the count covers all): a guard fighting a flapping
#: network manager for days must not make case.json, or verify's memory, unbounded.
MAX_TIMELINE_DRIFTS = 200

#: The decision that undoes steps restore's gate kept (the relay probe accepted or could not tell).
REOPEN_ANYWAY = "reopen-anyway"

#: Actions whose undo waits for an operator's decision, and that decision: part of what a
#: journaled step means, so it is read here without importing the actions (the record sits
#: below them). Each action declares the same as ``held_undo``; tests/test_layers.py checks
#: that the two agree.
HELD_UNDO: dict[str, str] = {"postfix.hold_queue": "release-queue"}

#: States after which a journaled undo record still has to run.
_UNDONE = "undone"


@dataclass
class StepState:
    """One step as the journal tells it."""

    number: int | None
    id: str
    action: str
    state: str = "not-run"
    describe: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    undo: dict[str, Any] | None = None
    has_intent: bool = False
    held: str | None = None
    #: The verdict of the restore gate that kept this step in place (open | undecided), until undone.
    gated: str | None = None
    started: str | None = None
    ended: str | None = None
    undo_started: str | None = None
    undo_ended: str | None = None
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    undo_notes: list[str] = field(default_factory=list)
    undo_error: str | None = None

    @property
    def needs_undo(self) -> bool:
        """Its intent (with an undo record) is journaled and no undo finished yet."""
        return self.has_intent and self.undo is not None and self.state != _UNDONE

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("undo")
        return d

    def timeline(self) -> dict[str, Any]:
        """The fields ``case.json``'s timeline records (its format is fixed: verify recomputes it)."""
        return {
            "number": self.number,
            "id": self.id,
            "action": self.action,
            "state": self.state,
            "started": self.started,
            "ended": self.ended,
            "undo_started": self.undo_started,
            "undo_ended": self.undo_ended,
        }


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _strs(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


class StepReader:
    """Folds journal entries, in order, into the run, its restores and each step's state."""

    def __init__(self) -> None:
        self.steps: dict[str, StepState] = {}
        self.run: dict[str, Any] = {"started": None, "ended": None, "status": None}
        self.restores: list[dict[str, Any]] = []
        self.run_start: dict[str, Any] | None = None
        self.restore_status: str | None = None
        self.gates: list[dict[str, Any]] = []
        self.lines = 0
        #: The guard's re-assertions, as the timeline keeps them (the first MAX_TIMELINE_DRIFTS).
        self.drifts: list[dict[str, Any]] = []
        self.drift_count = 0

    def add(self, entry: dict[str, Any]) -> None:
        self.lines += 1
        phase = entry.get("phase")
        when = _str(entry.get("time"))
        if phase == "run-start":
            self._plan(entry)
        elif phase == "run-end":
            self.run["ended"], self.run["status"] = when, _str(entry.get("status"))
        elif phase == "interrupted":
            self.run["interrupted"] = when
        elif phase == "restore-end":
            self.restore_status = _str(entry.get("status"))
            self.restores.append({"ended": when, "status": self.restore_status})
        elif phase == "gate":
            self._gate(entry, when)
        elif phase == drift.PHASE:
            self.drift_count += 1
            if len(self.drifts) < MAX_TIMELINE_DRIFTS:
                self.drifts.append(drift.timeline_record(entry))
        else:
            sid = entry.get("step")
            if isinstance(sid, str) and sid in self.steps:
                self._step(self.steps[sid], phase, when, entry)

    def _plan(self, entry: dict[str, Any]) -> None:
        self.run_start = entry
        self.run["started"] = _str(entry.get("time"))
        plan = entry.get("plan")
        for item in plan if isinstance(plan, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            number = item.get("number")
            self.steps[item["id"]] = StepState(
                number=number if isinstance(number, int) and not isinstance(number, bool) else None,
                id=item["id"],
                action=_str(item.get("action")) or "?",
                describe=_str(item.get("describe")) or "",
                params=_dict(item.get("params")) or {},
            )

    def _gate(self, entry: dict[str, Any], when: str | None) -> None:
        """A restore's relay probe: the steps it kept stay gated until an undo finishes."""
        verdict = _str(entry.get("verdict"))
        kept = _strs(entry.get("kept"))
        self.gates.append(
            {
                "time": when,
                "verdict": verdict,
                "reason": _str(entry.get("reason")),
                "kept": kept,
                "transcript": [
                    {"container": _str(t.get("container")), "lines": _strs(t.get("transcript"))}
                    for t in entry.get("targets") or []
                    if isinstance(t, dict)
                ]
                if isinstance(entry.get("targets"), list)
                else [],
            }
        )
        for sid in kept:
            if sid in self.steps and verdict:
                self.steps[sid].gated = verdict

    @staticmethod
    def _step(s: StepState, phase: object, when: str | None, entry: dict[str, Any]) -> None:
        if phase == "intent":
            s.state, s.has_intent, s.started = "running", True, when
            s.undo = _dict(entry.get("undo"))
            resolved = _dict(entry.get("resolved"))
            if resolved:
                s.params = {**s.params, **resolved}
        elif phase == "intent-update":
            s.undo = _dict(entry.get("undo"))
        elif phase in ("applied", "failed"):
            s.state, s.ended = str(phase), when
            seconds = entry.get("seconds")
            s.seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
            s.notes = _strs(entry.get("notes"))
            s.error = _str(entry.get("error"))
        elif phase == "undo-intent":
            s.state, s.undo_started = "undoing", when
        elif phase in ("undone", "undo-failed"):
            s.state, s.undo_ended = str(phase), when
            if phase == "undone":
                s.gated = None
            s.undo_notes = _strs(entry.get("notes"))
            s.undo_error = _str(entry.get("error"))

    def finish(self, *, running: bool = False) -> list[StepState]:
        """The steps in plan order, with held undos marked.

        ``running`` says the run that wrote the journal is still alive; if not,
        a step stuck between its intent and its result was interrupted.
        """
        for s in self.steps.values():
            if s.state == "running" and not running:
                s.state = "interrupted"
            s.held = held_decision(s)
        return sorted(self.steps.values(), key=lambda s: (s.number is None, s.number or 0))

    @property
    def containment_active(self) -> bool:
        """Some journaled change is not undone: applied, interrupted, failed after its intent,
        or held until an operator decides (a held mail queue is still contained)."""
        return any(s.needs_undo for s in self.steps.values())

    @property
    def held(self) -> list[StepState]:
        return [s for s in self.steps.values() if held_decision(s)]


def held_decision(s: StepState) -> str | None:
    """The decision an undo waits for: the action's own (``release-queue``), or
    ``reopen-anyway`` for a step restore's gate kept because the relay was open."""
    if not s.needs_undo:
        return None
    own = HELD_UNDO.get(s.action)
    if own:
        return own
    return REOPEN_ANYWAY if s.gated else None


def read_steps(entries: Iterable[dict[str, Any]]) -> StepReader:
    """Every entry of a journal, folded. The CLI, the server, export and verify all start here."""
    reader = StepReader()
    for entry in entries:
        reader.add(entry)
    return reader
