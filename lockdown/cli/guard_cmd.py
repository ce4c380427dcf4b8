"""``guard``: keep an incident's containment true in the foreground (``lockdown/guard.py``)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Annotated, Any

import typer

from lockdown.cli.common import StateDirOpt, root
from lockdown.cli.output import Output
from lockdown.errors import BadInput, ExitCode
from lockdown.paths import check_incident_id

TimerOpt = Annotated[
    float,
    typer.Option(
        "--timer",
        min=0.1,
        max=3600,
        help="Seconds between re-reads of accept_ra/autoconf (not netlink events) and, with --all, "
        "rescans for new incidents.",
    ),
]


def _line(data: dict[str, Any], kind: str) -> str:
    who = data.get("incident_id", "")
    if kind == "guarding":
        return f"guarding {who}: {data['what']}"
    if kind == "compared":
        return f"{who}: {data['source']} state compared with the journal ({data['reason']}); following events"
    if kind == "drift":
        return f"{who}: drift [{data['step']}] {data['changed']}: {data['did']} ({data['latency_ms']:.0f} ms)"
    if kind == "lost":
        return f"{data['source']}: lost: {data['reason']}; retrying, containment unchecked until it is back"
    if kind == "reconnected":
        return f"{data['source']}: {data['reason']}; comparing the live state with the journal again"
    if kind == "released":
        return f"{who}: {data['reason']}: no longer guarded"
    if kind == "warning":
        return f"{who}: warning: {data['message']}"
    return f"{kind}: {data.get('reason', '')}"


def guard(
    incident: Annotated[str | None, typer.Argument(help="Incident id to guard.", show_default=False)] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Guard every incident whose containment is active, new ones too.")
    ] = False,
    timer: TimerOpt = 30.0,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Keep containment true while it is active: re-assert what the host or Docker undoes.

    Runs in the foreground. SIGTERM stops it with exit 0 (a service manager's
    normal stop), SIGINT (Ctrl-C) with 130. With INCIDENT it exits 0 once a
    restore of that incident has begun.
    """
    if incident and all_:
        raise BadInput("give an INCIDENT or --all, not both")
    if not incident and not all_:
        raise BadInput("which incident? give its id or --all", "list them with `lockdown incidents`")
    from lockdown.guard import Guard

    out = Output(json_out)
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        got.append(signum)
        stop.set()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        out.json_line({"event": kind, **data})
        out.line(_line(data, kind))

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ids = None if all_ else [check_incident_id(str(incident))]
        Guard(root(state_dir), ids, on_event=on_event, stop=stop, timer=timer).run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        name = signal.Signals(got[0]).name
        on_event("stopped", {"reason": name})
        raise typer.Exit(int(ExitCode.INTERRUPTED if got[0] == signal.SIGINT else ExitCode.OK))


def register(app: typer.Typer) -> None:
    app.command()(guard)
