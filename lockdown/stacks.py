"""Which mail stack runs here: docker-mailserver, Mailu, mailcow, or a plain Postfix container.

A helper below actions/ and audit/ (it imports only dockerapi, errors and the
standard library). The three stacks in the postmortems' family differ in where
the relay happens, which containers take SMTP from outside, where the logs
are and which setting trusts the Docker gateway; this module reads that from
what Docker says, and says why (``Stack.reasons``), so that ``--dry-run`` and
``audit`` can explain a choice instead of asking the operator to trust it.

Evidence, strongest first (each match is one reason):

* the image: ``mailcow/...`` (ghcr.io/mailcow/postfix, mailcow/postfix),
  ``docker-mailserver`` (ghcr.io/docker-mailserver/docker-mailserver,
  mailserver/docker-mailserver, tvial/docker-mailserver), ``mailu/...``
  (ghcr.io/mailu/nginx, ghcr.io/mailu/postfix);
* the Compose service label: mailcow's ``*-mailcow`` services
  (``postfix-mailcow``); Mailu's ``front``/``smtp`` and dms's ``mailserver``
  only count next to a stronger sign (they are common names);
* the environment: ``MAILCOW_HOSTNAME`` (mailcow), ``PERMIT_DOCKER``
  (docker-mailserver's mailserver.env), ``SUBNET`` (Mailu's mailu.env);
* the network: mailcow's ``*_mailcow-network`` and its default subnet
  172.22.1.0/24 (``IPV4_NETWORK`` in mailcow.conf).

Containers are grouped by ``com.docker.compose.project``; a container without
it is a group of its own. A group with no sign of the three stacks that runs
Postfix (publishes 25/tcp, or a ``postfix`` image) is a plain Postfix stack.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lockdown import dockerapi
from lockdown.dockerapi import ContainerRef
from lockdown.errors import BadInput

COMPOSE_PROJECT = "com.docker.compose.project"
MAILCOW, DMS, MAILU, POSTFIX = "mailcow", "docker-mailserver", "mailu", "postfix"
#: Ports on which a container "accepts SMTP from outside" when it publishes them.
SMTP_PORTS = (25, 465, 587)
#: mailcow's default IPV4_NETWORK (mailcow.conf) as a subnet: its gateway 172.22.1.1 is issue #758's client.
MAILCOW_SUBNET = ipaddress.ip_network("172.22.1.0/24")
ROLES = ("postfix", "inbound", "logs")


@dataclass(frozen=True)
class Kind:
    """What lockdown knows about one stack: where Postfix runs, who takes SMTP in, where logs go, the knob."""

    name: str
    title: str
    postfix_services: tuple[str, ...]  # Compose services running Postfix (queue hold)
    inbound_services: tuple[str, ...]  # services taking SMTP from outside (pause), besides publishers of 25
    log_services: tuple[str, ...]  # services whose container log holds the mail log
    log_files: tuple[str, ...]  # files in the Postfix container holding the mail log
    knob: str  # the setting that decides whether the gateway is trusted


KINDS: dict[str, Kind] = {
    MAILCOW: Kind(
        MAILCOW,
        "mailcow-dockerized",
        ("postfix-mailcow",),
        ("postfix-mailcow",),
        ("postfix-mailcow",),
        (),
        "mailcow.conf SMTP_PORT/SMTPS_PORT/SUBMISSION_PORT (bind to an IPv4 address, e.g. SMTP_PORT=203.0.113.5:25) "
        'and "userland-proxy": false in /etc/docker/daemon.json: mynetworks holds IPV4_NETWORK (172.22.1.0/24) '
        "by design, so its gateway must never speak for outside clients",
    ),
    DMS: Kind(
        DMS,
        "docker-mailserver",
        ("mailserver",),
        ("mailserver",),
        ("mailserver",),
        ("/var/log/mail/",),
        "PERMIT_DOCKER in mailserver.env (none; network adds 172.16.0.0/12 to mynetworks)",
    ),
    MAILU: Kind(
        MAILU,
        "Mailu",
        ("smtp",),
        ("front", "smtp"),
        ("smtp", "front"),
        (),
        "SUBNET in mailu.env (Postfix's mynetworks and front's XCLIENT trust); keep the gateway from speaking "
        'for clients: front published on BIND_ADDRESS4 only, or "userland-proxy": false',
    ),
    POSTFIX: Kind(
        POSTFIX,
        "plain Postfix",
        (),
        (),
        (),
        ("/var/log/mail.log", "/var/log/mail/"),
        "mynetworks in /etc/postfix/main.cf (must not contain the Docker gateway)",
    ),
}

_IMAGE_SIGNS = (
    (re.compile(r"(^|/)mailcow/"), MAILCOW),
    (re.compile(r"docker-mailserver"), DMS),
    (re.compile(r"(^|/)mailu/"), MAILU),
)
_ENV_SIGNS = (("MAILCOW_HOSTNAME", MAILCOW), ("PERMIT_DOCKER", DMS), ("SUBNET", MAILU))
#: Service names that only count next to a stronger sign of the same stack.
_WEAK_SERVICES = {"front": MAILU, "smtp": MAILU, "admin": MAILU, "mailserver": DMS}


@dataclass(frozen=True)
class Member:
    """One container of a group, as recognition reads it."""

    ref: ContainerRef
    image: str
    labels: dict[str, str]
    env: dict[str, str]
    network_ids: dict[str, str]  # network name -> id
    publishes: tuple[int, ...]  # container ports published on the host (tcp)

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def service(self) -> str:
        return self.ref.service or ""


@dataclass(frozen=True)
class StackNetwork:
    name: str
    subnets: tuple[str, ...]
    gateways: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "subnets": list(self.subnets), "gateways": list(self.gateways)}


@dataclass
class Stack:
    """A recognised stack: its kind, the containers by role, its network and gateway, and why."""

    kind: Kind
    project: str  # Compose project, "" for a lone container
    members: list[Member]
    reasons: list[str] = field(default_factory=list)
    postfix: Member | None = None
    inbound: list[Member] = field(default_factory=list)
    log_containers: list[Member] = field(default_factory=list)
    network: StackNetwork | None = None

    @property
    def label(self) -> str:
        where = f"Compose project {shown(self.project)}" if self.project else f"container {self.members[0].name}"
        return f"{self.kind.title} ({where})"

    def targets(self, role: str) -> list[ContainerRef]:
        """The containers of ``role``: postfix (queue), inbound (pause), logs (container log)."""
        chosen = {"postfix": [self.postfix] if self.postfix else [], "inbound": self.inbound}.get(
            role, self.log_containers
        )
        return [m.ref for m in chosen]

    @property
    def gateway(self) -> str:
        """The IPv4 gateway of the stack's network (the address Postfix sees proxied clients as), or ""."""
        gws = self.network.gateways if self.network else ()
        return next((g for g in gws if ":" not in g), gws[0] if gws else "")

    def why(self, limit: int = 8) -> str:
        """The reasons on one line (a mailcow host shows a dozen; the first ``limit`` are enough)."""
        more = len(self.reasons) - limit
        return "; ".join(self.reasons[:limit]) + (f"; and {more} more" if more > 0 else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "stack": self.kind.name,
            "title": self.kind.title,
            "project": self.project,
            "reasons": list(self.reasons),
            "postfix": self.postfix.name if self.postfix else None,
            "inbound": [m.name for m in self.inbound],
            "logs": {"container_log": [m.name for m in self.log_containers], "files": list(self.kind.log_files)},
            "network": self.network.as_dict() if self.network else None,
            "gateway": self.gateway or None,
            "knob": self.kind.knob,
        }


