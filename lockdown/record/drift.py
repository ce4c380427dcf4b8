"""``drift`` journal entries: containment that something undid, and what lockdown did about it.

``lockdown guard`` appends one entry per re-assertion through the journal's
public ``append``, so drift is hash-chained with the rest of the incident.
This module is the one writer and the one reader of that entry type: the
journal's reader (``record/steps.py``) folds drift into an incident's
timeline (``case.json``) through :func:`timeline_record`, and ``status`` and
``/metrics`` read it through :func:`read_drifts`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lockdown.record.journal import Journal

PHASE = "drift"
#: What a drift entry can be about.
KINDS = ("address", "sysctl", "container")


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


#: Text fields of a timeline record are cut to this many characters: case.json stays bounded
#: (and verify, which recomputes it, too) whatever a hand-made journal holds.
TIMELINE_TEXT = 256
_TIMELINE_FIELDS = ("step", "action", "kind", "target", "changed", "did", "event_time")


def timeline_record(entry: dict[str, Any]) -> dict[str, Any]:
    """What ``case.json``'s timeline keeps of one drift entry: when, which step, what changed,
    what lockdown did, and how long containment was undone. Untrusted input (a journal can be
    hand-made and still chain): non-strings become None, long strings are cut."""
    out: dict[str, Any] = {"time": _text(entry.get("time"))}
    for key in _TIMELINE_FIELDS:
        out[key] = _text(entry.get(key))
    latency = entry.get("latency_ms")
    ok = isinstance(latency, (int, float)) and not isinstance(latency, bool) and abs(latency) < 1e12
    out["latency_ms"] = float(latency) if ok and latency is not None else None
    return out


def _text(value: object) -> str | None:
    return value[:TIMELINE_TEXT] if isinstance(value, str) else None
