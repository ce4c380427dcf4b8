"""``docker.stop``: stop the mail container where pause is not available; restore starts it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lockdown import dockerapi
from lockdown.actions.base import ParamError, StepContext, UndoRecord
from lockdown.actions.containers import ContainerAction, ContainerParams, leave_alone, record_targets, to_put_back


@dataclass(frozen=True)
class Params(ContainerParams):
    timeout: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.timeout <= 600:
            raise ParamError("timeout", f"expected 0 to 600 seconds, got {self.timeout}")


class DockerStop(ContainerAction[Params]):
    """Stop the mail container(s); restore starts only what lockdown stopped.

    For engines where pause is not available (rootless without cgroup
    freezer, some VMs). Stopping loses the container's processes and
    in-memory state and its stdout log keeps only what was written; prefer
    ``docker.pause``. A paused container is left paused (already contained),
    a stopped one is left stopped. With restart policy "always", a restart
    of dockerd starts the container again; the step says so.

    Parameters:
      {ContainerParams}
      timeout: seconds between SIGTERM and SIGKILL (default 10).

    Example::

        [[steps]]
        id = "stop"
        action = "docker.stop"
        container = "service:smtp"
        timeout = 20
    """

    name = "docker.stop"
    #: Starting reopens Postfix to the outside; the gate starts it first while another step keeps the path closed.
    reopens_path = True
    probe_needs_undo = True
    Params = Params

    def describe(self) -> str:
        return f"stop {self.params.target_text()} (SIGKILL after {self.params.timeout} s)"

    def prepare(self, ctx: StepContext) -> UndoRecord:
        return record_targets(self.resolve(), "stopped_by_lockdown")

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        assert undo is not None
        results: dict[str, Any] = {}
        for entry in undo["containers"]:
            name, cid = entry["name"], entry["id"]
            if not entry["stopped_by_lockdown"]:
                why = "is paused (already contained)" if entry["status"] == "paused" else f"is {entry['status']}"
                results[name] = leave_alone(ctx, entry, why)
                continue
            dockerapi.stop(cid, name, self.params.timeout)
            state = dockerapi.inspect(cid, name)["State"]
            results[name] = {"before": entry["status"], "after": state["Status"], "exit_code": state.get("ExitCode")}
            policy = entry["restart_policy"].get("Name") or "no"
            ctx.note(f"{name}: running -> {state['Status']} (exit code {state.get('ExitCode')})")
            if policy == "always":
                ctx.note(
                    f"{name} has restart policy always: dockerd starts it again when the daemon restarts "
                    f"(`docker update --restart=unless-stopped {name}` prevents that)"
                )
            if entry["ports"]:
                ctx.note(f"{name}'s published ports ({', '.join(entry['ports'])}) close while it is stopped")
        ctx.result["containers"] = results

    @classmethod
    def undo(cls, ctx: StepContext, record: UndoRecord) -> None:
        for entry, status in to_put_back(ctx, record, "stopped_by_lockdown", "start"):
            name, cid = entry["name"], entry["id"]
            if status in ("running", "paused", "restarting"):
                ctx.note(f"{name} is already {status}: nothing to start")
                continue
            dockerapi.start(cid, name)
            ctx.note(f"{name}: {status} -> {dockerapi.inspect(cid, name)['State']['Status']}")
