"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lockdown.errors import BadInput
from lockdown.paths import check_incident_id, state_dir
from lockdown.record.incident import last_incident_id

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]
StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="LOCKDOWN_STATE_DIR",
        help="Where incidents live (default /var/lib/lockdown).",
        show_default=False,
    ),
]


def root(explicit: Path | None) -> Path:
    return state_dir(explicit)


def pick_incident(root_dir: Path, incident: str | None, last: bool) -> str:
    if incident and last:
        raise BadInput("give an INCIDENT or --last, not both")
    if incident:
        return check_incident_id(incident)
    if last:
        found = last_incident_id(root_dir)
        if found is None:
            raise BadInput(f"no incidents in {root_dir}", "run a playbook first, or pass --state-dir")
        return found
    raise BadInput("which incident? give its id or --last", "list them with `lockdown incidents`")
