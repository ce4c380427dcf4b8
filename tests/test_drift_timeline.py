"""Drift entries in the timeline: the journal's one reader keeps them bounded, whatever a journal holds.

A journal can be hand-made and still chain; ``verify`` recomputes the
timeline from it, so what the reader keeps of each drift entry must be
bounded in number and size and typed, never trusted.
"""

from __future__ import annotations

from lockdown.evidence.manifest import timeline_of
from lockdown.record.drift import TIMELINE_TEXT
from lockdown.record.steps import MAX_TIMELINE_DRIFTS


def test_a_timeline_without_drift_has_no_drift_key() -> None:
    assert "drift" not in timeline_of([{"phase": "run-start", "time": "t", "plan": []}]).as_dict()


def test_drift_records_are_typed_cut_and_capped() -> None:
    hostile = {
        "phase": "drift", "time": "2026-11-30T22:00:00Z", "step": ["not", "a", "string"], "kind": "address",
        "changed": "x" * 100_000, "did": None, "latency_ms": float("nan"), "target": 7,
    }
    timeline = timeline_of([hostile] * (MAX_TIMELINE_DRIFTS + 5)).as_dict()
    assert timeline["drift"]["count"] == MAX_TIMELINE_DRIFTS + 5
    assert len(timeline["drift"]["entries"]) == MAX_TIMELINE_DRIFTS
    assert timeline["drift"]["entries"][0] == {
        "time": "2026-11-30T22:00:00Z", "event_time": None, "step": None, "action": None, "kind": "address",
        "target": None, "changed": "x" * TIMELINE_TEXT, "did": None, "latency_ms": None,
    }
