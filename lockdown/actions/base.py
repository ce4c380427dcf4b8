"""What every action is: typed params, a plan line, prepare/apply/undo.

An action runs in three moves (pyinfra's facts against operations):

``prepare(ctx)``
    Reads the current state and returns the undo record: everything needed to
    put things back, fully JSON-serialisable. Read-only actions return None.
    ``prepare`` changes nothing.
``apply(ctx, undo)``
    Makes the change. The runner has already journaled ``intent`` with the
    undo record, so a crash at any point inside ``apply`` stays restorable.
    An action that discovers more to change (an address that came back) calls
    ``ctx.amend_undo(record)`` before touching it.
``undo(ctx, record)``
    Puts back what the record describes, reading first and changing only what
    differs. Undoing something already undone succeeds with a note.

The two halves live side by side in one class (fail2ban's actionban and
actionunban).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, Union, get_args, get_origin

from lockdown.errors import ActionError
from lockdown.paths import SAFE_NAME_RE
from lockdown.record.store import EvidenceStore, EvidenceWriter, ManifestEntry

UndoRecord = dict[str, Any]


@dataclass
class StepContext:
    """What an action may use while it runs or undoes. Never the terminal."""

    incident_id: str
    incident_dir: Path
    step_id: str
    action: str
    evidence: EvidenceStore
    force: bool = False
    notes: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    on_note: Callable[[str], None] | None = None
    amend: Callable[..., None] | None = None

    def note(self, message: str) -> None:
        """A line for the operator; shown live and kept in the journal."""
        self.notes.append(message)
        if self.on_note is not None:
            self.on_note(message)

    def amend_undo(self, record: UndoRecord, **why: Any) -> None:
        """Journal a fuller undo record before making a further change.

        ``why`` adds fields to the ``intent-update`` line (a decision says what
        it is about to do, e.g. ``deleting=[...]``).
        """
        if self.amend is None:
            raise RuntimeError("amend_undo is only available during apply and decide")
        self.amend(record, **why)

    def open_evidence(self, name: str) -> EvidenceWriter:
        return self.evidence.open(name, step=self.step_id, action=self.action)

    def write_json(self, name: str, obj: Any) -> ManifestEntry:
        return self.evidence.write_json(name, obj, step=self.step_id, action=self.action)

    def write_bytes(self, name: str, data: bytes) -> ManifestEntry:
        return self.evidence.write_bytes(name, data, step=self.step_id, action=self.action)


P = TypeVar("P")


class Action(Generic[P]):
    """Base class. Subclasses set ``name``, ``Params`` and the class flags."""

    name: ClassVar[str]
    Params: ClassVar[type[Any]]
    #: What the action needs before the run starts: "root", "net_admin", "docker".
    requires: ClassVar[tuple[str, ...]] = ()
    #: Decision name when the undo must wait for an operator (e.g. "release-queue"). The
    #: journal's reader, below the actions, knows it from ``record.steps.HELD_UNDO``: an
    #: action takes its value from there (postfix.hold_queue does), and test_layers checks.
    held_undo: ClassVar[str | None] = None
    #: Other decisions a held step offers (e.g. "purge-queue"), carried out by :meth:`decide`
    #: through the engine (``runner.decide``), which locks and journals.
    offers: ClassVar[tuple[str, ...]] = ()
    #: Undoing it reopens a path from outside to the mail server: restore's gate probes the
    #: relay first and keeps the step while the relay accepts (decision ``reopen-anyway``).
    reopens_path: ClassVar[bool] = False
    #: The gate's probe needs this step undone first (a paused container cannot answer).
    #: Undone first only while another step still keeps the path closed.
    probe_needs_undo: ClassVar[bool] = False

    def __init__(self, params: P) -> None:
        self.params = params
        #: Set by the runner from ``--force`` before preflight (overrides safety guards).
        self.force = False

    def describe(self) -> str:
        """One line for the plan."""
        raise NotImplementedError

    def preflight(self) -> None:
        """Checks that need the live system (targets exist, tools available).

        Runs for every step before the first step changes anything. Raise a
        LockdownError to stop the run with nothing changed.
        """

    def prefetch(self) -> None:
        """Start this step's slow read-only queries in the background (optional).

        The runner calls it once the steps at the head of the playbook that
        close the abused path have run, for the following steps up to the
        first one that uses Docker (see ``Run._prefetch``): a query the daemon
        is slow to answer (``docker diff``, ~0.3-0.5 s) then runs while the
        steps before this one do, not after them. What it starts changes
        nothing; the step records its answer in apply (and says in its
        docstring when that answer was asked for).
        """

    def resolved(self) -> dict[str, Any]:
        """Parameters after preflight resolved them (``auto`` -> names), for the journal."""
        return {}

    def prepare(self, ctx: StepContext) -> UndoRecord | None:
        return None

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        raise NotImplementedError

    @classmethod
    def undo(cls, ctx: StepContext, record: UndoRecord) -> None:
        """Put back what ``record`` describes. Notes go through ``ctx.note``."""

    @classmethod
    def decide(cls, ctx: StepContext, record: UndoRecord, decision: str) -> dict[str, Any]:
        """Carry out one of :attr:`offers` on a held step; returns what was done.

        Called by the engine holding the state lock. Before each change, journal
        the amended record with ``ctx.amend_undo(record, ...)`` (write-ahead).
        """
        raise NotImplementedError(f"{cls.name} offers no decision {decision!r}")

    @classmethod
    def held_summary(cls, record: UndoRecord) -> str:
        """Why the undo is held and what each decision does (held actions only)."""
        return "undo held for an operator decision"


# ---------------------------------------------------------------- params


class ParamError(ValueError):
    """A parameter failed validation; ``key`` names it.

    A Params dataclass raises it from ``__post_init__`` (``raise
    ParamError("timeout", "expected 0 to 600 seconds, got 900")``); the
    playbook loader adds the file and step to the message.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class VarString(str):
    """A string that came whole from a ``{var}``; may be coerced to the param's type.

    Values typed in TOML are never coerced: ``interfaces = 42`` is an error,
    while ``--var interfaces=eth1,eth2`` is a list.
    """


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if origin is list:
        (inner,) = get_args(tp)
        plural = {str: "strings", int: "integers", bool: "booleans", float: "numbers"}
        return f"a list of {plural.get(inner, 'values')}"
    if origin is dict:
        return "a table of name = value"
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp) if a is not type(None))
    return str(tp)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against ``tp``; coerce only strings that came from a var."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for arg in args:
            try:
                return coerce(value, arg, key)
            except ParamError as exc:
                errors.append(exc)
        raise ParamError(key, f"expected {type_name(tp)}, got {_show(value)}")
    from_var = isinstance(value, VarString)
    if tp is str:
        if isinstance(value, str):
            return str(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if from_var and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_var and value.lstrip("-").isdigit():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_var:
            try:
                return float(value)
            except ValueError:
                pass
    elif origin is list:
        (inner,) = get_args(tp)
        if from_var:
            value = [VarString(v.strip()) for v in str(value).split(",") if v.strip()]
        if isinstance(value, list):
            return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        _, inner = get_args(tp)
        if isinstance(value, dict):
            return {str(k): coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    else:  # pragma: no cover - a programming error in an action's Params
        raise TypeError(f"unsupported parameter type {tp!r}")
    raise ParamError(key, f"expected {type_name(tp)}, got {_show(value)}")


@dataclass(frozen=True)
class EvidenceFile:
    """The shared piece of Params for actions that write one evidence file named by ``file``.

    The name is checked when the playbook is validated (``playbooks validate``,
    ``--dry-run``), not first when the step writes: a name such as ``../../x``,
    ``a\\nb.json`` or ``{other}`` used to pass validation and fail mid-run (issue 13).
    """

    file: str = "evidence.json"

    def __post_init__(self) -> None:
        parts = self.file.split("/")
        if len(self.file) > 255 or not all(p not in (".", "..") and SAFE_NAME_RE.match(p) for p in parts):
            raise ParamError(
                "file",
                f"expected a relative file name of letters, digits and ._@+=- (like host.json), got {self.file!r}",
            )


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(params_cls: type[Any]) -> dict[str, Any]:
    """The Params class's resolved annotations, once per class.

    ``typing.get_type_hints`` evaluates every string annotation again on each
    call: ~0.7 ms per step, and serve builds a fresh playbook for every alert.
    """
    hints = _HINTS.get(params_cls)
    if hints is None:
        hints = _HINTS[params_cls] = typing.get_type_hints(params_cls)
    return hints


def build_params(params_cls: type[Any], raw: dict[str, Any]) -> Any:
    """Turn a step's raw table into the action's Params dataclass, or raise ParamError."""
    hints = _hints(params_cls)
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ParamError(unknown[0], f"unknown parameter (this action takes: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = coerce(raw[name], hints[name], name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamError(name, "missing required parameter")
    try:
        return params_cls(**values)
    except ParamError:
        raise
    except ValueError as exc:  # a Params check that did not name its key
        raise ParamError("params", str(exc)) from exc


def params_doc(params_cls: type[Any]) -> list[tuple[str, str, str]]:
    """(name, type, default) of each parameter, for ``playbooks show`` and the docs test."""
    hints = _hints(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        if f.default is not dataclasses.MISSING:
            default = _show(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _show(f.default_factory())
        else:
            default = "required"
        out.append((f.name, type_name(hints[f.name]), default))
    return out


def fail(message: str, hint: str | None = None) -> ActionError:
    return ActionError(message, hint)
