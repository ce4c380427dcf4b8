"""Small guards on the core's contract that need no namespace: no test hooks in production
code, no way to skip the privilege checks, and a verify report that never calls an
unchecked bundle verified."""

from __future__ import annotations

import inspect
from pathlib import Path

from lockdown.engine.runner import Run
from lockdown.evidence.verify import Check, VerifyReport
from tests.conftest import REPO


def test_production_code_reads_no_test_hook() -> None:
    """Faults are injected from the test side (tests/crashlab.py), never through the code under test."""
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sorted((REPO / "lockdown").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "LOCKDOWN_TEST" in line or "CRASH_AFTER" in line
    ]
    assert offenders == []


def test_a_run_cannot_skip_its_privilege_checks() -> None:
    assert "skip_preflight" not in inspect.signature(Run).parameters


def test_not_checked_is_not_a_pass() -> None:
    checks = [Check("sidecar", True, "ok"), Check("case", None, "not checked: the journal is not intact")]
    report = VerifyReport(Path("b.tar.gz"), checks=checks)
    assert report.ok is False
    assert report.failure == "not checked: the journal is not intact"
    assert report.as_dict()["ok"] is False
    waived = VerifyReport(Path("b.tar.gz"), checks=[Check("sidecar", None, "not checked (--no-sidecar)")],
                          waived=frozenset({"sidecar"}))  # fmt: skip
    assert (waived.ok, waived.failure) == (True, None)