# ------------------------------------------------------------------ reading


def member_from_inspect(data: dict[str, Any]) -> Member:
    """A Member from a ``docker inspect`` document (the audit already holds these)."""
    cfg = data.get("Config") or {}
    env: dict[str, str] = {}
    for item in cfg.get("Env") or []:
        k, _, v = str(item).partition("=")
        env[k] = v
    nets = ((data.get("NetworkSettings") or {}).get("Networks") or {}).items()
    published = set()
    for cport, _ip, host_port in dockerapi.port_bindings(data):
        number, _, proto = cport.partition("/")
        if number.isdigit() and proto in ("", "tcp") and host_port:
            published.add(int(number))
    return Member(
        ref=dockerapi.ref_from_inspect(data),
        image=str(cfg.get("Image") or ""),
        labels={str(k): str(v) for k, v in (cfg.get("Labels") or {}).items()},
        env=env,
        network_ids={str(n): str((i or {}).get("NetworkID") or "") for n, i in nets},
        publishes=tuple(sorted(published)),
    )


def detect(labels: Sequence[str] = ()) -> list[Stack]:
    """Every mail stack among the running and paused containers (only those with ``labels``).

    Raises Unavailable/PrivilegeError when Docker cannot be read.
    """
    docs = [
        dockerapi.inspect(i["Id"], (i.get("Names") or [i["Id"]])[0].lstrip("/"))
        for i in dockerapi.list_containers(labels)
    ]
    return recognise(docs, dockerapi.networks())


