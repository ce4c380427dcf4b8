"""``queue show`` and ``queue purge``: the mail an incident put on hold."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lockdown.actions.postfix_hold import PURGE, show_queue
from lockdown.cli.common import JsonOpt, StateDirOpt, pick_incident, root
from lockdown.cli.output import OK, Output
from lockdown.engine.runner import decide

app = typer.Typer(
    help="The mail queue an incident held (postfix.hold_queue): show it, or purge it.",
    no_args_is_help=True,
)

IncidentArg = Annotated[str | None, typer.Argument(help="Incident id.")]
LastOpt = Annotated[bool, typer.Option("--last", help="The most recent incident.")]


@app.command()
def show(
    incident: IncidentArg = None,
    last: LastOpt = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Only what the journal says; do not ask the containers.")
    ] = False,
    json_out: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """List the queue ids an incident held, and where they are now (hold, deferred, gone)."""
    out = Output(json_out)
    base = root(state_dir)
    incident_id = pick_incident(base, incident, last)
    doc = show_queue(base, incident_id, live=not offline)
    if json_out:
        out.json(doc)
        return
    for step in doc["steps"]:
        out.line(f"step {step['step']} ({step['state']}): {step['summary']}")
        for c in step["containers"]:
            out.line(f"  {c['container']}: {len(c['held'])} held by lockdown, {len(c['purged'])} purged")
            for note in c.get("notes", []):
                out.line(f"    {note}")
            live: dict[str, Any] = c.get("live") or {}
            if "error" in live:
                out.line(f"    now: unknown ({live['error']})")
                continue
            for qid in c["held"]:
                where = live.get(qid, "-")
                out.line(f"    {qid:<20} {'purged' if qid in c['purged'] else where}")


@app.command()
def purge(
    incident: IncidentArg = None,
    last: LastOpt = False,
    json_out: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Delete exactly the messages an incident held (postsuper -d); their copies stay in the evidence."""
    out = Output(json_out)
    base = root(state_dir)
    incident_id = pick_incident(base, incident, last)
    doc = decide(base, incident_id, PURGE)
    if json_out:
        out.json(doc)
        return
    for step in doc["steps"]:
        for c in step["containers"]:
            gone = f", {len(c['gone'])} already gone" if c["gone"] else ""
            out.line(f"{OK} {c['container']}: deleted {len(c['deleted'])} held message(s){gone}")
            for note in c["notes"]:
                out.line(f"    {note}")
    out.line(f"  journaled in incident {incident_id}; copies of the messages: evidence/queue/")


def register(main_app: typer.Typer) -> None:
    main_app.add_typer(app, name="queue")
