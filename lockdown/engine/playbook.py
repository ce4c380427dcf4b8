"""TOML playbooks: find, parse, substitute vars, validate every step up front.

Nothing runs until the whole playbook is valid. Every error names the file,
the step (number and id) and the key, e.g.
``relay-incident.toml step 1 (strip-v6): interfaces: expected a list of strings, got 42``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockdown import jsonsafe
from lockdown.actions import REGISTRY, get_action
from lockdown.actions.base import Action, ParamError, VarString, build_params
from lockdown.errors import BadInput, PlaybookError

ETC_PLAYBOOKS = Path("/etc/lockdown/playbooks")
TOP_KEYS = {"name", "description", "vars", "steps"}
STEP_KEYS = {"action", "id", "on_error"}
ON_ERROR = ("abort", "continue")
_VAR_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STEP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Tables and arrays nested deeper than this are refused: no playbook needs more
#: than a few levels, and tomllib itself recurses (RecursionError, exit 70, at ~500).
MAX_DEPTH = 32


def playbook_dirs() -> list[Path]:
    """Where playbooks are found by name, in order.

    ``LOCKDOWN_PLAYBOOK_PATH`` (colon-separated) comes first when set; then the
    playbooks shipped inside the package (installed wheel), the checkout's
    ``playbooks/`` (source tree or editable install), and /etc/lockdown/playbooks.
    """
    dirs: list[Path] = []
    extra = os.environ.get("LOCKDOWN_PLAYBOOK_PATH")
    if extra:
        dirs.extend(Path(p) for p in extra.split(":") if p)
    pkg = Path(__file__).resolve().parent.parent
    dirs.append(pkg / "playbooks")
    dirs.append(pkg.parent / "playbooks")
    dirs.append(ETC_PLAYBOOKS)
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


@dataclass
class Step:
    number: int
    id: str
    action_name: str
    action: Action[Any]
    on_error: str
    params: dict[str, Any]  # after var substitution, JSON-serialisable

    @property
    def where(self) -> str:
        return f"step {self.number} ({self.id})"


@dataclass
class Playbook:
    name: str
    description: str
    path: Path
    display: str
    text: str
    sha256: str
    vars: dict[str, Any]
    steps: list[Step] = field(default_factory=list)

    def plan(self) -> list[dict[str, Any]]:
        return [
            {
                "number": s.number,
                "id": s.id,
                "action": s.action_name,
                "on_error": s.on_error,
                "params": s.params,
                "describe": s.action.describe(),
            }
            for s in self.steps
        ]


def find_playbook(ref: str) -> tuple[Path, str]:
    """(path, name to show in messages) for a playbook name or path."""
    as_path = Path(ref)
    try:
        if "/" in ref or ref.endswith(".toml") or as_path.exists():
            if not as_path.is_file():
                raise PlaybookError(f"{ref}: no such playbook file")
            return as_path, ref
    except OSError as exc:
        raise PlaybookError(f"{ref}: cannot read: {exc.strerror}") from None
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", ref):
        raise PlaybookError(f"invalid playbook name {ref!r}")
    for d in playbook_dirs():
        candidate = d / f"{ref}.toml"
        if candidate.is_file():
            return candidate, candidate.name
    searched = ", ".join(str(d) for d in playbook_dirs())
    raise PlaybookError(
        f"no playbook named {ref!r} (searched {searched})",
        hint="list them with `lockdown playbooks list`, or pass a path to a .toml file",
    )


def list_playbooks() -> list[dict[str, str]]:
    """Name, path and description of every playbook found by name (first one wins)."""
    out: dict[str, dict[str, str]] = {}
    for d in playbook_dirs():
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.toml")):
            if path.stem in out:
                continue
            try:
                doc = tomllib.loads(path.read_text())
                desc = str(doc.get("description", "")).strip().splitlines()
                description = desc[0] if desc else ""
            except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
                description = f"(unreadable: {exc})"
            except RecursionError:
                description = "(unreadable: nested too deeply)"
            out[path.stem] = {"name": path.stem, "path": str(path), "description": description}
    return list(out.values())


def parse_var_overrides(pairs: list[str]) -> dict[str, str]:
    """``--var KEY=VALUE`` flags into a dict. Raises BadInput naming the bad flag."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _VAR_NAME_RE.match(key):
            raise BadInput(f"--var {pair!r}: expected KEY=VALUE with KEY a var name")
        out[key] = value
    return out


