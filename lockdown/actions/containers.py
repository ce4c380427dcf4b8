"""Container targeting shared by every Docker action: params, resolution, state records.

Not an action (nothing here is registered): the one place where the
``container``/``label`` parameters are declared and checked, where they are
resolved against the live engine (once, in preflight), and where a
container's state is read for an undo record. Actions compose their Params
from :class:`ContainerParams` and derive from :class:`ContainerAction`, so no
action imports another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from lockdown import dockerapi
from lockdown.actions.base import Action, ParamError

TARGET_HELP = (
    'a name or id, "auto" (the one running container publishing port 25), '
    '"all" (every such container) or "service:NAME" (Compose service label, e.g. Mailu "service:smtp")'
)


def check_target(container: str, label: str) -> None:
    """Validate ``container`` and ``label``; raises ParamError naming the bad one."""
    if not container.strip():
        raise ParamError("container", f"empty; expected {TARGET_HELP}")
    if label and (label.startswith("=") or any(c.isspace() for c in label)):
        raise ParamError("label", f"expected KEY or KEY=VALUE without spaces, got {label!r}")


def target_text(container: str, label: str) -> str:
    """How a target reads in a plan line."""
    text = {
        "auto": "the container publishing port 25",
        "all": "every container publishing port 25",
    }.get(container, f"container {container}")
    return text + (f" (label {label})" if label else "")


@dataclass(frozen=True)
class ContainerParams:
    """The ``container``/``label`` parameters; an action's Params derive from this.

    A subclass that validates more fields calls ``super().__post_init__()``.
    """

    container: str = "auto"
    label: str = ""

    def __post_init__(self) -> None:
        check_target(self.container, self.label)

    def target_text(self) -> str:
        return target_text(self.container, self.label)


CP = TypeVar("CP", bound=ContainerParams)


class ContainerAction(Action[CP]):
    """Base of the actions that act on the containers their ``ContainerParams`` name.

    The targets are resolved once, in preflight (before anything changes),
    and the same containers are used by prepare and apply and recorded in the
    journal (``resolved()``): a container started between preflight and apply
    is never picked up by ``auto``.
    """

    requires: ClassVar[tuple[str, ...]] = ("docker",)

    def __init__(self, params: CP) -> None:
        super().__init__(params)
        self._targets: list[dockerapi.ContainerRef] | None = None

    def preflight(self) -> None:
        self.resolve()

    def resolve(self) -> list[dockerapi.ContainerRef]:
        """Resolve once (preflight); later calls return the same containers."""
        if self._targets is None:
            self._targets = dockerapi.resolve_containers(self.params.container, label=self.params.label)
        return self._targets

    def resolved(self) -> dict[str, Any]:
        if not self._targets:
            return {}
        return {"containers": [t.name for t in self._targets], "container_ids": [t.id for t in self._targets]}


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
