"""Apply a playbook, undo an incident. Journal first, then act.

The runner reports progress through an ``on_event`` callback and never
prints. Signals are the caller's business: it passes a ``stop`` event that
the runner checks between steps, so the current step always finishes and is
journaled (the CLI sets it from SIGINT/SIGTERM, the webhook server on shutdown).
"""

from __future__ import annotations

import json
import platform
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockdown import __version__, dockerapi, nft
from lockdown.actions import REGISTRY, get_action
from lockdown.actions.base import StepContext, UndoRecord
from lockdown.engine import gate as gate_mod
from lockdown.engine.lock import StateLock
from lockdown.engine.playbook import Playbook, Step
from lockdown.engine.privileges import check_all
from lockdown.errors import (
    ActionError,
    BadInput,
    IntegrityError,
    LockdownError,
    PrivilegeError,
    Unavailable,
)
from lockdown.evidence.manifest import host_identity
from lockdown.paths import write_staged
from lockdown.record import incident as inc
from lockdown.record.journal import Journal, utcnow
from lockdown.record.steps import REOPEN_ANYWAY
from lockdown.record.store import EvidenceStore

EventHandler = Callable[[str, dict[str, Any]], None]


def _noop(kind: str, data: dict[str, Any]) -> None:
    pass


@dataclass
class StepResult:
    id: str
    action: str
    state: str  # ok | failed | skipped | undone | undo-failed | held
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "state": self.state,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "error": self.error,
        }


@dataclass
class RunResult:
    incident_id: str | None
    status: str  # contained | partial | failed | interrupted | dry-run
    steps: list[StepResult]
    incident_dir: Path | None = None
    plan: list[dict[str, Any]] = field(default_factory=list)
    live_check: str | None = None  # dry runs: whether targets were resolved, or why not

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "incident_id": self.incident_id,
            "status": self.status,
            "steps": [s.as_dict() for s in self.steps],
        }
        if self.live_check is not None:
            out["live_check"] = self.live_check
        if self.incident_dir:
            out["incident_dir"] = str(self.incident_dir)
            out["restore_command"] = f"lockdown restore {self.incident_id}"
            out["guard_command"] = f"lockdown guard {self.incident_id}"
        if self.plan:
            out["plan"] = self.plan
        return out


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, LockdownError):
        return exc.message + (f" ({exc.hint})" if exc.hint else "")
    return f"internal error: {type(exc).__name__}: {exc}"


def check_privileges(playbook: Playbook) -> None:
    """Root, CAP_NET_ADMIN, Docker socket: checked before the lock is even taken."""
    needs = [
        (req, f"{playbook.display} {step.where} ({step.action_name})")
        for step in playbook.steps
        for req in step.action.requires
    ]
    check_all(needs)


def preflight(playbook: Playbook) -> None:
    """Each action's own live checks (targets exist, tools present). Changes nothing.

    Docker is asked each question once (``dockerapi.one_look``): the steps
    mostly name the same containers; nftables' ruleset is listed once too
    (``nft.one_look``).
    """
    with dockerapi.one_look(), nft.one_look():
        for step in playbook.steps:
            try:
                step.action.preflight()
            except LockdownError as exc:
                exc.message = f"{playbook.display} {step.where}: {exc.message}"
                raise


def dry_run(playbook: Playbook, *, force: bool = False) -> RunResult:
    """The plan, checked against the live system as far as privileges allow.

    With the privileges a run needs, every action's read-only preflight runs, so
    ``auto`` targets and interface globs show what they resolve to, and a run
    that would be refused (no such container, lockout guard) is refused here with
    the same message and exit code. Without them, or with the Docker daemon
    unreachable, the plan is still shown and ``live_check`` says why the
    targets were not resolved.
    """
    live_check = "targets resolved against the live system"
    try:
        check_privileges(playbook)
    except (PrivilegeError, Unavailable) as exc:  # no privileges, or Docker down: still show the plan
        live_check = f"targets not resolved: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")
    else:
        for step in playbook.steps:
            step.action.force = force
        preflight(playbook)
    plan = playbook.plan()
    for entry, step in zip(plan, playbook.steps, strict=True):
        resolved = step.action.resolved()
        if resolved:
            entry["resolved"] = resolved
    return RunResult(incident_id=None, status="dry-run", steps=[], plan=plan, live_check=live_check)


