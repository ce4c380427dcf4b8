"""Postfix's trust as the audit evaluates it: ``postconf`` in the container and the matchlist rule."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from lockdown import dockerapi
from lockdown.audit.containers import MailContainer
from lockdown.errors import LockdownError


def parse_matchlist(value: str) -> list[str]:
    """Postfix list syntax: whitespace and commas separate entries."""
    return [t for t in value.replace(",", " ").split() if t]


def _entry_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    text = entry.lstrip("!")
    if text.startswith("[") and "]" in text:
        inner, _, rest = text[1:].partition("]")
        text = inner + rest
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def trusted_by(entries: Sequence[str], address: str) -> tuple[str | None, list[str]]:
    """Postfix's first-match rule: the entry that admits ``address`` (None if none or a ``!`` entry
    excludes it first), and the entries that could not be evaluated here (tables, files)."""
    ip = ipaddress.ip_address(address)
    unknown = []
    for entry in entries:
        net = _entry_network(entry)
        if net is None:
            unknown.append(entry)
            continue
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        hit = (net.version == ip.version and ip in net) or (mapped is not None and net.version == 4 and mapped in net)
        if not hit and isinstance(ip, ipaddress.IPv4Address) and net.version == 6:
            hit = ipaddress.IPv6Address(f"::ffff:{ip}") in net
        if hit:
            return (None if entry.startswith("!") else entry), unknown
    return None, unknown


def postconf(c: MailContainer, param: str) -> str | None:
    """``postconf -xh PARAM`` in the container (``-h`` when -x is unknown); None without postconf."""
    for flags in ("-xh", "-h"):
        try:
            code, out = dockerapi.exec_output(c.id, c.name, ["postconf", flags, param], limit=1 << 20)
        except LockdownError:
            return None
        text = out.decode("utf-8", "replace").strip()
        if code == 0:
            return text
        if code in (126, 127) or "executable file not found" in text or "no such file" in text.lower():
            return None
    return None
