"""Container targeting shared by every Docker action: params, resolution, state records.

Not an action (nothing here is registered): the one place where the
``container``/``label`` parameters are declared and checked, where they are
resolved against the live engine (once, in preflight), and where a
container's state is read for an undo record. Actions compose their Params
from :class:`ContainerParams` and derive from :class:`ContainerAction`, so no
action imports another.

The documentation of those parameters lives here too (``ContainerParams.DOC``):
a Docker action's docstring names them with one ``{ContainerParams}`` line in
its ``Parameters:`` block, and ``ContainerAction`` puts the text there when the
class is created, so ``__doc__`` (what tests/test_docs.py and the docs read)
shows every parameter while the text is written once.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from lockdown import dockerapi, stacks
from lockdown.actions.base import Action, ParamError, StepContext, UndoRecord
from lockdown.errors import BadInput

#: The message of an empty ``container`` (pinned by tests/test_docker_actions.py); "stack",
#: used by the shipped relay-incident, is described in docs/docker.md and docs/stacks.md.
TARGET_HELP = (
    'a name or id, "auto" (the one running container publishing port 25), '
    '"all" (every such container) or "service:NAME" (Compose service label, e.g. Mailu "service:smtp")'
)
ROLE_TEXT = {
    "postfix": "the container running Postfix",
    "inbound": "the containers taking SMTP from outside",
    "logs": "the containers whose log holds the mail log",
}


def check_target(container: str, label: str, role: str = "postfix", project: str = "") -> None:
    """Validate ``container``, ``label``, ``role`` and ``project``; raises ParamError naming the bad one."""
    if not container.strip():
        raise ParamError("container", f"empty; expected {TARGET_HELP}")
    if label and (label.startswith("=") or any(c.isspace() for c in label)):
        raise ParamError("label", f"expected KEY or KEY=VALUE without spaces, got {label!r}")
    if role not in stacks.ROLES:
        raise ParamError("role", f"expected one of {', '.join(stacks.ROLES)}, got {role!r}")
    if project and (any(c.isspace() or c in "=," for c in project) or len(project) > 255):
        raise ParamError("project", f"expected a Compose project name, got {project!r}")


def target_text(container: str, label: str, role: str = "postfix", project: str = "") -> str:
    """How a target reads in a plan line."""
    text = {
        "auto": "the container publishing port 25",
        "all": "every container publishing port 25",
        "stack": f"{ROLE_TEXT[role]} of the recognised mail stack" if role in ROLE_TEXT else "the mail stack",
    }.get(container, f"container {container}")
    narrow = [f"label {label}"] if label else []
    narrow += [f"Compose project {project}"] if project else []
    return text + (f" ({', '.join(narrow)})" if narrow else "")


@dataclass(frozen=True)
class ContainerParams:
    """The ``container``/``label`` parameters; an action's Params derive from this.

    A subclass that validates more fields calls ``super().__post_init__()``.
    """

    container: str = "auto"
    label: str = ""
    role: str = "postfix"
    project: str = ""

    #: The ``Parameters:`` text of each field, shown in every Docker action's docstring
    #: (see :func:`expand_params_doc`); written here only.
    DOC: ClassVar[dict[str, str]] = {
        "container": 'a name or id, "auto" (the one running container publishing port 25; none or '
        'several stop the run), "all" (every such container), "service:NAME" (Compose label '
        'com.docker.compose.service; Mailu: "service:front" and "service:smtp") or "stack" (the '
        "recognised mail stack's containers of the given role).",
        "label": 'only consider containers with this label (KEY or KEY=VALUE) for "auto", "all" and '
        '"service:", e.g. "com.docker.compose.project=mailu".',
        "role": 'with container = "stack" (the recognised mail stack, see lockdown/stacks.py): "postfix" '
        '(the container running Postfix, the default), "inbound" (the containers taking SMTP from '
        'outside; Mailu: front and smtp) or "logs" (the containers whose log holds the mail log).',
        "project": "only consider containers of this Compose project (label com.docker.compose.project), "
        "for every kind of target.",
    }

    def __post_init__(self) -> None:
        check_target(self.container, self.label, self.role, self.project)

    def target_text(self) -> str:
        return target_text(self.container, self.label, self.role, self.project)

    def labels(self) -> list[str]:
        """The label filters: ``label`` and the Compose project."""
        return [x for x in (self.label, f"{stacks.COMPOSE_PROJECT}={self.project}" if self.project else "") if x]


CP = TypeVar("CP", bound=ContainerParams)

#: The line of a Docker action's ``Parameters:`` block that stands for the ContainerParams fields.
PARAMS_DOC = "{ContainerParams}"


def expand_params_doc(doc: str, owner: str, container_note: str = "") -> str:
    """``doc`` with its ``{ContainerParams}`` line replaced by the text of every ContainerParams field.

    The replacement keeps the line's indentation (continuations two deeper)
    and appends ``container_note`` (what this action adds, e.g. "none") to
    the ``container`` text. A ``Parameters:`` block without the line is a
    programming error (TypeError naming ``owner``): the shared text would be
    missing or written a second time.
    """
    lines = doc.splitlines()
    at = [i for i, line in enumerate(lines) if line.strip() == PARAMS_DOC]
    if len(at) != 1:
        raise TypeError(f"{owner}: its Parameters: block needs exactly one {PARAMS_DOC} line, found {len(at)}")
    indent = lines[at[0]][: len(lines[at[0]]) - len(lines[at[0]].lstrip())]
    text: list[str] = []
    for f in dataclasses.fields(ContainerParams):
        about = ContainerParams.DOC[f.name]
        if f.name == "container" and container_note:
            about = f"{about} {container_note}"
        text += textwrap.wrap(f"{f.name}: {about}", 78, initial_indent=indent, subsequent_indent=indent + "  ")
    return "\n".join([*lines[: at[0]], *text, *lines[at[0] + 1 :]])


class ContainerAction(Action[CP]):
    """Base of the actions that act on the containers their ``ContainerParams`` name.

    The targets are resolved once, in preflight (before anything changes),
    and the same containers are used by prepare and apply and recorded in the
    journal (``resolved()``): a container started between preflight and apply
    is never picked up by ``auto``.
    """

    requires: ClassVar[tuple[str, ...]] = ("docker",)
    #: What this action adds to the shared ``container`` text in its docstring (e.g. "none").
    container_note: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Expand the ``{ContainerParams}`` line of the subclass's docstring (see the module doc)."""
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and "Parameters:" in cls.__doc__:
            cls.__doc__ = expand_params_doc(cls.__doc__, cls.__name__, cls.container_note)

    def __init__(self, params: CP) -> None:
        super().__init__(params)
        self._targets: list[dockerapi.ContainerRef] | None = None
        self.stack: stacks.Stack | None = None  # set when container = "stack"

    def preflight(self) -> None:
        self.resolve()

    def resolve(self) -> list[dockerapi.ContainerRef]:
        """Resolve once (preflight); later calls return the same containers."""
        if self._targets is None:
            if self.params.container.strip() == "stack":
                self._targets = self._resolve_stack()
            else:
                self._targets = dockerapi.resolve_containers(self.params.container, label=self.params.labels())
        return self._targets

    def _resolve_stack(self) -> list[dockerapi.ContainerRef]:
        """``container = "stack"``: recognise the one mail stack, take its containers of ``role``."""
        labels = self.params.labels()
        self.stack = stacks.choose(stacks.detect(labels), dockerapi.label_text(labels))
        targets = self.stack.targets(self.params.role)
        if not targets:
            raise BadInput(
                f'container = "stack": {self.stack.label} has no {ROLE_TEXT[self.params.role]} among its '
                f"running containers ({', '.join(m.name for m in self.stack.members)})",
                "name the container: --var container=NAME",
            )
        return targets

    def resolved(self) -> dict[str, Any]:
        if not self._targets:
            return {}
        out: dict[str, Any] = {
            "containers": [t.name for t in self._targets],
            "container_ids": [t.id for t in self._targets],
        }
        if self.stack is not None:
            out["stack"] = f"{self.stack.label}, {self.params.role}: {', '.join(t.name for t in self._targets)}"
            out["why"] = self.stack.why()
            if self.stack.network is not None:
                out["network"] = self.stack.network.name
                out["gateway"] = self.stack.gateway
        return out