def recognise(docs: Iterable[dict[str, Any]], networks: Sequence[dict[str, Any]]) -> list[Stack]:
    """The mail stacks among these containers (inspect documents), given ``GET /networks``."""
    groups: dict[str, list[Member]] = {}
    seen: set[str] = set()
    for data in docs:
        m = member_from_inspect(data)
        if m.ref.id in seen:  # the same container named twice (`audit --container a --container a`)
            continue
        seen.add(m.ref.id)
        key = m.labels.get(COMPOSE_PROJECT) or f"\0{m.ref.id}"
        groups.setdefault(key, []).append(m)
    nets = {str(n.get("Id")): n for n in networks if isinstance(n, dict)}
    stacks = []
    for key, members in sorted(groups.items()):
        stack = _recognise_group("" if key.startswith("\0") else key, members, nets)
        if stack is not None:
            stacks.append(stack)
    return sorted(stacks, key=lambda st: (st.project, st.members[0].name))


def shown(text: str, limit: int = 120) -> str:
    """A value read from Docker (env, image, label) made safe to print: no control characters, bounded."""
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return flat[:limit] + ("..." if len(text) > limit else "")


def _signs(m: Member, nets: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """(kind, reason, strong) for each sign one container shows."""
    out: list[tuple[str, str, bool]] = []
    name = shown(m.name)
    for pattern, kind in _IMAGE_SIGNS:
        if pattern.search(m.image.lower()):
            out.append((kind, f"{name}: image {shown(m.image)}", True))
    if m.service.endswith("-mailcow"):
        out.append((MAILCOW, f"{name}: label com.docker.compose.service={shown(m.service)}", True))
    elif m.service in _WEAK_SERVICES:
        out.append((_WEAK_SERVICES[m.service], f"{name}: label com.docker.compose.service={m.service}", False))
    for var, kind in _ENV_SIGNS:
        if var in m.env:
            out.append((kind, f"{name}: env {var}={shown(m.env[var])}", True))
    for net_name, net_id in sorted(m.network_ids.items()):
        if net_name.endswith("mailcow-network"):
            out.append((MAILCOW, f"{name}: network {shown(net_name)}", True))
        for subnet in _subnets(nets.get(net_id, {})):
            if subnet == str(MAILCOW_SUBNET):
                out.append(
                    (MAILCOW, f"{name}: network {shown(net_name)} subnet {subnet} (mailcow's IPV4_NETWORK)", False)
                )
    return out


def _recognise_group(project: str, members: list[Member], nets: dict[str, dict[str, Any]]) -> Stack | None:
    scores: dict[str, int] = {}
    reasons: dict[str, list[str]] = {}
    strong: set[str] = set()
    for m in sorted(members, key=lambda x: x.name):
        for sign, reason, is_strong in _signs(m, nets):
            scores[sign] = scores.get(sign, 0) + (2 if is_strong else 1)
            reasons.setdefault(sign, []).append(reason)
            if is_strong:
                strong.add(sign)
    ranked = sorted((k for k in scores if k in strong), key=lambda k: (-scores[k], k))
    kind: Kind
    if ranked:
        kind = KINDS[ranked[0]]
        why = reasons[kind.name]
    else:
        runs = [m for m in members if 25 in m.publishes or "postfix" in m.image.lower()]
        if not runs:
            return None
        kind = KINDS[POSTFIX]
        why = [
            f"{shown(m.name)}: " + ("publishes 25/tcp" if 25 in m.publishes else f"image {shown(m.image)}")
            + " and no sign of mailcow, docker-mailserver or Mailu"
            for m in runs
        ]
    stack = Stack(kind, project, sorted(members, key=lambda x: x.name), list(why))
    _assign_roles(stack)
    if stack.postfix is None and not stack.inbound:
        return None  # e.g. an unrelated app with a SUBNET variable: nothing a playbook could act on
    stack.network = _stack_network(stack, nets)
    return stack


def _assign_roles(stack: Stack) -> None:
    """Postfix container, inbound containers, log containers; each by service, else by what it publishes."""
    by_service = {m.service: m for m in stack.members if m.service}
    publishers = [m for m in stack.members if any(p in m.publishes for p in SMTP_PORTS)]
    postfix = next((by_service[s] for s in stack.kind.postfix_services if s in by_service), None)
    if postfix is None:
        image = {MAILCOW: "mailcow/postfix", MAILU: "mailu/postfix"}.get(stack.kind.name, stack.kind.name)
        postfix = next((m for m in stack.members if image in m.image.lower()), None)
    if postfix is None and stack.kind.name == DMS:
        postfix = next((m for m in stack.members if "PERMIT_DOCKER" in m.env), None)
    if postfix is None:
        postfix = next((m for m in publishers if 25 in m.publishes), publishers[0] if publishers else None)
    stack.postfix = postfix
    inbound = [by_service[s] for s in stack.kind.inbound_services if s in by_service] + publishers
    if postfix is not None and not inbound:
        inbound = [postfix]
    stack.inbound = _unique(inbound)
    logs = [by_service[s] for s in stack.kind.log_services if s in by_service]
    stack.log_containers = _unique(logs or ([postfix] if postfix else []))


def _unique(members: list[Member]) -> list[Member]:
    seen: dict[str, Member] = {}
    for m in members:
        seen.setdefault(m.ref.id, m)
    return sorted(seen.values(), key=lambda m: m.name)


def _subnets(net: dict[str, Any]) -> list[str]:
    out = []
    for cfg in (net.get("IPAM") or {}).get("Config") or []:
        subnet = cfg.get("Subnet") if isinstance(cfg, dict) else None
        if isinstance(subnet, str):
            try:
                out.append(str(ipaddress.ip_network(subnet, strict=False)))
            except ValueError:
                continue
    return out


def _stack_network(stack: Stack, nets: dict[str, dict[str, Any]]) -> StackNetwork | None:
    """The network the Postfix container receives proxied clients on, with its gateway.

    mailcow: ``*mailcow-network``; Mailu: the network whose subnet is SUBNET;
    otherwise the Postfix container's first network that has a subnet.
    """
    m = stack.postfix
    if m is None:
        return None
    candidates = []
    for net_name, net_id in sorted(m.network_ids.items()):
        net = nets.get(net_id, {})
        subnets = tuple(_subnets(net))
        if subnets:
            gws = tuple(dockerapi.gateways_from_ipam(net.get("IPAM") or {}))
            candidates.append(StackNetwork(net_name, subnets, gws))
    subnet_env = _normalised(m.env.get("SUBNET", ""))

    def preferred(n: StackNetwork) -> int:
        if n.name.endswith("mailcow-network") or (subnet_env and subnet_env in n.subnets):
            return 0
        return 1

    return min(candidates, key=preferred) if candidates else None


def _normalised(subnet: str) -> str:
    try:
        return str(ipaddress.ip_network(subnet.strip(), strict=False)) if subnet.strip() else ""
    except ValueError:
        return ""


# ------------------------------------------------------------------ choosing


def choose(stacks: list[Stack], where: str) -> Stack:
    """The one mail stack a playbook acts on; none or several raise BadInput naming them."""
    if not stacks:
        raise BadInput(
            f'container = "stack": no mail stack among the running containers{where} '
            "(no mailcow, docker-mailserver or Mailu sign, and no container publishing 25/tcp)",
            'name the container: --var container=NAME, or --var container=auto',
        )
    if len(stacks) > 1:
        listing = "; ".join(f"{s.label}: {s.why()}" for s in stacks[:10])
        raise BadInput(
            f'container = "stack": {len(stacks)} mail stacks run here{where}, choose one: {listing}',
            "narrow to one Compose project with --var project=NAME, or name the container with --var container=NAME",
        )
    return stacks[0]
