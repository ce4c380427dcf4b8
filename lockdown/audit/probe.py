"""``lockdown audit --probe``: the definitive test, asked of the server itself.

EHLO, MAIL FROM and RCPT TO an outside domain over the host's own global
IPv6 addresses, then RSET and QUIT: never DATA, so no mail is ever accepted.
It only ever connects to addresses configured on this host, checked when the
targets are chosen and again right before connecting.
"""

from __future__ import annotations

import ipaddress
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass

from lockdown import hostfacts
from lockdown.audit import facts
from lockdown.audit.containers import load_containers
from lockdown.audit.findings import Finding
from lockdown.errors import BadInput

PROBE_FROM = "lockdown-probe@example.org"
PROBE_RCPT = "lockdown-probe@example.net"
PROBE_HELO = "lockdown-audit.example"


@dataclass(frozen=True)
class ProbeTarget:
    address: str
    port: int
    container: str


@dataclass
class ProbeReply:
    target: ProbeTarget
    transcript: list[str]
    rcpt_code: int | None
    error: str | None = None

    @property
    def open(self) -> bool:
        return self.rcpt_code is not None and 200 <= self.rcpt_code < 300


def probe_targets(
    addresses: Sequence[str] | None = None,
    ports: Sequence[int] | None = None,
    containers: Sequence[str] | None = None,
) -> list[ProbeTarget]:
    """(address, port) pairs to probe: the host's own global IPv6 addresses x every host port that
    publishes container port 25 over IPv6. ``addresses`` narrows the addresses (each must be the
    host's own: BadInput otherwise); ``ports`` replaces the published ports."""
    own = {a.address for a in facts.host_ipv6_addresses()}
    if addresses:
        chosen = []
        for text in addresses:
            try:
                ip = ipaddress.ip_address(text.strip("[]"))
            except ValueError:
                raise BadInput(f"--address {text}: not an IP address") from None
            if ip.version != 6:
                raise BadInput(f"--address {text}: the probe tests the IPv6 path; give an IPv6 address")
            if str(ip) not in own or not facts.is_host_address(str(ip)):
                raise BadInput(
                    f"--address {ip} is not configured on this host: the probe only connects to the host's "
                    "own global IPv6 addresses",
                    f"choose one of: {', '.join(sorted(own)) or 'none (the host has no global IPv6 address)'}",
                )
            chosen.append(str(ip))
    else:
        chosen = sorted(own)
    if ports:
        for p in ports:
            if not 1 <= p <= 65535:
                raise BadInput(f"--port {p}: out of range")
        pairs = [(p, "(--port)") for p in ports]
    else:
        pairs = []
        for c in load_containers(containers):
            for b in c.bindings:
                if b.container_port == 25 and b.covers_ipv6 and (b.host_ip in ("", "::") or b.host_ip in chosen):
                    pairs.append((b.host_port, c.name))
    targets = []
    for addr in chosen:
        for port, name in sorted(set(pairs)):
            targets.append(ProbeTarget(addr, port, name))
    return targets


def smtp_exchange(
    address: str, port: int, rcpt: str, *, helo: str = PROBE_HELO, sender: str = PROBE_FROM, timeout: float = 5.0
) -> tuple[list[str], int | None, str | None]:
    """EHLO, MAIL FROM, RCPT TO ``rcpt``, then RSET and QUIT; never DATA, so nothing is ever sent.

    Returns the transcript, the RCPT TO reply code (None if not reached) and
    what went wrong (None when the exchange completed). The caller chooses
    the address: the audit only its host's own, restore's gate the mail
    container's bridge address.
    """
    transcript: list[str] = []
    code: int | None = None
    try:
        with smtplib.SMTP(timeout=timeout) as s:
            c, msg = s.connect(address, port)
            transcript.append(f"<- {c} {msg.decode(errors='replace')}")
            if c != 220:
                return transcript, None, f"no 220 banner (got {c})"
            c, msg = s.ehlo(helo)
            transcript.append(f"EHLO {helo} -> {c}")
            c, msg = s.mail(sender)
            transcript.append(f"MAIL FROM:<{sender}> -> {c} {msg.decode(errors='replace')}")
            if c == 250:
                code, msg = s.rcpt(rcpt)
                transcript.append(f"RCPT TO:<{rcpt}> -> {code} {msg.decode(errors='replace')}")
            c, _ = s.rset()
            transcript.append(f"RSET -> {c}")
            c, _ = s.docmd("QUIT")
            transcript.append(f"QUIT -> {c}")
            s.close()
    except (OSError, smtplib.SMTPException) as exc:
        return transcript, code, f"{type(exc).__name__}: {exc}"
    return transcript, code, None


def smtp_probe(target: ProbeTarget, rcpt: str = PROBE_RCPT, timeout: float = 5.0) -> ProbeReply:
    """EHLO, MAIL FROM, RCPT TO an outside domain, then RSET and QUIT. Never DATA."""
    if not facts.is_host_address(target.address):  # checked again right before connecting
        raise BadInput(f"{target.address} is not configured on this host; refusing to probe it")
    transcript, code, error = smtp_exchange(target.address, target.port, rcpt, timeout=timeout)
    return ProbeReply(target, transcript, code, error)


def probe(
    addresses: Sequence[str] | None = None,
    ports: Sequence[int] | None = None,
    containers: Sequence[str] | None = None,
    *,
    rcpt: str = PROBE_RCPT,
    timeout: float = 5.0,
) -> list[Finding]:
    """The definitive test, as findings: ``probe-open-relay`` (critical) per target that accepted
    the outside recipient, ``probe-closed`` or ``probe-error`` (info) otherwise."""
    if "@" not in rcpt or rcpt.count("@") != 1 or any(ch in rcpt for ch in "<>\r\n "):
        raise BadInput(f"--rcpt {rcpt!r}: give one plain address in an outside domain")
    targets = probe_targets(addresses, ports, containers)
    if not targets:
        why = "no container publishes port 25 on an IPv6 address of this host"
        if not facts.host_ipv6_addresses():
            off = hostfacts.ipv6_disabled()
            why = "the host has no global IPv6 address" + (f" (IPv6 is disabled: {off})" if off else "")
        return [Finding("probe-no-target", "info", "nothing to probe", why, "nothing to do")]
    out = []
    for t in targets:
        r = smtp_probe(t, rcpt, timeout)
        where = f"[{t.address}]:{t.port} ({t.container})"
        steps = "; ".join(r.transcript)
        if r.open:
            out.append(
                Finding(
                    "probe-open-relay",
                    "critical",
                    f"open relay over IPv6 at {where}",
                    f"{steps}. The server accepted a recipient in an outside domain from an unauthenticated "
                    "IPv6 client (no DATA was sent).",
                    "now: `lockdown run relay-incident`; then mynetworks without the Docker gateway "
                    "(main.cf `mynetworks = 127.0.0.0/8 [::1]/128`) and publish on `ADDR:25:25` or set "
                    '"userland-proxy": false',
                )
            )
        elif r.error is not None:
            out.append(
                Finding(
                    "probe-error",
                    "info",
                    f"probe of {where} did not complete",
                    f"{steps}; {r.error}",
                    "check that the mail server answers on that port",
                )
            )
        else:
            out.append(Finding("probe-closed", "info", f"{where} refused to relay", steps, "nothing to do"))
    return out
