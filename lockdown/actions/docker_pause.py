"""``docker.pause``: freeze the mail container; restore unpauses it only if lockdown paused it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lockdown import dockerapi
from lockdown.actions.base import Action, StepContext, UndoRecord

TARGET_HELP = (
    'a name or id, "auto" (the one running container publishing port 25), '
    '"all" (every such container) or "service:NAME" (Compose service label, e.g. Mailu "service:smtp")'
)


def check_target(container: str, label: str) -> None:
    """Validate the ``container`` / ``label`` parameters shared by the Docker actions."""
    if not container.strip():
        raise ValueError("container", f"empty; expected {TARGET_HELP}")
    if label and (label.startswith("=") or any(c.isspace() for c in label)):
        raise ValueError("label", f"expected KEY or KEY=VALUE without spaces, got {label!r}")


def target_text(container: str, label: str) -> str:
    """How a target reads in a plan line."""
    text = {
        "auto": "the container publishing port 25",
        "all": "every container publishing port 25",
    }.get(container, f"container {container}")
    return text + (f" (label {label})" if label else "")


class ContainerTargets:
    """Resolution of ``container``/``label`` in preflight, remembered for the journal."""

    params: Any

    def resolve(self) -> list[dockerapi.ContainerRef]:
        """Resolve once (preflight); later calls return the same containers."""
        found: list[dockerapi.ContainerRef] | None = getattr(self, "_targets", None)
        if found is None:
            found = dockerapi.resolve_containers(self.params.container, label=self.params.label)
            self._targets = found
        return found

    def resolved(self) -> dict[str, Any]:
        found: list[dockerapi.ContainerRef] | None = getattr(self, "_targets", None)
        if not found:
            return {}
        return {"containers": [t.name for t in found], "container_ids": [t.id for t in found]}


def published_note(ports: list[str] | tuple[str, ...]) -> str:
    return (
        f"docker-proxy on the host keeps accepting TCP on {', '.join(ports)}: clients now hang "
        "instead of being refused; stripping IPv6 (ipv6.strip) is what closes the path"
    )


def state_record(ref: dockerapi.ContainerRef) -> dict[str, Any]:
    """Id, name, status and restart policy of a container, read now."""
    data = dockerapi.inspect(ref.id, ref.name)
    current = dockerapi.ref_from_inspect(data)
    return {
        "id": current.id,
        "name": current.name,
        "status": current.status,
        "restart_policy": (data.get("HostConfig") or {}).get("RestartPolicy") or {},
        "ports": list(current.ports),
    }


@dataclass(frozen=True)
class Params:
    container: str = "auto"
    label: str = ""

    def __post_init__(self) -> None:
        check_target(self.container, self.label)


class DockerPause(ContainerTargets, Action[Params]):
    """Pause the mail container(s); restore unpauses only what lockdown paused.

    The state before (running or paused, restart policy) is journaled. A
    container that was already paused stays paused on restore; one that is
    not running is left alone. Pausing freezes Postfix, but docker-proxy on
    the host keeps accepting TCP on the published ports (clients hang): the
    IPv6 strip is what closes the path. Run ``postfix.hold_queue`` first:
    Docker refuses exec in a paused container (HTTP 409).

    Parameters:
      container: a name or id, "auto" (the one running container publishing
        port 25; none or several stop the run), "all" (every such container)
        or "service:NAME" (Compose label com.docker.compose.service; Mailu:
        "service:front" and "service:smtp").
      label: only consider containers with this label (KEY or KEY=VALUE) for
        "auto", "all" and "service:", e.g. "com.docker.compose.project=mailu".

    Example::

        [[steps]]
        id = "pause"
        action = "docker.pause"
        container = "mailserver"
    """

    name = "docker.pause"
    Params = Params
    requires = ("docker",)

    def describe(self) -> str:
        return "pause " + target_text(self.params.container, self.params.label)

    def preflight(self) -> None:
        self.resolve()

    def prepare(self, ctx: StepContext) -> UndoRecord:
        entries = []
        for ref in self.resolve():
            entry = state_record(ref)
            entry["paused_by_lockdown"] = entry["status"] == "running"
            entries.append(entry)
        return {"containers": entries}

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        assert undo is not None
        results: dict[str, Any] = {}
        for entry in undo["containers"]:
            name, cid = entry["name"], entry["id"]
            if not entry["paused_by_lockdown"]:
                why = "already paused" if entry["status"] == "paused" else f"is {entry['status']}, not running"
                ctx.note(f"{name} {why}: left as it is, and restore will leave it so")
                results[name] = {"before": entry["status"], "after": entry["status"], "changed": False}
                continue
            dockerapi.pause(cid, name)
            after = dockerapi.inspect(cid, name)["State"]["Status"]
            results[name] = {"before": entry["status"], "after": after, "changed": True}
            policy = entry["restart_policy"].get("Name") or "no"
            ctx.note(f"{name}: running -> {after} (restart policy {policy})")
            if entry["ports"]:
                ctx.note(published_note(entry["ports"]))
        ctx.result["containers"] = results

    @classmethod
    def undo(cls, ctx: StepContext, record: UndoRecord) -> None:
        for entry in record["containers"]:
            name, cid = entry["name"], entry["id"]
            if not entry.get("paused_by_lockdown"):
                ctx.note(f"{name} was {entry['status']} before the run: left as it is")
                continue
            data = dockerapi.inspect_or_none(cid)
            if data is None:
                ctx.note(f"{name} ({cid[:12]}) no longer exists: nothing to unpause")
                continue
            status = data["State"]["Status"]
            if status != "paused":
                ctx.note(f"{name} is already {status}: nothing to unpause")
                continue
            dockerapi.unpause(cid, name)
            # `lockdown guard` journals a recreated container's id in place of the vanished one
            was = f" (recreated while contained; replaced {entry['recreated_from'][:12]})" if (
                entry.get("recreated_from")) else ""
            ctx.note(f"{name}: paused -> {dockerapi.inspect(cid, name)['State']['Status']}{was}")
