"""``drift`` journal entries: containment that something undid, and what lockdown did about it.

``lockdown guard`` appends one entry per re-assertion through the journal's
public ``append``, so drift is hash-chained with the rest of the incident.
This module is the one writer and the one reader of that entry type; the
step reader (``incident.read_incident``) ignores it, as it ignores every
phase it does not know.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lockdown.engine.journal import Journal

PHASE = "drift"


@dataclass(frozen=True)
class Drift:
    """One re-assertion.

    ``kind``: address | sysctl | container. ``changed`` says what was found,
    ``did`` what lockdown did. ``event_time`` is when the source says the
    change happened (the Docker event's timestamp, or when the netlink
    notification was read; at a start-up or resync comparison, when the
    comparison ran); ``latency_ms`` runs from there to the moment containment
    held again. ``source`` names who did it as far as the source tells:
    ``{"docker": {"action", "actor", "attributes"}}`` or ``{"netlink":
    {"event", "port"}}``, or ``{"compare": reason}`` for a comparison.
    """

    step: str
    action: str
    kind: str
    changed: str
    did: str
    event_time: str
    latency_ms: float
    source: dict[str, Any] = field(default_factory=dict)
    target: str = ""

    def fields(self) -> dict[str, Any]:
        return asdict(self)


def append_drift(journal: Journal, drift: Drift) -> dict[str, Any]:
    """Journal one re-assertion (durable before this returns)."""
    return journal.append(PHASE, **drift.fields())


def read_drifts(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drift entries of a journal, oldest first, as journaled (``seq`` and ``time`` included)."""
    return [e for e in entries if e.get("phase") == PHASE]
