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
    """One thing the audit saw. ``fix`` quotes the configuration line to change.

    When the container belongs to a recognised stack (lockdown.stacks), ``stack``
    names it and ``fix_file``/``fix_setting``/``check`` say, in that stack's
    terms, which file, which line or setting, and which command shows it fixed.
    They appear in ``--json`` only when set (documents without them stay valid).
    """

    id: str
    severity: str
    title: str
    evidence: str
    fix: str
    stack: str = ""
    fix_file: str = ""
    fix_setting: str = ""
    check: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def as_dict(self) -> dict[str, str]:
        out = {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "evidence": self.evidence,
            "fix": self.fix,
        }
        for key in ("stack", "fix_file", "fix_setting", "check"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


@dataclass
class AuditResult:
    """All findings, most severe first. ``as_dict()`` is the ``--json`` document.

    ``stacks``: the mail stacks recognised among the audited containers
    (``Stack.as_dict()``); None when recognition did not run.
    """

    findings: list[Finding] = field(default_factory=list)
    stacks: list[dict[str, Any]] | None = None

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
        out: dict[str, Any] = {"findings": [f.as_dict() for f in self.findings], "exposed": self.exposed}
        if self.stacks is not None:
            out["stacks"] = self.stacks
        return out


def merge(result: AuditResult, findings: Iterable[Finding]) -> AuditResult:
    """Add the probe's findings to the audit's, keeping the most-severe-first order."""
    for f in findings:
        result.add(f)
    result.sort()
    return result
