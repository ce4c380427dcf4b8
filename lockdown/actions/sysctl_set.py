"""``sysctl.set``: set kernel parameters and put the old values back on restore."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lockdown.actions.base import Action, StepContext, UndoRecord, fail
from lockdown.errors import BadInput, PrivilegeError

PROC_SYS = Path("/proc/sys")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/@+-]*$")


def sysctl_path(name: str) -> Path:
    """``net.ipv6.conf.lkd-a.accept_ra`` -> /proc/sys/net/ipv6/conf/lkd-a/accept_ra.

    As in sysctl(8), a name with a slash is taken as a path, so interface
    names with dots (``eth0.100``) can be written ``net/ipv6/conf/eth0.100/accept_ra``.
    """
    if not _NAME_RE.match(name) or ".." in name:
        raise BadInput(f"invalid sysctl name {name!r}")
    rel = name if "/" in name else name.replace(".", "/")
    return PROC_SYS / rel


def read_sysctl(name: str) -> str:
    """The current value, whitespace-normalised. Raises BadInput if there is no such key."""
    path = sysctl_path(name)
    try:
        return " ".join(path.read_text().split())
    except FileNotFoundError:
        raise BadInput(f"no such sysctl {name!r} ({path} does not exist)") from None


def write_sysctl(name: str, value: str) -> None:
    path = sysctl_path(name)
    try:
        path.write_text(value + "\n")
    except PermissionError:
        raise PrivilegeError(f"cannot write sysctl {name}: permission denied", "run as root") from None
    except FileNotFoundError:
        raise fail(f"sysctl {name} disappeared ({path})") from None
    except OSError as exc:
        raise fail(f"cannot set sysctl {name} to {value!r}: {exc.strerror}") from None


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