def _substitute(value: Any, variables: dict[str, Any], key: str) -> Any:
    if isinstance(value, str):
        whole = _VAR_RE.fullmatch(value)
        if whole and whole.group(1) is not None:
            name = whole.group(1)
            if name not in variables:
                raise ParamError(key, f"undefined var {{{name}}}")
            var = variables[name]
            return VarString(var) if isinstance(var, str) else var

        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "{{":
                return "{"
            if m.group(0) == "}}":
                return "}"
            name = m.group(1)
            if name not in variables:
                raise ParamError(key, f"undefined var {{{name}}}")
            var = variables[name]
            if isinstance(var, list):
                return ",".join(str(v) for v in var)
            return str(var).lower() if isinstance(var, bool) else str(var)

        return _VAR_RE.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, variables, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, f"{key}.{k}") for k, v in value.items()}
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, VarString):
        return str(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def load_playbook(ref: str, overrides: dict[str, str] | None = None) -> Playbook:
    path, display = find_playbook(ref)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PlaybookError(f"{display}: cannot read: {exc}") from None
    return parse_playbook(text, path, display, overrides or {})


def parse_playbook(text: str, path: Path, display: str, overrides: dict[str, str]) -> Playbook:
    def err(msg: str) -> PlaybookError:
        return PlaybookError(f"{display}: {msg}")

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise err(f"invalid TOML: {exc}") from None
    except RecursionError:
        raise err(f"invalid TOML: tables or arrays nested deeper than {MAX_DEPTH} levels") from None
    if jsonsafe.depth_exceeds(doc, MAX_DEPTH):
        raise err(f"tables or arrays nested deeper than {MAX_DEPTH} levels")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise err(f"{unknown[0]}: unknown top-level key (expected: {', '.join(sorted(TOP_KEYS))})")
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
        raise err(f"name: expected a short name of letters, digits, '.', '_' or '-', got {name!r}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise err(f"description: expected a string, got {description!r}")
    merged = _parse_vars(doc, overrides, display, err)
    steps_raw = doc.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise err("steps: expected at least one [[steps]] table")
    steps: list[Step] = []
    ids: set[str] = set()
    for number, raw in enumerate(steps_raw, start=1):
        steps.append(_parse_step(number, raw, ids, merged, err))
    return Playbook(
        name=name,
        description=description,
        path=path.resolve(),
        display=display,
        text=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        vars=_jsonable(merged),
        steps=steps,
    )


def _parse_vars(
    doc: dict[str, Any], overrides: dict[str, str], display: str, err: Callable[[str], PlaybookError]
) -> dict[str, Any]:
    """The playbook's [vars] checked, with the ``--var`` overrides applied."""
    variables = doc.get("vars", {})
    if not isinstance(variables, dict):
        raise err(f"vars: expected a table, got {variables!r}")
    for k, v in variables.items():
        if not _VAR_NAME_RE.match(k):
            raise err(f"vars.{k}: invalid var name")
        if not isinstance(v, (str, int, bool, float)) and not (
            isinstance(v, list) and all(isinstance(i, str) for i in v)
        ):
            raise err(f"vars.{k}: expected a string, number, boolean or list of strings, got {v!r}")
    for k in overrides:
        if k not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise BadInput(f"--var {k}: {display} has no var {k!r} (it defines: {known})")
    merged: dict[str, Any] = dict(variables)
    merged.update(overrides)
    return merged


def _parse_step(
    number: int, raw: Any, ids: set[str], merged: dict[str, Any], err: Callable[[str], PlaybookError]
) -> Step:
    """One [[steps]] table checked and built; ``ids`` collects the step ids seen so far."""
    if not isinstance(raw, dict):
        raise err(f"step {number}: expected a table")
    step_id = raw.get("id")
    label = f"step {number}" + (f" ({step_id})" if isinstance(step_id, str) else "")
    action_name = raw.get("action")
    if not isinstance(action_name, str):
        raise err(f"{label}: action: missing or not a string")
    if action_name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise err(f"{label}: action: unknown action {action_name!r} (known: {known})")
    if step_id is None:
        base_id = action_name.replace(".", "-")
        step_id = base_id
        n = 2
        while step_id in ids:
            step_id = f"{base_id}-{n}"
            n += 1
        label = f"step {number} ({step_id})"
    if not isinstance(step_id, str) or not _STEP_ID_RE.match(step_id):
        raise err(f"{label}: id: expected letters, digits, '.', '_' or '-', got {step_id!r}")
    if step_id in ids:
        raise err(f"{label}: id: duplicate step id {step_id!r}")
    ids.add(step_id)
    on_error = raw.get("on_error", "abort")
    if on_error not in ON_ERROR:
        raise err(f"{label}: on_error: expected \"abort\" or \"continue\", got {on_error!r}")
    raw_params = {k: v for k, v in raw.items() if k not in STEP_KEYS}
    cls = get_action(action_name)
    try:
        resolved = _substitute(raw_params, merged, "params")
        # _substitute prefixes keys with "params." only for nesting; strip it.
        params = build_params(cls.Params, resolved)
    except ParamError as exc:
        key = exc.key.removeprefix("params.")
        raise err(f"{label}: {key}: {exc.reason}") from None
    action = cls(params)
    return Step(
        number=number,
        id=step_id,
        action_name=action_name,
        action=action,
        on_error=on_error,
        params=_jsonable(resolved),
    )
