"""What an incident's own evidence tells the report, read from files collected at containment:

* gateways: ``evidence/docker/<container>/inspect.json`` (``docker.inspect``);
* the stack and Mailu's hand-off address: ``evidence/docker/stack.json`` (``docker.inspect`` with
  ``container = "stack"``) and front's ``inspect.json``;
* local domains: ``postconf.txt`` files under ``evidence/`` (``postconf`` output, ``name = value``);
* held spam: ``evidence/queue/<container>/postqueue.jsonl`` (``postfix.hold_queue``).

The machine doing the analysis is not the one that was contained: its Docker is never asked
about an incident. Every file here is untrusted input: JSON through ``jsonsafe``, lines bounded.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockdown import jsonsafe
from lockdown.errors import BadInput
from lockdown.mail.parser import MAX_LINE, default_gateways, domain_of

SAMPLE = 50
#: postconf parameters whose domains this server delivers (or relays) itself.
LOCAL_DOMAIN_PARAMS = ("mydestination", "virtual_mailbox_domains", "virtual_alias_domains", "relay_domains")


def _evidence_files(incident_dir: Path, suffix: str) -> Iterator[Path]:
    """Regular files under ``evidence/`` whose name ends with ``suffix``, in a stable order, no symlinks."""
    base = incident_dir / "evidence"
    if not base.is_dir() or base.is_symlink():
        return
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if fn.endswith(suffix) and not p.is_symlink() and p.is_file():
                yield p


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of ``path``, each cut to ``MAX_LINE`` bytes."""
    with open(path, "rb") as fh:
        for line in fh:
            yield line[:MAX_LINE]


# --------------------------------------------------------------------------- gateways


def gateways_from_evidence(incident_dir: Path) -> list[str]:
    """Gateways in ``evidence/docker/*/inspect.json`` (NetworkSettings.Networks.*.Gateway / IPv6Gateway)."""
    found: list[str] = []
    for p in _evidence_files(incident_dir, "inspect.json"):
        try:
            doc = jsonsafe.loads(p.read_bytes(), what=str(p))
        except (OSError, jsonsafe.JSONError):
            continue
        for item in doc if isinstance(doc, list) else [doc]:
            found.extend(_inspect_gateways(item))
    return sorted(set(found))


