"""Restore's gate: ask the relay itself before reopening a path from outside.

``restore`` undoes the containment, not the misconfiguration, so a plain
restore of the postmortems' incident reopens the open relay. Before it undoes
a step whose action ``reopens_path`` (``nft.block``, ``ipv6.strip``,
``docker.pause``), the gate probes the relay through the trusted path: from
the host to the mail container's bridge address on port 25, so Postfix sees
the Docker gateway as the client, exactly as the bots did behind
docker-proxy. EHLO, MAIL FROM, RCPT TO an outside RFC 2606 domain, RSET,
QUIT: never DATA, so nothing is ever sent.

Verdicts: ``closed`` (RCPT TO refused with 5xx: the steps are undone),
``open`` (RCPT TO accepted) and ``undecided`` (no answer, no banner, a 4xx,
no container to ask). ``open`` and ``undecided`` keep the steps in place:
held for the decision ``reopen-anyway``. What to fix comes from the
matching ``lockdown audit`` findings (their ``fix`` texts).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lockdown import dockerapi
from lockdown.errors import LockdownError
from lockdown.record.steps import StepState

GATE_PORT = 25
GATE_HELO = "lockdown-restore.example"
GATE_FROM = "lockdown-gate@example.org"
#: An outside domain (RFC 2606): a relay that accepts it would relay anywhere.
GATE_RCPT = "lockdown-gate@example.com"
GATE_TIMEOUT = 5.0
#: Audit findings whose fix closes the relay path the bots used.
RELAY_FINDINGS = (
    "postfix-trusts-gateway",
    "dms-permit-docker",
    "mailu-subnet-gateway",
    "mailu-relaynets-gateway",
    "mailu-xclient-gateway",
    "ipv6-relay-path",
    "mail-port-all-addresses",
)
GENERIC_FIX = (
    "make Postfix refuse relaying for the Docker gateway: main.cf `mynetworks = 127.0.0.0/8 [::1]/128` "
    "(docker-mailserver PERMIT_DOCKER=none; Mailu: publish the front on one IPv4 address), then "
    "`postfix reload` (README: After the incident)"
)


@dataclass
class GateProbe:
    """What the gate saw: the verdict, why, each exchange and what to fix."""

    verdict: str  # open | closed | undecided
    reason: str
    targets: list[dict[str, Any]] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    @property
    def keeps(self) -> bool:
        """Open or undecided: the steps that reopen the path stay in place."""
        return self.verdict != "closed"

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "targets": self.targets, "fixes": self.fixes}


def containers_of(steps: Iterable[StepState]) -> list[tuple[str, str]]:
    """(id, name) of every container the incident's steps resolved, in plan order, once each."""
    seen: dict[str, str] = {}
    for s in steps:
        ids, names = s.params.get("container_ids"), s.params.get("containers")
        if not isinstance(ids, list) or not isinstance(names, list) or len(ids) != len(names):
            continue
        for cid, name in zip(ids, names, strict=True):
            if isinstance(cid, str) and isinstance(name, str):
                seen.setdefault(cid, name)
    return list(seen.items())


def bridge_address(data: dict[str, Any]) -> str | None:
    """The container's first IPv4 address on a Docker network (sorted by network name)."""
    networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
    for _, info in sorted(networks.items()):
        address = (info or {}).get("IPAddress")
        try:
            if address and ipaddress.ip_address(address).version == 4:
                return str(address)
        except ValueError:
            continue
    return None


def _ask(cid: str, name: str) -> dict[str, Any]:
    """One container: its bridge address, the exchange, and this target's verdict."""
    target: dict[str, Any] = {"container": name, "address": None, "port": GATE_PORT, "transcript": []}
    data = dockerapi.inspect_or_none(cid)
    if data is None:
        return {**target, "verdict": "undecided", "error": "the container no longer exists"}
    status = (data.get("State") or {}).get("Status")
    address = bridge_address(data)
    if status != "running" or address is None:
        why = f"the container is {status}" if status != "running" else "the container has no IPv4 bridge address"
        return {**target, "verdict": "undecided", "error": why}
    from lockdown.audit.probe import smtp_exchange  # see audit_fixes

    transcript, code, error = smtp_exchange(
        address, GATE_PORT, GATE_RCPT, helo=GATE_HELO, sender=GATE_FROM, timeout=GATE_TIMEOUT
    )
    verdict = "undecided"
    if code is not None and 200 <= code < 300:
        verdict = "open"
    elif code is not None and 500 <= code < 600:
        verdict = "closed"
    elif error is None:
        error = f"RCPT TO answered {code}" if code is not None else "the exchange stopped before RCPT TO"
    return {**target, "address": address, "transcript": transcript, "rcpt_code": code, "verdict": verdict,
            "error": error}


def probe_relay(containers: list[tuple[str, str]]) -> GateProbe:
    """Probe each container; open if any accepts, undecided if any cannot tell, else closed."""
    if not containers:
        return GateProbe("undecided", "the incident records no mail container to probe", [], [GENERIC_FIX])
    targets = []
    for cid, name in containers:
        try:
            targets.append(_ask(cid, name))
        except LockdownError as exc:  # Docker unreachable: the gate cannot tell
            targets.append({"container": name, "port": GATE_PORT, "transcript": [], "verdict": "undecided",
                            "error": exc.message})
    opened = [t for t in targets if t["verdict"] == "open"]
    unsure = [t for t in targets if t["verdict"] == "undecided"]
    if opened:
        t = opened[0]
        reason = (f"the relay is open: {t['container']} at {t['address']}:{GATE_PORT} accepted "
                  f"RCPT TO:<{GATE_RCPT}> from the Docker gateway")
        verdict = "open"
    elif unsure:
        t = unsure[0]
        reason = f"the probe could not decide: {t['container']}: {t['error']}"
        verdict = "undecided"
    else:
        reason = f"the relay refused RCPT TO:<{GATE_RCPT}> from the Docker gateway"
        return GateProbe("closed", reason, targets, [])
    return GateProbe(verdict, reason, targets, audit_fixes([name for _, name in containers]))


def audit_fixes(names: list[str]) -> list[str]:
    """The ``fix`` texts of the audit findings about the relay path of these containers."""
    # audit (its checks, the SMTP probe, the log reader) is ~75 ms of imports that only a
    # restore with a gate needs: `lockdown run` and serve's alert path start without them.
    from lockdown.audit.checks import AuditOptions, Auditor

    try:
        result = Auditor(AuditOptions(containers=names, container_logs=False, firewall=False)).run()
    except LockdownError:
        return [GENERIC_FIX]
    fixes = []
    for f in result.findings:
        if f.id in RELAY_FINDINGS and f"{f.id}: {f.fix}" not in fixes:
            fixes.append(f"{f.id}: {f.fix}")
    return fixes or [GENERIC_FIX]


def cannot_probe(paused: list[str]) -> GateProbe:
    """Only pausing keeps the path closed: unpausing to probe would reopen it."""
    return GateProbe(
        "undecided",
        f"nothing but {', '.join(paused)} keeps the path closed, and the probe needs the container running",
        [],
        [GENERIC_FIX],
    )
