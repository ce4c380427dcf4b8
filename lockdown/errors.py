"""Typed errors that carry their exit code.

The core raises these; only ``lockdown.cli`` turns them into a message and an
exit status (borg ``helpers/errors.py``, httpie ``status.py``).
"""

from __future__ import annotations

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


class LockdownError(Exception):
    """Base of every expected failure.

    ``message`` says what happened and why; ``hint`` says what to do next.
    """

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

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
