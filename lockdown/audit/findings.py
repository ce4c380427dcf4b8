"""What an audit reports: findings with a severity, and the result that decides the exit code.

Finding ids are an interface (``--json``, docs/audit.md): keep them stable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "low", "medium", "high", "critical")
#: Severities that make ``exposed`` true and the command exit 1.
EXPOSED_SEVERITIES = frozenset({"high", "critical"})


@dataclass(frozen=True)
class Finding:
    """One thing the audit saw. ``fix`` quotes the configuration line to change."""

    id: str
    severity: str
    title: str
    evidence: str
    fix: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "evidence": self.evidence,
            "fix": self.fix,
        }


@dataclass
class AuditResult:
    """All findings, most severe first. ``as_dict()`` is the ``--json`` document."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def exposed(self) -> bool:
        """True when any finding is high or critical (the command then exits 1)."""
        return any(f.severity in EXPOSED_SEVERITIES for f in self.findings)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def sort(self) -> None:
        self.findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.id, f.title))

    def ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def as_dict(self) -> dict[str, Any]:
        return {"findings": [f.as_dict() for f in self.findings], "exposed": self.exposed}


def merge(result: AuditResult, findings: Iterable[Finding]) -> AuditResult:
    """Add the probe's findings to the audit's, keeping the most-severe-first order."""
    for f in findings:
        result.add(f)
    result.sort()
    return result