def _inspect_gateways(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return []
    settings = doc.get("NetworkSettings")
    nets = settings.get("Networks") if isinstance(settings, dict) else None
    out: list[str] = []
    for net in nets.values() if isinstance(nets, dict) else ():
        if isinstance(net, dict):
            out += [v for v in (net.get("Gateway"), net.get("IPv6Gateway")) if isinstance(v, str) and v]
    ipam = doc.get("IPAM")  # a network inspect (docker network inspect) carries IPAM instead
    if isinstance(ipam, dict):
        from lockdown.dockerapi import gateways_from_ipam

        out.extend(gateways_from_ipam(ipam))
    return out


def docker_gateways() -> list[str] | None:
    """Gateways of this host's Docker networks, or None when Docker is not reachable."""
    from lockdown import dockerapi
    from lockdown.errors import LockdownError

    reachable, nets = dockerapi.networks_via_socket()
    if not reachable:
        return None
    try:
        return dockerapi.network_gateways(nets)
    except (LockdownError, ImportError):
        return None


def check_gateways(explicit: list[str]) -> list[str]:
    """``--gateway`` values, each an address or a network, or BadInput naming the bad one."""
    for g in explicit:
        try:
            ipaddress.ip_network(g.removeprefix("IPv6:"), strict=False)
        except ValueError:
            raise BadInput(f"--gateway {g!r}: not an IP address or network") from None
    return list(explicit)


def choose_gateways(explicit: list[str] | None, incident_dir: Path | None = None) -> tuple[list[str], str]:
    """The gateway list and where it came from: ``option``, ``incident`` (its docker.inspect
    evidence), ``docker`` (this host's networks, for ``--log`` only) or ``default-pools``."""
    if explicit:
        return check_gateways(explicit), "option"
    if incident_dir is not None:
        found = gateways_from_evidence(incident_dir)
        return (found, "incident") if found else (default_gateways(), "default-pools")
    live = docker_gateways()
    if live:
        return live, "docker"
    return default_gateways(), "default-pools"


# --------------------------------------------------------------------------- the stack

#: Compose services whose container hands clients to Postfix over a connection of its own, per stack.
HANDOFF_SERVICES = {"mailu": ("front",)}


def stack_from_evidence(incident_dir: Path) -> dict[str, Any] | None:
    """What ``evidence/docker/stack.json`` says (stack, title, network, gateway, inbound), or None."""
    path = incident_dir / "evidence" / "docker" / "stack.json"
    if path.is_symlink() or not path.is_file():
        return None
    try:
        doc = jsonsafe.loads(path.read_bytes(), what=str(path))
    except (OSError, jsonsafe.JSONError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("stack"), str):
        return None
    inbound = doc.get("inbound")
    return {
        "stack": doc["stack"][:100],
        "title": _text(doc.get("title")),
        "gateway": _text(doc.get("gateway")),
        "inbound": [n[:200] for n in inbound if isinstance(n, str)][:50] if isinstance(inbound, list) else [],
    }


def handoff_addresses(incident_dir: Path, stack: dict[str, Any] | None) -> list[str]:
    """The addresses of the stack's hand-off containers (Mailu's ``front``) in their ``inspect.json``.

    Postfix in Mailu's ``smtp`` logs the address nginx hands it with XCLIENT (the gateway, for a
    client docker-proxy brought in) or, without XCLIENT, front's own address: either is the path.
    """
    services = HANDOFF_SERVICES.get(stack["stack"], ()) if stack else ()
    found: list[str] = []
    for p in _evidence_files(incident_dir, "inspect.json") if services else ():
        try:
            doc = jsonsafe.loads(p.read_bytes(), what=str(p))
        except (OSError, jsonsafe.JSONError):
            continue
        for item in doc if isinstance(doc, list) else [doc]:
            if _compose_service(item) in services:
                found.extend(_container_addresses(item))
    return sorted(set(found))


def _compose_service(doc: Any) -> str | None:
    config = doc.get("Config") if isinstance(doc, dict) else None
    labels = config.get("Labels") if isinstance(config, dict) else None
    service = labels.get("com.docker.compose.service") if isinstance(labels, dict) else None
    return service if isinstance(service, str) else None


def _container_addresses(doc: dict[str, Any]) -> list[str]:
    settings = doc.get("NetworkSettings")
    nets = settings.get("Networks") if isinstance(settings, dict) else None
    out: list[str] = []
    for net in nets.values() if isinstance(nets, dict) else ():
        if isinstance(net, dict):
            for key in ("IPAddress", "GlobalIPv6Address"):
                value = net.get(key)
                if isinstance(value, str) and value and _is_ip(value):
                    out.append(value)
    return out


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- local domains

_PARAM = re.compile(r"^([a-z_][a-z0-9_]*) ?= ?(.*)$")
_VAR = re.compile(r"\$(?:\{([a-z0-9_]+)\}|\(([a-z0-9_]+)\)|([a-z0-9_]+))")


def local_domains_from_evidence(incident_dir: Path) -> set[str] | None:
    """The domains in ``mydestination``, ``virtual_mailbox_domains``, ``virtual_alias_domains`` and
    ``relay_domains`` of the ``postconf.txt`` files under ``evidence/``; None when there is none.

    ``$name`` is expanded from the same file. A table lookup (``hash:/etc/...``,
    ``proxy:mysql:...``) or a file name cannot be read from the evidence, so the list would be
    incomplete: then None, and the report learns local domains from deliveries, because a
    partial list would make the domains in the table (on mailcow, Mailu and docker-mailserver,
    the server's own) outside. None too when no file names a domain.
    """
    found: set[str] = set()
    for p in _evidence_files(incident_dir, "postconf.txt"):
        params: dict[str, str] = {}
        for raw in _lines(p):
            m = _PARAM.match(raw.decode("utf-8", "replace").strip())
            if m:
                params[m.group(1)] = m.group(2)
        for key in LOCAL_DOMAIN_PARAMS:
            value = _expand(params.get(key, ""), params)
            if _unreadable(value):
                return None
            found.update(_domains(value))
    return found or None


def _unreadable(value: str) -> bool:
    """True when a domain list names a table or a file: its domains are not in the evidence."""
    return any(":" in item or "/" in item for item in re.split(r"[\s,]+", value) if item)


def _expand(value: str, params: dict[str, str], depth: int = 0) -> str:
    if depth > 5 or "$" not in value:
        return value
    return _VAR.sub(lambda m: _expand(params.get(m.group(1) or m.group(2) or m.group(3), ""), params, depth + 1), value)


def _domains(value: str) -> set[str]:
    out: set[str] = set()
    for item in re.split(r"[\s,]+", value.lower()):
        item = item.rstrip(".")
        readable = item and ":" not in item and "/" not in item and "$" not in item
        if readable and ("." in item or item == "localhost"):
            out.add(item)
    return out


# --------------------------------------------------------------------------- held queue


@dataclass
class HeldQueue:
    """The mail ``postfix.hold_queue`` found queued at containment and put on hold.

    Postfix logs no recipient for mail it never delivered: only the queue listing names them.
    """

    messages: int = 0
    recipients: int = 0
    outside_recipients: int = 0
    by_recipient_domain: Counter[str] = field(default_factory=Counter)
    sample: list[dict[str, Any]] = field(default_factory=list)
    unreadable_lines: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "recipients": self.recipients,
            "outside_recipients": self.outside_recipients,
            "by_recipient_domain": dict(self.by_recipient_domain),
            "sample": self.sample,
            "unreadable_lines": self.unreadable_lines,
        }


