"""``run``, ``restore``, ``status`` and ``incidents``."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated, Any

import typer

from lockdown.actions.postfix_hold import DECISION as RELEASE_QUEUE
from lockdown.cli.common import JsonOpt, StateDirOpt, pick_incident, root
from lockdown.cli.output import FAIL, HELD, OK, Output
from lockdown.engine import runner
from lockdown.engine.playbook import Playbook, load_playbook, parse_var_overrides
from lockdown.errors import ExitCode, IntegrityError, LockdownError, PartialRestore, ReopenRefused
from lockdown.record import incident as inc
from lockdown.record.drift import read_drifts
from lockdown.record.steps import REOPEN_ANYWAY

EMPTY = "empty: nothing was changed (the incident has no journal line)"

#: How many drift entries `status` shows (the count covers all of them).
DRIFT_SHOWN = 5

RUN_EXIT = {
    "contained": ExitCode.OK,
    "dry-run": ExitCode.OK,
    "partial": ExitCode.FAILED,
    "failed": ExitCode.FAILED,
    "interrupted": ExitCode.INTERRUPTED,
}


@contextmanager
def _hints_as_flags(pb: Playbook) -> Iterator[None]:
    """The operator typed ``lockdown run``: a hint that names one of the playbook's vars says
    ``--var KEY=VALUE``, which is what they can type next, rather than the TOML of the file."""
    try:
        yield
    except LockdownError as exc:
        exc.cli_vars = frozenset(pb.vars)
        raise


def run(
    playbook: Annotated[str, typer.Argument(help="Playbook name (see `lockdown playbooks list`) or path.")],
    var: Annotated[list[str] | None, typer.Option("--var", help="Override a var: KEY=VALUE (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; change nothing.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Override safety guards such as the SSH lockout guard.")
    ] = False,
    json_out: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Run a playbook: journal each change with its undo, then make it."""
    out = Output(json_out)
    pb = load_playbook(playbook, parse_var_overrides(var or []))
    if dry_run:
        with _hints_as_flags(pb):
            result = runner.dry_run(pb, force=force)
        if json_out:
            out.json(result.as_dict())
        else:
            out.line(f"plan for {pb.display} ({len(pb.steps)} steps, nothing will change; {result.live_check}):")
            for item in result.plan:
                out.line(f"  {item['number']:>2}. {item['id']:<22} {item['action']:<20} {item['describe']}")
                for k, v in item["params"].items():
                    out.line(f"        {k} = {v!r}")
                for k, v in item.get("resolved", {}).items():
                    if not k.endswith("_ids"):
                        out.line(f"        -> {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}")
        return
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            out.info(f"lockdown: {signal.Signals(signum).name}: stopping after the current step")
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _hints_as_flags(pb):
            result = runner.run_playbook(
                pb,
                root(state_dir),
                force=force,
                trigger={"kind": "cli", "argv": sys.argv, "command": shlex.join(sys.argv)},
                on_event=out.event,
                stop=stop,
            )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if json_out:
        out.json(result.as_dict())
    else:
        _summary(out, result)
    raise typer.Exit(int(RUN_EXIT[result.status]))


def _summary(out: Output, result: runner.RunResult) -> None:
    failed = [s for s in result.steps if s.state == "failed"]
    out.line()
    words = {
        "contained": "contained",
        "partial": f"contained with {len(failed)} failed step(s)",
        "failed": "FAILED",
        "interrupted": "interrupted",
    }
    out.line(f"{words[result.status]}: incident {result.incident_id}")
    out.line(f"  evidence: {result.incident_dir}")
    out.line(f"  undo everything: lockdown restore {result.incident_id}")
    if result.status in ("contained", "partial"):
        out.line(f"  keep it contained (unless `lockdown serve` runs): lockdown guard {result.incident_id}")
    if failed:
        out.line(f"  see what failed: lockdown status {result.incident_id}")


