"""``sysctl.set``: set kernel parameters and put the old values back on restore."""

from __future__ import annotations

from dataclasses import dataclass

from lockdown.actions.base import Action, StepContext, UndoRecord, fail
from lockdown.errors import BadInput
from lockdown.sysctl import read_sysctl, write_sysctl


@dataclass(frozen=True)
class Params:
    values: dict[str, str]


class SysctlSet(Action[Params]):
    """Set kernel parameters; restore puts the previous values back.

    Parameters:
      values: table of sysctl name to value. Names use dots, or slashes when an
        interface name contains a dot.

    Example::

        [[steps]]
        id = "no-forwarding"
        action = "sysctl.set"
        values = { "net.ipv6.conf.all.forwarding" = "0" }
    """

    name = "sysctl.set"
    Params = Params
    requires = ("root",)

    def describe(self) -> str:
        return "set " + ", ".join(f"{k}={v}" for k, v in self.params.values.items())

    def preflight(self) -> None:
        if not self.params.values:
            raise BadInput("values: at least one sysctl is needed")
        for name in self.params.values:
            read_sysctl(name)

    def prepare(self, ctx: StepContext) -> UndoRecord:
        return {"old": {name: read_sysctl(name) for name in self.params.values}}

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        assert undo is not None
        for name, value in self.params.values.items():
            old = undo["old"][name]
            if " ".join(value.split()) == old:
                ctx.note(f"{name} already {old}")
                continue
            write_sysctl(name, value)
            ctx.note(f"{name}: {old} -> {read_sysctl(name)}")

    @classmethod
    def undo(cls, ctx: StepContext, record: UndoRecord) -> None:
        failures = []
        for name, old in record["old"].items():
            try:
                current = read_sysctl(name)
            except BadInput:
                failures.append(f"{name} no longer exists")
                continue
            if current == old:
                ctx.note(f"{name} already {old}")
                continue
            try:
                write_sysctl(name, old)
            except Exception as exc:  # noqa: BLE001 - keep restoring the others
                failures.append(str(exc))
                continue
            ctx.note(f"{name}: {current} -> {old}")
        if failures:
            raise fail("; ".join(failures))