def record_targets(targets: list[dockerapi.ContainerRef], changes_key: str) -> UndoRecord:
    """The undo record of an action that changes running containers only (pause, stop).

    Each target's ``state_record``, with ``changes_key`` (e.g. ``paused_by_lockdown``)
    true when it is running now: the ones apply changes and undo puts back.
    """
    entries = []
    for ref in targets:
        entry = state_record(ref)
        entry[changes_key] = entry["status"] == "running"
        entries.append(entry)
    return {"containers": entries}


def leave_alone(ctx: StepContext, entry: dict[str, Any], why: str) -> dict[str, Any]:
    """Note that a target not running is left as it is (by apply and by restore); its result entry."""
    ctx.note(f"{entry['name']} {why}: left as it is, and restore will leave it so")
    return {"before": entry["status"], "after": entry["status"], "changed": False}


def to_put_back(
    ctx: StepContext, record: UndoRecord, changes_key: str, verb: str
) -> Iterator[tuple[dict[str, Any], str]]:
    """The entries of ``record_targets``' record that the undo must put back, each with its status now.

    Notes the others: not changed by the run (``changes_key`` false), or gone
    since (nothing to ``verb``); undoing those is a no-op, not an error.
    """
    for entry in record["containers"]:
        name, cid = entry["name"], entry["id"]
        if not entry.get(changes_key):
            ctx.note(f"{name} was {entry['status']} before the run: left as it is")
            continue
        data = dockerapi.inspect_or_none(cid)
        if data is None:
            ctx.note(f"{name} ({cid[:12]}) no longer exists: nothing to {verb}")
            continue
        yield entry, data["State"]["Status"]


def state_record(ref: dockerapi.ContainerRef) -> dict[str, Any]:
    """Id, name, status, restart policy and published ports of a container, read now."""
    data = dockerapi.inspect(ref.id, ref.name)
    current = dockerapi.ref_from_inspect(data)
    return {
        "id": current.id,
        "name": current.name,
        "status": current.status,
        "restart_policy": (data.get("HostConfig") or {}).get("RestartPolicy") or {},
        "ports": list(current.ports),
    }