def held_queue(incident_dir: Path, local_domains: set[str] | None, learned_local: set[str]) -> HeldQueue | None:
    """What ``evidence/queue/<container>/postqueue.jsonl`` (``postqueue -j``) lists; None without it.

    A recipient is outside when its domain is not a local one (``local_domains``; without
    them, the domains the logs showed delivered locally, ``learned_local``).
    """
    held: HeldQueue | None = None
    for p in _evidence_files(incident_dir, "postqueue.jsonl"):
        if p.parent.parent.name != "queue":
            continue
        held = held or HeldQueue()
        for raw in _lines(p):
            if raw.strip():
                _add_held(held, raw, p.parent.name, local_domains, learned_local)
    return held


def _add_held(held: HeldQueue, raw: bytes, container: str, local: set[str] | None, learned: set[str]) -> None:
    try:
        item = jsonsafe.loads(raw, what="postqueue -j line")
    except jsonsafe.JSONError:
        item = None
    rcpts = item.get("recipients") if isinstance(item, dict) else None
    if not isinstance(item, dict) or not isinstance(rcpts, list):
        held.unreadable_lines += 1
        return
    held.messages += 1
    listed: list[dict[str, Any]] = []
    for r in rcpts:
        address = r.get("address") if isinstance(r, dict) else None
        if not isinstance(address, str):
            continue
        dom = domain_of(address)
        outside = bool(dom) and dom not in (local if local is not None else learned)
        held.recipients += 1
        if outside:
            held.outside_recipients += 1
            held.by_recipient_domain[dom] += 1
        listed.append({"address": address, "outside": outside})
    if len(held.sample) < SAMPLE:
        held.sample.append({
            "container": container,
            "queue_id": _text(item.get("queue_id")),
            "queue_name": _text(item.get("queue_name")),
            "sender": _text(item.get("sender")),
            "arrival_time": item.get("arrival_time") if isinstance(item.get("arrival_time"), int) else None,
            "recipients": listed[:100],
        })  # fmt: skip


def _text(value: Any) -> str | None:
    return value[:500] if isinstance(value, str) else None
