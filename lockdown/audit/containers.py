"""The containers an audit looks at: what they publish, where they are attached, who they are.

Read through lockdown.dockerapi (inspect and the network list); a
container's id, name, status and compose service come from
``dockerapi.ref_from_inspect`` and its port bindings from
``dockerapi.port_bindings``, the same reading the playbooks' targeting uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lockdown import dockerapi, hostfacts
from lockdown.dockerapi import ContainerRef
from lockdown.errors import BadInput

MAIL_PORTS = {
    25: "smtp",
    465: "submissions",
    587: "submission",
    110: "pop3",
    143: "imap",
    993: "imaps",
    995: "pop3s",
    4190: "managesieve",
}
SMTP_PORTS = frozenset({25, 465, 587})
COMPOSE_PROJECT = "com.docker.compose.project"
MAIL_SERVICES = frozenset({"smtp", "postfix", "mailserver", "mail", "front"})
#: Environment variables of docker-mailserver and Mailu that say "this is a mail container".
MAIL_ENV = ("PERMIT_DOCKER", "SUBNET", "RELAYNETS", "POSTFIX_MYNETWORKS")


@dataclass
class Binding:
    container_port: int
    host_ip: str
    host_port: int

    @property
    def everywhere(self) -> bool:
        return self.host_ip in ("", "0.0.0.0", "::")

    @property
    def covers_ipv6(self) -> bool:
        """Docker listens on IPv6 for this binding: ``::``, empty, or an IPv6 address."""
        return self.host_ip in ("", "::") or hostfacts.is_ipv6(self.host_ip)

    def show(self) -> str:
        host = f"[{self.host_ip}]" if ":" in self.host_ip else (self.host_ip or "(empty)")
        return f"{host}:{self.host_port}->{self.container_port}/tcp"


@dataclass
class NetworkInfo:
    name: str
    id: str
    enable_ipv6: bool
    gateways: list[str]
    container_ip: str
    container_ipv6: str


@dataclass
class MailContainer:
    """A container the audit looks at, with what it publishes and where it is attached."""

    ref: ContainerRef
    env: dict[str, str]
    labels: dict[str, str]
    bindings: list[Binding]
    networks: list[NetworkInfo]
    data: dict[str, Any] = field(default_factory=dict)  # the inspect document (stack recognition)

    @property
    def id(self) -> str:
        return self.ref.id

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def status(self) -> str:
        return self.ref.status

    @property
    def project(self) -> str | None:
        return self.labels.get(COMPOSE_PROJECT)

    @property
    def service(self) -> str | None:
        return self.ref.service

    @property
    def gateways(self) -> list[str]:
        return sorted({g for n in self.networks for g in n.gateways})

    @property
    def mail_bindings(self) -> list[Binding]:
        return [b for b in self.bindings if b.container_port in MAIL_PORTS]

    @property
    def has_ipv6(self) -> bool:
        return any(n.enable_ipv6 and n.container_ipv6 for n in self.networks)

    @property
    def candidate(self) -> bool:
        """Worth a ``postconf`` exec: publishes SMTP, or looks like a mail container by env or service."""
        return (
            any(b.container_port in SMTP_PORTS for b in self.bindings)
            or any(k in self.env for k in MAIL_ENV)
            or (self.service or "") in MAIL_SERVICES
        )


def _inspect_all(names: Sequence[str] | None) -> list[dict[str, Any]]:
    """Inspect documents of ``names`` (resolved as a playbook's ``container``), or of every
    running and paused container."""
    if not names:
        return [
            dockerapi.inspect(i["Id"], (i.get("Names") or [i["Id"]])[0].lstrip("/"))
            for i in dockerapi.list_containers()
        ]
    items: list[dict[str, Any]] = []
    for name in names:  # name, id, "auto", "all", "service:NAME"
        try:
            refs = dockerapi.resolve_containers(name)
        except BadInput as exc:
            raise BadInput(f"--container {name}: {exc.message}", exc.hint) from None
        items.extend(dockerapi.inspect(ref.id, ref.name) for ref in refs if ref.id not in {i["Id"] for i in items})
    return items


def _bindings(data: dict[str, Any]) -> list[Binding]:
    """The TCP port bindings of an inspect document (HostPort 0 when Docker gives none)."""
    out = []
    for cport, host_ip, host_port in dockerapi.port_bindings(data):
        port, _, proto = cport.partition("/")
        if proto in ("", "tcp") and port.isdigit():
            out.append(Binding(int(port), host_ip, int(host_port) if host_port.isdigit() else 0))
    return out


def _networks(data: dict[str, Any], nets: dict[str, dict[str, Any]]) -> list[NetworkInfo]:
    """The container's networks with their gateways: the IPAM's (with the subnet fallback of
    dockerapi.gateways_from_ipam) plus the endpoint's own Gateway/IPv6Gateway."""
    out = []
    for netname, n in ((data.get("NetworkSettings") or {}).get("Networks") or {}).items():
        net = nets.get(n.get("NetworkID") or "", {})
        gws = dockerapi.gateways_from_ipam(net.get("IPAM") or {}) if net else []
        for key in ("Gateway", "IPv6Gateway"):
            if n.get(key) and n[key] not in gws:
                gws.append(n[key])
        out.append(
            NetworkInfo(
                name=netname,
                id=str(n.get("NetworkID") or ""),
                enable_ipv6=bool(net.get("EnableIPv6")),
                gateways=gws,
                container_ip=str(n.get("IPAddress") or ""),
                container_ipv6=str(n.get("GlobalIPv6Address") or ""),
            )
        )
    return out


def load_containers(
    names: Sequence[str] | None = None, networks: list[dict[str, Any]] | None = None
) -> list[MailContainer]:
    """Running and paused containers (only ``names`` when given), with their networks' IPAM gateways
    (``networks``: ``GET /networks`` when the caller already has it)."""
    nets_raw = dockerapi.networks() if networks is None else networks
    nets = {n["Id"]: n for n in nets_raw if n.get("Id")}
    out = []
    for data in _inspect_all(names):
        cfg = data.get("Config") or {}
        env = {}
        for item in cfg.get("Env") or []:
            k, _, v = str(item).partition("=")
            env[k] = v
        out.append(
            MailContainer(
                ref=dockerapi.ref_from_inspect(data),
                env=env,
                labels=dict(cfg.get("Labels") or {}),
                bindings=_bindings(data),
                networks=_networks(data, nets),
                data=data,
            )
        )
    return out
