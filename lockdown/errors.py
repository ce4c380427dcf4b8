"""Typed errors that carry their exit code.

The core raises these; only ``lockdown.cli`` turns them into a message and an
exit status (borg ``helpers/errors.py``, httpie ``status.py``).
"""

from __future__ import annotations

import shlex
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes documented in the README. Scripts depend on them."""

    OK = 0
    FAILED = 1  # a step failed, or verification found a problem
    BAD_INPUT = 2  # bad playbook, flag, var, incident id, config
    BUSY = 3  # another run or restore holds the state-dir lock
    PRIVILEGES = 4  # missing root, CAP_NET_ADMIN or Docker socket access
    UNAVAILABLE = 5  # a dependency is unavailable (Docker daemon, netlink)
    PARTIAL_RESTORE = 6  # restore finished but some undo failed (held steps exit 0)
    GATED = 7  # restore kept steps that reopen a path: the relay probe accepted, or could not tell
    INTERNAL = 70  # a bug: traceback written to a file
    INTERRUPTED = 130  # SIGINT/SIGTERM stopped a run after the current step


@dataclass(frozen=True)
class Setting:
    """A value the operator can give a playbook parameter, inside a hint.

    The core does not know where the operator typed the command, so a hint names the setting
    and the caller that knows picks the syntax: ``container = "NAME"`` in a playbook or a
    config file, ``--var container=NAME`` on the command line (issue 12: a TOML hint after
    ``lockdown run`` sent the operator to the wrong place).
    """

    key: str
    value: str | tuple[str, ...]

    def render(self, cli_vars: Collection[str] | None = None) -> str:
        """TOML, or ``--var KEY=VALUE`` when ``key`` is one of the ``cli_vars`` of a command-line run."""
        if cli_vars is not None and self.key in cli_vars:
            value = ",".join(self.value) if isinstance(self.value, tuple) else self.value
            return f"--var {shlex.quote(f'{self.key}={value}')}"
        if isinstance(self.value, tuple):
            return f"{self.key} = [{', '.join(_toml_str(v) for v in self.value)}]"
        return f"{self.key} = {_toml_str(self.value)}"


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: A hint: plain text, or text and settings to render in the syntax of where the command was typed.
Hint = str | Sequence[str | Setting]


class LockdownError(Exception):
    """Base of every expected failure.

    ``message`` says what happened and why; ``hint`` says what to do next. A hint holding
    ``Setting`` parts renders them as TOML unless ``cli_vars`` is set (the vars a command-line
    ``lockdown run`` can set with ``--var``).
    """

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: Hint | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.cli_vars: Collection[str] | None = None

    @property
    def hint(self) -> str | None:
        if self._hint is None or isinstance(self._hint, str):
            return self._hint
        return "".join(p if isinstance(p, str) else p.render(self.cli_vars) for p in self._hint)

    @hint.setter
    def hint(self, value: Hint | None) -> None:
        self._hint = value

    def __str__(self) -> str:
        return self.message


class BadInput(LockdownError):
    exit_code = ExitCode.BAD_INPUT


class PlaybookError(BadInput):
    """A playbook failed to parse or validate. The message names file, step and key."""


class IncidentNotFound(BadInput):
    pass


class Busy(LockdownError):
    exit_code = ExitCode.BUSY


class PrivilegeError(LockdownError):
    exit_code = ExitCode.PRIVILEGES


class Unavailable(LockdownError):
    exit_code = ExitCode.UNAVAILABLE


class ActionError(LockdownError):
    """Raised by an action when its change could not be made.

    The runner journals it as ``failed``; the playbook's ``on_error`` decides
    whether the run goes on.
    """

    exit_code = ExitCode.FAILED


class IntegrityError(LockdownError):
    """Evidence, manifest or journal does not match its hashes."""

    exit_code = ExitCode.FAILED


class PartialRestore(LockdownError):
    exit_code = ExitCode.PARTIAL_RESTORE


class ReopenRefused(LockdownError):
    """Restore's gate kept the steps that would reopen the path: the relay is (or may be) open."""

    exit_code = ExitCode.GATED
