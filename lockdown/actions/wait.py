"""``wait``: pause the playbook for a few seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass

from lockdown.actions.base import Action, StepContext, UndoRecord
from lockdown.errors import BadInput


@dataclass(frozen=True)
class Params:
    seconds: float


class Wait(Action[Params]):
    """Wait a fixed time, e.g. to let connections drain before a snapshot.

    Parameters:
      seconds: how long to wait (0 to 3600).

    Example::

        [[steps]]
        action = "wait"
        seconds = 2
    """

    name = "wait"
    Params = Params

    def describe(self) -> str:
        return f"wait {self.params.seconds:g} s"

    def preflight(self) -> None:
        if not 0 <= self.params.seconds <= 3600:
            raise BadInput(f"seconds: expected 0 to 3600, got {self.params.seconds:g}")

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        time.sleep(self.params.seconds)
