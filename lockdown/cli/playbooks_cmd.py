"""``lockdown playbooks list|show|validate``."""

from __future__ import annotations

from typing import Annotated

import typer

from lockdown.actions import get_action
from lockdown.actions.base import params_doc
from lockdown.cli.common import JsonOpt
from lockdown.cli.output import Output
from lockdown.engine.playbook import find_playbook, list_playbooks, load_playbook, parse_var_overrides

app = typer.Typer(help="List, show and validate playbooks.", no_args_is_help=True)


@app.command("list")
def list_cmd(json_out: JsonOpt = False) -> None:
    """Playbooks found by name: shipped ones, then /etc/lockdown/playbooks."""
    out = Output(json_out)
    found = list_playbooks()
    if json_out:
        out.json({"playbooks": found})
        return
    out.table([[p["name"], p["description"], p["path"]] for p in found], ["name", "description", "path"])


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Playbook name or path.")],
    json_out: JsonOpt = False,
) -> None:
    """Print a playbook's text and its resolved plan."""
    out = Output(json_out)
    path, _ = find_playbook(name)
    pb = load_playbook(name)
    if json_out:
        out.json({"name": pb.name, "path": str(path), "description": pb.description, "vars": pb.vars,
                  "sha256": pb.sha256, "text": pb.text, "plan": pb.plan()})
        return
    out.line(f"# {path}")
    out.line(pb.text.rstrip())


@app.command("validate")
def validate(
    file: Annotated[str, typer.Argument(help="Playbook path or name.")],
    var: Annotated[list[str] | None, typer.Option("--var", help="KEY=VALUE override to validate with.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a playbook without running it: TOML, actions, parameters and vars."""
    out = Output(json_out)
    pb = load_playbook(file, parse_var_overrides(var or []))
    if json_out:
        out.json({"valid": True, "name": pb.name, "steps": len(pb.steps), "plan": pb.plan()})
        return
    out.line(f"{pb.display}: valid, {len(pb.steps)} steps")


@app.command("actions")
def actions(json_out: JsonOpt = False) -> None:
    """List the actions a playbook can use, with their parameters."""
    from lockdown.actions import REGISTRY

    out = Output(json_out)
    docs: list[dict[str, object]] = []
    lines: list[tuple[str, str, list[dict[str, str]]]] = []
    for name in sorted(REGISTRY):
        cls = get_action(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        params = [{"name": n, "type": t, "default": d} for n, t, d in params_doc(cls.Params)]
        docs.append({"action": name, "summary": summary, "held_undo": cls.held_undo, "params": params})
        lines.append((name, summary, params))
    if json_out:
        out.json({"actions": docs})
        return
    for name, summary, params in lines:
        out.line(f"{name}: {summary}")
        for p in params:
            out.line(f"    {p['name']}: {p['type']} (default {p['default']})")


def register(main_app: typer.Typer) -> None:
    main_app.add_typer(app, name="playbooks")
