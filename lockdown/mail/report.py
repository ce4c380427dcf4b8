"""``lockdown report``: who relayed what, through which path, and when it stopped.

The report is made of three parts, each in its own module:

* ``sources``: where the log text comes from (files, ``.gz``, ``.tar`` members, ``docker logs``,
  an incident's collected logs);
* ``analysis``: one pass over the sources through ``parser.Correlator``, into a ``Report``
  whose ``as_dict()`` is the ``--json`` interface;
* ``render``: the self-contained HTML page.

This module joins them for an incident (``incident_report``), with what the incident's own
evidence says (``evidence``: gateways, local domains, held spam), and keeps the names other
parts of lockdown import (``audit``, ``evidence.export``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lockdown.mail.analysis import SAMPLE, Report, analyse
from lockdown.mail.evidence import (
    choose_gateways,
    handoff_addresses,
    held_queue,
    local_domains_from_evidence,
    stack_from_evidence,
)
from lockdown.mail.render import render_html, write_html
from lockdown.mail.sources import ContainerLogSource, LogSource, Source, evidence_sources, sources_from_paths

__all__ = [
    "SAMPLE",
    "ContainerLogSource",
    "LogSource",
    "Report",
    "Source",
    "analyse",
    "choose_gateways",
    "containment_time",
    "evidence_sources",
    "incident_report",
    "render_html",
    "sources_from_paths",
    "write_html",
]

CONTAINMENT_ACTIONS = ("docker.pause", "ipv6.strip", "docker.stop")


def containment_time(steps: Iterable[Any]) -> datetime | None:
    """The ``applied`` time of the first containment step (docker.pause, ipv6.strip, docker.stop)."""
    times: list[datetime] = []
    for s in steps:
        if s.action in CONTAINMENT_ACTIONS and s.ended and s.state in ("applied", "undone", "undoing", "undo-failed"):
            try:
                t = datetime.fromisoformat(s.ended)
            except ValueError:
                continue
            times.append(t if t.tzinfo else t.replace(tzinfo=UTC))
    return min(times) if times else None


def incident_report(
    root: Path,
    incident_id: str,
    *,
    gateways: list[str] | None = None,
    local_domains: set[str] | None = None,
    year: int | None = None,
) -> Report:
    """The report for an incident: its logs, and from its own evidence its gateways (docker.inspect),
    its stack and hand-off addresses (docker.inspect's stack.json), its local domains (postconf)
    and the spam held in its queue (postfix.hold_queue)."""
    from lockdown.record.incident import read_incident

    view = read_incident(root, incident_id)
    gw, gw_source = choose_gateways(gateways, view.path)
    if local_domains is None:
        local_domains = local_domains_from_evidence(view.path)
    if year is None:
        created = view.meta.get("created")
        if isinstance(created, str) and len(created) >= 4 and created[:4].isdigit():
            year = int(created[:4])
    stack = stack_from_evidence(view.path)
    report = analyse(
        evidence_sources(view.path),
        gateways=gw,
        gateway_source=gw_source,
        local_domains=local_domains,
        containment_time=containment_time(view.steps),
        year=year,
        handoff=handoff_addresses(view.path, stack),
    )
    report.stack = stack
    held = held_queue(view.path, local_domains, report.learned_local)
    report.held_queue = held.as_dict() if held is not None else None
    report.incident = {
        "incident_id": view.id,
        "playbook": view.meta.get("playbook", {}).get("name"),
        "created": view.meta.get("created"),
        "run_status": view.run_status,
        "containment_active": view.containment_active,
        "steps": [
            {
                "number": s.number,
                "id": s.id,
                "action": s.action,
                "state": s.state,
                "started": s.started,
                "ended": s.ended,
                "describe": s.describe,
            }
            for s in view.steps
        ],
    }
    return report
