"""``docker.pause``: freeze the mail container; restore unpauses it only if lockdown paused it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lockdown import dockerapi
from lockdown.actions.base import StepContext, UndoRecord
from lockdown.actions.containers import ContainerAction, ContainerParams, leave_alone, record_targets, to_put_back


def published_note(ports: list[str] | tuple[str, ...]) -> str:
    return (
        f"docker-proxy on the host keeps accepting TCP on {', '.join(ports)}: clients now hang "
        "instead of being refused; stripping IPv6 (ipv6.strip) is what closes the path"
    )


@dataclass(frozen=True)
class Params(ContainerParams):
    pass


class DockerPause(ContainerAction[Params]):
    """Pause the mail container(s); restore unpauses only what lockdown paused.

    The state before (running or paused, restart policy) is journaled. A
    container that was already paused stays paused on restore; one that is
    not running is left alone. Pausing freezes Postfix, but docker-proxy on
    the host keeps accepting TCP on the published ports (clients hang): the
    IPv6 strip is what closes the path. Run ``postfix.hold_queue`` first:
    Docker refuses exec in a paused container (HTTP 409).

    Parameters:
      {ContainerParams}

    Example::

        [[steps]]
        id = "pause"
        action = "docker.pause"
        container = "mailserver"
    """

    name = "docker.pause"
    #: Unpausing reopens Postfix to the outside; the gate unpauses first while another step keeps the path closed.
    reopens_path = True
    probe_needs_undo = True
    Params = Params

    def describe(self) -> str:
        return "pause " + self.params.target_text()

    def prepare(self, ctx: StepContext) -> UndoRecord:
        return record_targets(self.resolve(), "paused_by_lockdown")

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        assert undo is not None
        results: dict[str, Any] = {}
        for entry in undo["containers"]:
            name, cid = entry["name"], entry["id"]
            if not entry["paused_by_lockdown"]:
                why = "already paused" if entry["status"] == "paused" else f"is {entry['status']}, not running"
                results[name] = leave_alone(ctx, entry, why)
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
        for entry, status in to_put_back(ctx, record, "paused_by_lockdown", "unpause"):
            name, cid = entry["name"], entry["id"]
            if status != "paused":
                ctx.note(f"{name} is already {status}: nothing to unpause")
                continue
            dockerapi.unpause(cid, name)
            # `lockdown guard` journals a recreated container's id in place of the vanished one
            was = f" (recreated while contained; replaced {entry['recreated_from'][:12]})" if (
                entry.get("recreated_from")) else ""
            ctx.note(f"{name}: paused -> {dockerapi.inspect(cid, name)['State']['Status']}{was}")