class Run:
    """One run of a playbook: ``start()`` records it durably, ``execute()`` runs it.

    The webhook server answers its caller between the two; the CLI calls
    ``run_playbook`` which does both. ``privileges_checked``: the caller
    checked root and CAP_NET_ADMIN itself (serve, at start-up), so ``start``
    does not ping Docker either: each Docker step's preflight asks it.
    """

    def __init__(
        self,
        playbook: Playbook,
        root: Path,
        *,
        force: bool = False,
        trigger: dict[str, Any] | None = None,
        on_event: EventHandler | None = None,
        stop: threading.Event | None = None,
        privileges_checked: bool = False,
    ) -> None:
        self.playbook = playbook
        self.privileges_checked = privileges_checked
        self.root = root
        self.force = force
        self.trigger = trigger or {"kind": "api"}
        self.emit = on_event or _noop
        self.stop = stop or threading.Event()
        self.lock = StateLock(root, "run")
        self.incident_id: str | None = None
        self.incident_dir: Path | None = None
        self.journal: Journal | None = None
        self.evidence: EvidenceStore | None = None

    def start(self) -> str:
        """Check privileges, lock, preflight, then create the incident with ``run-start`` journaled.

        The incident directory is built under a temporary name and renamed to
        its id only once its first journal line is durable: a crash at any
        point leaves either no incident or one whose journal says what ran.
        """
        if not self.privileges_checked:
            check_privileges(self.playbook)
        self.lock.acquire()
        try:
            for step in self.playbook.steps:
                step.action.force = self.force
            preflight(self.playbook)
            self.incident_id = inc.new_incident_id(self.root, self.playbook.name)
            self.lock.update(self.incident_id)
            staging = inc.stage_incident_dir(self.root, self.incident_id)
            meta = self._meta()
            write_staged(staging / inc.PLAYBOOK_COPY, self.playbook.text.encode())
            write_staged(
                staging / inc.INCIDENT_JSON,
                json.dumps(meta, indent=1, sort_keys=True, default=str).encode() + b"\n",
            )
            self.journal = Journal.create(staging)
            self.journal.append(
                "run-start",
                incident=self.incident_id,
                playbook=meta["playbook"],
                vars=self.playbook.vars,
                trigger=self.trigger,
                operator=meta["operator"],
                lockdown_version=__version__,
                plan=self.playbook.plan(),
            )
            self.incident_dir = inc.publish_incident_dir(staging, self.incident_id)
            self.journal.moved(self.incident_dir)
            self.evidence = EvidenceStore(self.incident_dir)
        except BaseException:
            if self.journal is not None:
                self.journal.close()
            self.lock.release()
            raise
        self.emit("start", {"incident_id": self.incident_id, "plan": self.playbook.plan()})
        return self.incident_id

    def _meta(self) -> dict[str, Any]:
        """What ``incident.json`` records about this run."""
        host = host_identity()
        return {
            "incident_id": self.incident_id,
            "created": utcnow(),
            "playbook": {
                "name": self.playbook.name,
                "path": str(self.playbook.path),
                "sha256": self.playbook.sha256,
            },
            "vars": self.playbook.vars,
            "trigger": self.trigger,
            "operator": inc.operator(),
            "host": socket.gethostname(),
            "machine_id": host["machine_id"],
            "boot_id": host["boot_id"],
            "kernel": platform.release(),
            "lockdown_version": __version__,
        }

    def execute(self) -> RunResult:
        assert self.journal is not None and self.incident_id is not None
        results: list[StepResult] = []
        status = "contained"
        try:
            for step in self.playbook.steps:
                if self.stop.is_set():
                    status = "interrupted"
                    self.journal.append("interrupted", reason="stop requested", before=step.id)
                    self.emit("interrupted", {"before": step.id})
                    break
                result = self._run_step(step)
                results.append(result)
                if len(results) == self._closing_steps():  # the path is closed: slow reads may start
                    self._prefetch(len(results))
                if result.state == "failed":
                    if step.on_error == "abort":
                        status = "failed"
                        break
                    status = "partial"
            self.journal.append(
                "run-end",
                status=status,
                steps={r.id: r.state for r in results},
            )
        finally:
            self.journal.close()
            self.lock.release()
        outcome = RunResult(
            incident_id=self.incident_id,
            status=status,
            steps=results,
            incident_dir=self.incident_dir,
        )
        self.emit("end", outcome.as_dict())
        return outcome

    def _closing_steps(self) -> int:
        """How many steps at the head of the playbook close a path (``reopens_path``); at least 1."""
        n = 0
        for step in self.playbook.steps:
            if not step.action.reopens_path:
                break
            n += 1
        return max(n, 1)

    def _prefetch(self, start: int) -> None:
        """Let the next steps start their slow read-only queries (``Action.prefetch``).

        Called once the steps that close the abused path have run. It stops
        at the first later step that uses Docker: Docker answers nothing else
        about a container while it computes that container's diff (~0.3 s), so
        a diff asked earlier would hold up that step instead of the one that
        records it. A query that fails here is asked again by its step, which
        reports it.
        """
        for later in self.playbook.steps[start:]:
            try:
                later.action.prefetch()
            except LockdownError:
                pass
            if "docker" in later.action.requires:
                break

    def _run_step(self, step: Step) -> StepResult:
        assert self.journal is not None and self.evidence is not None
        assert self.incident_id is not None and self.incident_dir is not None
        journal = self.journal

        def on_note(message: str) -> None:
            self.emit("note", {"step": step.id, "message": message})

        def amend(record: UndoRecord) -> None:
            journal.append("intent-update", step=step.id, action=step.action_name, undo=record)

        ctx = StepContext(
            incident_id=self.incident_id,
            incident_dir=self.incident_dir,
            step_id=step.id,
            action=step.action_name,
            evidence=self.evidence,
            force=self.force,
            on_note=on_note,
        )
        self.emit("step-start", {"id": step.id, "action": step.action_name, "describe": step.action.describe()})
        t0 = time.monotonic()
        intent_written = False
        try:
            undo = step.action.prepare(ctx)
            journal.append(
                "intent",
                step=step.id,
                action=step.action_name,
                params=step.params,
                resolved=step.action.resolved(),
                undo=undo,
            )
            intent_written = True
            ctx.amend = amend
            with self.evidence.batch():  # the step's evidence is listed in one manifest write, at its end
                step.action.apply(ctx, undo)
        except Exception as exc:  # noqa: BLE001 - every failure is journaled, then on_error decides
            seconds = time.monotonic() - t0
            error = _error_text(exc)
            entry: dict[str, Any] = {"error": error, "notes": ctx.notes, "seconds": round(seconds, 3)}
            if not isinstance(exc, LockdownError):
                entry["traceback"] = traceback.format_exc()
            if not intent_written:
                entry["before_intent"] = True
            journal.append("failed", step=step.id, action=step.action_name, **entry)
            res = StepResult(step.id, step.action_name, "failed", seconds, ctx.notes, error)
            self.emit("step-end", res.as_dict())
            return res
        seconds = time.monotonic() - t0
        journal.append(
            "applied",
            step=step.id,
            action=step.action_name,
            notes=ctx.notes,
            result=ctx.result,
            seconds=round(seconds, 3),
        )
        res = StepResult(step.id, step.action_name, "ok", seconds, ctx.notes)
        self.emit("step-end", res.as_dict())
        return res