def restore(
    incident: Annotated[str | None, typer.Argument(help="Incident id.")] = None,
    last: Annotated[bool, typer.Option("--last", help="Restore the most recent incident.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be undone.")] = False,
    release_queue: Annotated[
        bool, typer.Option("--release-queue", help="Also release the mail queue that the run held.")
    ] = False,
    reopen_anyway: Annotated[
        bool,
        typer.Option(
            f"--{REOPEN_ANYWAY}",
            help="Undo the steps that reopen a path from outside even if the relay probe accepts (or cannot tell).",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Restore even if the journal chain is broken.")] = False,
    json_out: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Undo every journaled change of an incident, newest first; probe the relay before reopening a path."""
    out = Output(json_out)
    base = root(state_dir)
    incident_id = pick_incident(base, incident, last)
    given = ((RELEASE_QUEUE, release_queue), (REOPEN_ANYWAY, reopen_anyway))
    decisions = frozenset(name for name, on in given if on)
    result = runner.restore(
        base, incident_id, dry_run=dry_run, decisions=decisions, force=force, on_event=out.event
    )
    if json_out:
        out.json(result.as_dict())
    else:
        if result.journal_problem:
            out.info(f"lockdown: warning: {result.journal_problem}")
        if result.status == "dry-run":
            out.line(f"restore of {incident_id} would, newest first:")
            for s in result.steps:
                out.line(f"  {s.state:<11} {s.id:<22} {s.action}")
        elif result.status == "nothing-to-do":
            out.line(f"incident {incident_id}: nothing to undo")
        elif result.status == "empty":
            out.line(f"incident {incident_id}: {EMPTY}")
        else:
            mark = OK if result.status == "restored" else FAIL
            out.line(f"{mark} restore of {incident_id}: {result.status}")
        _print_gate(out, result)
        for h in result.held:
            out.line(f"  {HELD} {h['id']} ({h['action']}) is held: {h['summary']}")
    if result.status == "partial":
        failed = ", ".join(s.id for s in result.steps if s.state == "undo-failed")
        raise PartialRestore(
            f"restore of {incident_id} is partial: undo failed for {failed}",
            f"see `lockdown status {incident_id}`, fix the cause, then run `lockdown restore {incident_id}` again",
        )
    if result.status != "dry-run" and result.gated and result.gate is not None:
        raise ReopenRefused(
            f"restore of {incident_id} kept {', '.join(result.gated)} in place: {result.gate['reason']}",
            "fix: " + " | ".join(result.gate["fixes"]) + f"; then `lockdown restore {incident_id}` probes again "
            f"(`--{REOPEN_ANYWAY}` reopens the path anyway)",
        )


def _print_gate(out: Output, result: runner.RestoreResult) -> None:
    """The relay probe's verdict, its transcript and what to fix."""
    gate = result.gate
    if gate is None:
        return
    out.line(f"  relay probe: {gate['verdict']}: {gate['reason']}")
    for target in gate["targets"]:
        for line in target.get("transcript", []):
            out.line(f"    {target['container']}: {line}")
    for fix in gate["fixes"]:
        out.line(f"  fix: {fix}")


def status(
    incident: Annotated[str | None, typer.Argument(help="Incident id (default: the latest).")] = None,
    json_out: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Show each step's state, whether containment is active and whether the journal is intact."""
    out = Output(json_out)
    base = root(state_dir)
    incident_id = pick_incident(base, incident, last=incident is None)
    view = inc.read_incident(base, incident_id)
    drifts = read_drifts(view.chain.entries)
    if json_out:
        out.json({**view.as_dict(), "drift": {"count": len(drifts), "last": drifts[-DRIFT_SHOWN:]}})
    else:
        _print_view(out, view)
        _print_drift(out, drifts)
    if view.damage:
        message = f"incident {incident_id} is damaged: {view.damage}"
        hint = f"the steps shown are what its readable parts say; `lockdown restore {incident_id} --force` undoes them"
        if json_out:  # the view is the one JSON document; the error goes to stderr only
            out.error(message, hint)
            raise typer.Exit(int(ExitCode.FAILED))
        raise IntegrityError(message, hint)


def _print_drift(out: Output, drifts: list[dict[str, Any]]) -> None:
    if not drifts:
        return
    out.line()
    out.line(f"  drift: {len(drifts)} re-assertion(s) by `lockdown guard`, last {min(len(drifts), DRIFT_SHOWN)}:")
    for d in drifts[-DRIFT_SHOWN:]:
        out.line(f"    {d.get('time')} [{d.get('step')}] {d.get('changed')}: {d.get('did')}")


def _journal_line(view: inc.IncidentView) -> str:
    if view.empty:
        return EMPTY
    if not view.chain.intact:
        return f"BROKEN: {view.chain.problem}"
    return "intact" + (f" ({view.chain.problem})" if view.chain.problem else "")


def _print_view(out: Output, view: inc.IncidentView) -> None:
    d = view.as_dict()
    out.line(f"incident {view.id}  ({d['playbook']}, trigger {d['trigger']}, created {d['created']})")
    out.line(f"  run: {view.run_status or '-'}   restore: {view.restore_status or '-'}")
    active = "YES" if view.containment_active else "no"
    if view.held:
        active += f" ({len(view.held)} step(s) held until you decide, see below)"
    out.line(f"  containment active: {active}")
    out.line(f"  journal: {_journal_line(view)}")
    if view.meta_problem:
        out.line(f"  {inc.INCIDENT_JSON}: DAMAGED: {view.meta_problem}")
    rows = []
    for s in view.steps:
        state = s.state + (f" (held: {s.held})" if s.held else "")
        rows.append([str(s.number), s.id, s.action, state, "" if s.seconds is None else f"{s.seconds:.2f}s"])
    out.line()
    out.table(rows, ["#", "step", "action", "state", "time"])
    for s in view.steps:
        if s.error:
            out.line(f"  {s.id}: {s.error}")
        if s.undo_error:
            out.line(f"  {s.id} undo: {s.undo_error}")


def incidents(json_out: JsonOpt = False, state_dir: StateDirOpt = None) -> None:
    """List incidents in the order they were created, newest last. A damaged one is listed as such."""
    out = Output(json_out)
    base = root(state_dir)
    views: list[dict[str, Any]] = []
    for incident_id in inc.list_incident_ids(base):
        v = inc.read_incident(base, incident_id)
        d = v.as_dict()
        views.append(
            {
                "incident_id": v.id,
                "playbook": d["playbook"],
                "run_status": v.run_status,
                "restore_status": v.restore_status,
                "containment_active": v.containment_active,
                "journal_intact": v.chain.intact,
                "empty": v.empty,
                "damage": v.damage,
                "held": len(v.held),
            }
        )
    if json_out:
        out.json({"state_dir": str(base), "incidents": views})
        return
    if not views:
        out.line(f"no incidents in {base}")
        return
    out.table(
        [
            [
                v["incident_id"],
                v["run_status"] or "-",
                v["restore_status"] or "-",
                "ACTIVE" if v["containment_active"] else "-",
                "empty" if v["empty"] else "DAMAGED" if v["damage"] else "ok",
            ]
            for v in views
        ],
        ["incident", "run", "restore", "containment", "files"],
    )


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(restore)
    app.command()(status)
    app.command()(incidents)