def run_playbook(
    playbook: Playbook,
    root: Path,
    *,
    force: bool = False,
    trigger: dict[str, Any] | None = None,
    on_event: EventHandler | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    run = Run(playbook, root, force=force, trigger=trigger, on_event=on_event, stop=stop)
    run.start()
    return run.execute()


# ------------------------------------------------------------------ restore


@dataclass
class RestoreResult:
    incident_id: str
    status: str  # restored | partial | nothing-to-do | empty | dry-run
    steps: list[StepResult]
    held: list[dict[str, Any]]
    journal_problem: str | None = None
    gate: dict[str, Any] | None = None  # the relay probe, when a step that reopens a path was due

    @property
    def gated(self) -> list[str]:
        """Steps the gate kept in place (the relay accepted, or the probe could not tell)."""
        return [s.id for s in self.steps if s.state in ("gated", "would-gate")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "status": self.status,
            "steps": [s.as_dict() for s in self.steps],
            "held": self.held,
            "journal_problem": self.journal_problem,
            "gate": self.gate,
        }


@dataclass
class _RestorePlan:
    """Which due undos wait for a decision, which the gate decides, and which go first.

    ``first``: steps the probe needs undone (a paused container cannot answer),
    undone before the probe, which is safe only while another step still keeps
    the path closed. ``gated``: undone only if the probe says the relay refuses.
    """

    incident_id: str
    todo: list[inc.StepState]
    decisions: frozenset[str]
    held: list[inc.StepState] = field(default_factory=list)
    first: list[inc.StepState] = field(default_factory=list)
    gated: list[inc.StepState] = field(default_factory=list)

    @classmethod
    def of(cls, view: inc.IncidentView, todo: list[inc.StepState], decisions: frozenset[str]) -> _RestorePlan:
        """An incident that resolved no container (a host-only playbook) has no relay to ask: no gate."""
        plan = cls(view.id, todo, decisions)
        known = [s for s in todo if s.action in REGISTRY]
        plan.held = [s for s in known if (d := get_action(s.action).held_undo) and d not in decisions]
        # A paused container first: the probe, and later undos through docker exec, need it running.
        resumes = [s for s in known if get_action(s.action).probe_needs_undo]
        if REOPEN_ANYWAY in decisions or not gate_mod.containers_of(view.steps):
            plan.first = resumes
            return plan
        reopening = [s for s in known if get_action(s.action).reopens_path]
        paths = [s for s in reopening if s not in resumes]
        plan.first = resumes if paths else []
        plan.gated = [s for s in reopening if s not in plan.first]
        return plan

    def held_out(self) -> list[dict[str, Any]]:
        out = []
        for s in self.held:
            assert s.undo is not None
            summary = get_action(s.action).held_summary(s.undo)
            out.append({"id": s.id, "action": s.action, "decision": s.held or "", "summary": summary})
        return out

    def gated_out(self, gate: gate_mod.GateProbe | None) -> list[dict[str, Any]]:
        """Gated steps as held steps, with what the probe saw and what to fix."""
        why = (
            f"kept in place: {gate.reason}; fix: {' | '.join(gate.fixes)}; then `lockdown restore "
            f"{self.incident_id}` probes again"
            if gate
            else "reopens a path from outside: undone only if the relay probe (EHLO, MAIL FROM, RCPT TO "
            f"<{gate_mod.GATE_RCPT}>, never DATA) is refused"
        )
        summary = f"{why}; `lockdown restore {self.incident_id} --{REOPEN_ANYWAY}` reopens it anyway"
        return [{"id": s.id, "action": s.action, "decision": REOPEN_ANYWAY, "summary": summary} for s in self.gated]

    def dry_steps(self) -> list[StepResult]:
        def word(s: inc.StepState) -> str:
            return "would-hold" if s in self.held else "would-gate" if s in self.gated else "would-undo"

        ordered = self.first + [s for s in self.todo if s not in self.first]
        return [StepResult(s.id, s.action, word(s)) for s in ordered]


def restore(
    root: Path,
    incident_id: str,
    *,
    dry_run: bool = False,
    decisions: frozenset[str] = frozenset(),
    force: bool = False,
    on_event: EventHandler | None = None,
) -> RestoreResult:
    """Undo, in reverse order, every step whose intent was journaled.

    One failed undo is journaled and the others still run (fail2ban's
    stopActions). Steps whose undo needs an operator decision are listed
    and left alone unless ``decisions`` names it. Steps that reopen a path
    from outside pass restore's gate first (:mod:`lockdown.engine.gate`).
    """
    emit = on_event or _noop
    with StateLock(root, "restore") as lock:
        lock.update(incident_id)
        view = inc.read_incident(root, incident_id)
        if view.empty:
            return RestoreResult(incident_id, "empty", [], [], None)
        problem = _check_restorable(view, force)
        todo = [s for s in reversed(view.steps) if s.needs_undo]
        plan = _RestorePlan.of(view, todo, decisions)
        if dry_run:
            held = plan.held_out() + plan.gated_out(None)
            return RestoreResult(incident_id, "dry-run", plan.dry_steps(), held, problem)
        if not todo:
            return RestoreResult(incident_id, "nothing-to-do", [], plan.held_out(), problem)
        journal = Journal.open(view.path, allow_broken=force)
        evidence = EvidenceStore(view.path)
        try:
            results, gate = _restore_steps(journal, evidence, view, plan, emit)
            failed = [r for r in results if r.state == "undo-failed"]
            status = "partial" if failed else "restored"
            journal.append(
                "restore-end",
                status=status,
                steps={r.id: r.state for r in results},
                decisions=sorted(decisions),
            )
        finally:
            journal.close()
        held = plan.held_out() + (plan.gated_out(gate) if gate and gate.keeps else [])
        return RestoreResult(incident_id, status, results, held, problem, gate.as_dict() if gate else None)


def _check_restorable(view: inc.IncidentView, force: bool) -> str | None:
    """The journal's problem (None when intact); IntegrityError unless ``force``."""
    problem = view.chain.problem or view.meta_problem
    if not view.chain.intact and not force:
        raise IntegrityError(
            f"incident {view.id}: {problem}; refusing to restore from a journal that may have been altered",
            hint="check it with `lockdown status`; `lockdown restore --force` undoes what the readable lines say",
        )
    if view.meta_problem and not force:
        raise IntegrityError(
            f"incident {view.id}: {view.meta_problem}; refusing to restore an incident whose files "
            "may have been altered",
            hint="check it with `lockdown status`; `lockdown restore --force` undoes what the journal says",
        )
    return problem


def _restore_steps(
    journal: Journal,
    evidence: EvidenceStore,
    view: inc.IncidentView,
    plan: _RestorePlan,
    emit: EventHandler,
) -> tuple[list[StepResult], gate_mod.GateProbe | None]:
    """Undo ``first``, probe the relay if a gated step is due, then undo the rest newest first.

    Undoing the others before the gated ones is safe: none of them reopens a path.
    """
    results = [_undo_step(journal, evidence, view, s, emit) for s in plan.first]
    gate = _gate(journal, evidence, view, plan, emit) if plan.gated else None
    for s in plan.todo:
        if s in plan.first:
            continue
        if s in plan.held or (gate is not None and gate.keeps and s in plan.gated):
            results.append(StepResult(s.id, s.action, "held" if s in plan.held else "gated"))
            emit("step-end", results[-1].as_dict())
            continue
        results.append(_undo_step(journal, evidence, view, s, emit))
    return results, gate


def _gate(
    journal: Journal, evidence: EvidenceStore, view: inc.IncidentView, plan: _RestorePlan, emit: EventHandler
) -> gate_mod.GateProbe:
    """Probe the relay; journal the transcript and what it keeps, and keep it as evidence."""
    paused = [s.id for s in plan.gated if get_action(s.action).probe_needs_undo]
    if paused and len(paused) == len(plan.gated):
        gate = gate_mod.cannot_probe(paused)
    else:
        due = ", ".join(s.id for s in plan.gated)
        emit("note", {"step": "restore", "message": f"probing the relay before undoing {due}"})
        gate = gate_mod.probe_relay(gate_mod.containers_of(view.steps))
    kept = [s.id for s in plan.gated] if gate.keeps else []
    entry = journal.append("gate", **gate.as_dict(), gated=[s.id for s in plan.gated], kept=kept)
    evidence.write_json(f"gate/restore-gate-{entry['seq']}.json", {**entry, "kept": kept}, step="restore",
                        action="restore.gate")
    emit("note", {"step": "restore", "message": f"relay probe: {gate.verdict}: {gate.reason}"})
    return gate


def _undo_step(
    journal: Journal,
    evidence: EvidenceStore,
    view: inc.IncidentView,
    s: inc.StepState,
    emit: EventHandler,
) -> StepResult:
    assert s.undo is not None
    ctx = StepContext(
        incident_id=view.id,
        incident_dir=view.path,
        step_id=s.id,
        action=s.action,
        evidence=evidence,
        on_note=lambda m: emit("note", {"step": s.id, "message": m}),
    )
    emit("step-start", {"id": s.id, "action": s.action, "describe": f"undo {s.describe}"})
    t0 = time.monotonic()
    journal.append("undo-intent", step=s.id, action=s.action)
    try:
        if s.action not in REGISTRY:
            raise ActionError(f"unknown action {s.action!r}: this lockdown cannot undo it")
        get_action(s.action).undo(ctx, s.undo)
    except Exception as exc:  # noqa: BLE001 - record it and go on with the rest
        seconds = time.monotonic() - t0
        error = _error_text(exc)
        extra: dict[str, Any] = {}
        if not isinstance(exc, (LockdownError, ActionError)):
            extra["traceback"] = traceback.format_exc()
        journal.append(
            "undo-failed", step=s.id, action=s.action, error=error, notes=ctx.notes,
            seconds=round(seconds, 3), **extra,
        )
        res = StepResult(s.id, s.action, "undo-failed", seconds, ctx.notes, error)
        emit("step-end", res.as_dict())
        return res
    seconds = time.monotonic() - t0
    journal.append("undone", step=s.id, action=s.action, notes=ctx.notes, seconds=round(seconds, 3))
    res = StepResult(s.id, s.action, "undone", seconds, ctx.notes)
    emit("step-end", res.as_dict())
    return res


# ------------------------------------------------------------------ decisions on held steps


def decide(root: Path, incident_id: str, decision: str, *, step: str | None = None) -> dict[str, Any]:
    """Carry out ``decision`` on the held steps of an incident that offer it (fail2ban's shape).

    The one path for operator decisions other than restore's: it takes the
    state-dir lock, checks the journal, and gives each step's action a context
    whose ``amend_undo`` journals the amended record (``intent-update`` with
    the decision and the operator) before the action changes anything. The
    action's :meth:`~lockdown.actions.base.Action.decide` sits next to its undo.
    """
    offering = sorted(name for name in REGISTRY if decision in get_action(name).offers)
    with StateLock(root, decision) as lock:
        lock.update(incident_id)
        view = inc.read_incident(root, incident_id)
        steps = [
            s for s in view.steps
            if s.action in offering and s.has_intent and s.undo is not None and (step is None or s.id == step)
        ]
        if not steps:
            raise BadInput(
                f"incident {incident_id} has no step to {decision} "
                f"(no {' or '.join(offering) or 'action offering it'} step got as far as its intent)",
                f"see `lockdown status {incident_id}`",
            )
        if not view.chain.intact:
            raise IntegrityError(
                f"incident {incident_id}: {view.chain.problem}; "
                "refusing to act on a journal that may have been altered",
                hint=f"check it with `lockdown status {incident_id}`",
            )
        pending = [s for s in steps if s.needs_undo]
        if not pending:
            raise BadInput(
                f"incident {incident_id}: {', '.join(s.id for s in steps)} already undone by `lockdown restore`: "
                f"nothing to {decision}",
                f"see `lockdown status {incident_id}`",
            )
        journal = Journal.open(view.path)
        try:
            done = [{"step": s.id, **_decide_step(journal, view, s, decision)} for s in pending]
        finally:
            journal.close()
    return {"incident_id": incident_id, "decision": decision, "steps": done}


def _decide_step(journal: Journal, view: inc.IncidentView, s: inc.StepState, decision: str) -> dict[str, Any]:
    assert s.undo is not None
    who = inc.operator()

    def amend(record: UndoRecord, **why: Any) -> None:
        journal.append("intent-update", step=s.id, action=s.action, undo=record, decision=decision,
                       operator=who, **why)

    ctx = StepContext(
        incident_id=view.id,
        incident_dir=view.path,
        step_id=s.id,
        action=s.action,
        evidence=EvidenceStore(view.path),
        amend=amend,
    )
    record = json.loads(json.dumps(s.undo))
    return get_action(s.action).decide(ctx, record, decision)
