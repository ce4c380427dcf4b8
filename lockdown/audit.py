"""``lockdown audit``: is this host an open relay over IPv6 right now?

Both postmortems had the same chain: a mail port published on every address,
docker-proxy forwarding IPv6 clients into an IPv4-only container (so Postfix
sees them as the bridge gateway), and Postfix trusting the Docker network.
Each link of that chain is one check here, and the chain as a whole is the
``ipv6-relay-path`` finding. ``probe()`` is the definitive test: it asks the
server itself, over the host's own IPv6 addresses.

Everything in this module only READS the host: the Docker API (inspect,
networks, logs, and ``postconf`` run through ``docker exec``), /proc through
psutil, /etc/docker/daemon.json, /etc/ufw/ufw.conf, ``iptables-save`` (a
dump, never a change) and the kernel's address list. The probe never sends
DATA, so no mail is ever accepted.

Finding ids are an interface (``--json``, docs/audit.md): keep them stable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockdown.errors import BadInput, LockdownError

SEVERITIES = ("info", "low", "medium", "high", "critical")
#: Severities that make ``exposed`` true and the command exit 1.
EXPOSED_SEVERITIES = frozenset({"high", "critical"})
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
DAEMON_JSON = Path("/etc/docker/daemon.json")
UFW_CONF = Path("/etc/ufw/ufw.conf")
DOCKER_PROXY = "docker-proxy"
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
#: docker-mailserver PERMIT_DOCKER values that put the Docker gateway into mynetworks.
RISKY_PERMIT_DOCKER = {
    "network": "adds 172.16.0.0/12, every default Docker bridge, to mynetworks",
    "connected-networks": "adds every Docker network the container is attached to, gateways included",
    "host": "adds the Docker host, which is what the bridge gateway is, to mynetworks",
}
MAIL_SERVICES = frozenset({"smtp", "postfix", "mailserver", "mail", "front"})
#: Where an audit's probe and container logs look: a week of logs is enough to
#: see an ongoing abuse without reading years of history on every run.
DEFAULT_LOG_SECONDS = 7 * 86400
PROBE_FROM = "lockdown-probe@example.org"
PROBE_RCPT = "lockdown-probe@example.net"
PROBE_HELO = "lockdown-audit.example"
DOC_ADDRESS = "203.0.113.5"


# ------------------------------------------------------------------ findings


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


# ------------------------------------------------------------------ host facts


@dataclass(frozen=True)
class HostAddress:
    ifname: str
    address: str

    @property
    def public(self) -> bool:
        return ipaddress.ip_address(self.address).is_global


def host_ipv6_addresses() -> list[HostAddress]:
    """The host's global-scope IPv6 addresses (kernel scope, so ULAs and 2001:db8:: count)."""
    from lockdown import netlink

    out = []
    for a in netlink.dump_addresses(netlink.AF_INET6):
        if a.scope != netlink.SCOPE_GLOBAL or "dadfailed" in a.flag_names:
            continue
        out.append(HostAddress(a.ifname, str(ipaddress.ip_address(a.address))))
    return out


def host_ipv4_address() -> str | None:
    """One global IPv4 address of the host, to write a concrete fix (``ADDR:25:25``)."""
    from lockdown import netlink

    for a in netlink.dump_addresses(netlink.AF_INET):
        ip = ipaddress.ip_address(a.address)
        if a.scope == netlink.SCOPE_GLOBAL and not a.ifname.startswith(("docker", "br-", "veth", "lkd-")):
            return str(ip)
    return None


def is_host_address(address: str) -> bool:
    """True when ``address`` is configured on one of this host's interfaces (any scope, any family)."""
    import psutil

    try:
        want = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                if ipaddress.ip_address(a.address.split("%", 1)[0]) == want:
                    return True
            except ValueError:
                continue
    return False


@dataclass(frozen=True)
class ProxyProcess:
    """One docker-proxy process and what it forwards (from its command line)."""

    pid: int
    exe: str
    proto: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int
    listen_fd: bool
    cmdline: str

    @property
    def ipv6_into_ipv4(self) -> bool:
        return _is_v6(self.host_ip) and _is_v4(self.container_ip)


def _is_v6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.strip("[]")).version == 6
    except ValueError:
        return False


def _is_v4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def _flags(argv: Sequence[str]) -> dict[str, str]:
    """``-host-ip :: --host-port=25 -use-listen-fd`` -> {"host-ip": "::", "host-port": "25", "use-listen-fd": ""}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-"):
            continue
        name = arg.lstrip("-")
        if "=" in name:
            key, _, value = name.partition("=")
            out[key] = value
        elif i < len(argv) and not argv[i].startswith("-"):
            out[name] = argv[i]
            i += 1
        else:
            out[name] = ""
    return out


def parse_proxy_cmdline(pid: int, argv: Sequence[str], exe: str = "") -> ProxyProcess | None:
    """A docker-proxy command line, or None when it does not say what it forwards."""
    f = _flags(argv[1:])
    try:
        return ProxyProcess(
            pid=pid,
            exe=exe or (argv[0] if argv else ""),
            proto=f.get("proto", "tcp"),
            host_ip=f.get("host-ip", "").strip("[]"),
            host_port=int(f.get("host-port", "0")),
            container_ip=f.get("container-ip", ""),
            container_port=int(f.get("container-port", "0")),
            listen_fd="use-listen-fd" in f,
            cmdline=" ".join(argv),
        )
    except ValueError:
        return None


def _is_proxy(name: str, argv: Sequence[str], exe: str) -> bool:
    """docker-proxy whichever directory it lives in (/usr/bin, /usr/sbin, /usr/libexec/docker, ...)."""
    return DOCKER_PROXY in (name, os.path.basename(argv[0]) if argv else "", os.path.basename(exe))


def docker_proxies() -> list[ProxyProcess]:
    """Every docker-proxy process on the host."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline", "exe"]):
        info = p.info
        argv = info.get("cmdline") or []
        exe = info.get("exe") or ""
        if not _is_proxy(info.get("name") or "", argv, exe):
            continue
        proxy = parse_proxy_cmdline(p.pid, argv, exe)
        if proxy is not None:
            out.append(proxy)
    return out


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    pid: int | None
    process: str | None

    def show(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        who = f" {self.process or '?'} (pid {self.pid})" if self.pid else ""
        return f"{host}:{self.port}{who}"


def tcp_listeners() -> list[Listener]:
    """Listening TCP sockets with their process. Since Docker 28 dockerd opens the
    socket and hands it to docker-proxy by file descriptor, so the owner is whoever
    holds the fd now: docker-proxy, or dockerd while it still holds it."""
    import psutil

    names: dict[int, str] = {}
    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status != psutil.CONN_LISTEN or not c.laddr:
            continue
        name = None
        if c.pid:
            if c.pid not in names:
                try:
                    names[c.pid] = psutil.Process(c.pid).name()
                except psutil.Error:
                    names[c.pid] = "?"
            name = names[c.pid]
        out.append(Listener(str(c.laddr.ip), int(c.laddr.port), c.pid, name))
    return out


@dataclass(frozen=True)
class DaemonConfig:
    """What dockerd runs with: daemon.json merged with its command-line flags (flags win)."""

    path: str
    userland_proxy: bool
    ipv6: bool
    ip6tables: bool
    source: list[str]

    def describe(self) -> str:
        return (
            f"userland-proxy={str(self.userland_proxy).lower()}, ipv6={str(self.ipv6).lower()}, "
            f"ip6tables={str(self.ip6tables).lower()} ({'; '.join(self.source)})"
        )


def _bool_flag(flags: dict[str, str], name: str) -> bool | None:
    if name not in flags:
        return None
    return flags[name].lower() not in ("false", "0", "no")


def daemon_config(daemon_json: Path = DAEMON_JSON, dockerd_argv: Sequence[str] | None = None) -> DaemonConfig:
    """Read daemon.json (``--config-file`` of the running dockerd if it names one) and dockerd's flags.

    Defaults are Docker's: userland-proxy on, ipv6 off, ip6tables off before Docker 27.
    """
    if dockerd_argv is None:
        dockerd_argv = _dockerd_argv()
    flags = _flags(dockerd_argv[1:]) if dockerd_argv else {}
    path = Path(flags.get("config-file") or daemon_json)
    source: list[str] = []
    conf: dict[str, Any] = {}
    try:
        conf = json.loads(path.read_text() or "{}")
        if not isinstance(conf, dict):
            conf = {}
        source.append(f"{path} read")
    except FileNotFoundError:
        source.append(f"{path} absent")
    except (OSError, ValueError) as exc:
        source.append(f"{path} unreadable: {exc}")
    values = {
        "userland-proxy": bool(conf.get("userland-proxy", True)),
        "ipv6": bool(conf.get("ipv6", False)),
        "ip6tables": bool(conf.get("ip6tables", False)),
    }
    for key in values:
        flag = _bool_flag(flags, key)
        if flag is not None:
            values[key] = flag
            source.append(f"dockerd --{key}={str(flag).lower()}")
    if dockerd_argv:
        source.append("dockerd: " + " ".join(dockerd_argv)[:300])
    return DaemonConfig(str(path), values["userland-proxy"], values["ipv6"], values["ip6tables"], source)


def _dockerd_argv() -> list[str]:
    import psutil

    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info.get("name") == "dockerd":
            return list(p.info.get("cmdline") or [])
    return []


# ------------------------------------------------------------------ containers


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
        return self.host_ip in ("", "::") or _is_v6(self.host_ip)

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

    id: str
    name: str
    status: str
    env: dict[str, str]
    labels: dict[str, str]
    bindings: list[Binding]
    networks: list[NetworkInfo]

    @property
    def project(self) -> str | None:
        return self.labels.get(COMPOSE_PROJECT)

    @property
    def service(self) -> str | None:
        return self.labels.get(COMPOSE_SERVICE)

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
            or any(k in self.env for k in ("PERMIT_DOCKER", "SUBNET", "RELAYNETS", "POSTFIX_MYNETWORKS"))
            or (self.service or "") in MAIL_SERVICES
        )


def load_containers(names: Sequence[str] | None = None) -> list[MailContainer]:
    """Running and paused containers (only ``names`` when given), with their networks' IPAM gateways."""
    from lockdown import dockerapi

    nets_raw = dockerapi.docker_call("list Docker networks", lambda: dockerapi.api().networks())
    nets = {n["Id"]: n for n in nets_raw or [] if isinstance(n, dict) and n.get("Id")}
    if names:  # the same names as a playbook's container (name, id, "auto", "all", "service:NAME")
        items: list[dict[str, Any]] = []
        for name in names:
            try:
                refs = dockerapi.resolve_containers(name)
            except BadInput as exc:
                raise BadInput(f"--container {name}: {exc.message}", exc.hint) from None
            items.extend(dockerapi.inspect(ref.id, ref.name) for ref in refs)
    else:
        items = [
            dockerapi.inspect(i["Id"], (i.get("Names") or [i["Id"]])[0].lstrip("/"))
            for i in dockerapi.list_containers()
        ]
    out = []
    for data in items:
        cfg = data.get("Config") or {}
        env = {}
        for item in cfg.get("Env") or []:
            k, _, v = str(item).partition("=")
            env[k] = v
        bindings = []
        ns = data.get("NetworkSettings") or {}
        for cport, binds in (ns.get("Ports") or {}).items():
            port, _, proto = str(cport).partition("/")
            if proto not in ("", "tcp") or not port.isdigit():
                continue
            for b in binds or []:
                hp = str(b.get("HostPort") or "0")
                bindings.append(Binding(int(port), str(b.get("HostIp") or ""), int(hp) if hp.isdigit() else 0))
        networks = []
        for netname, n in (ns.get("Networks") or {}).items():
            net = nets.get(n.get("NetworkID") or "", {})
            gws = dockerapi.gateways_from_ipam(net.get("IPAM") or {}) if net else []
            for key in ("Gateway", "IPv6Gateway"):
                if n.get(key) and n[key] not in gws:
                    gws.append(n[key])
            networks.append(
                NetworkInfo(
                    name=netname,
                    id=str(n.get("NetworkID") or ""),
                    enable_ipv6=bool(net.get("EnableIPv6")),
                    gateways=gws,
                    container_ip=str(n.get("IPAddress") or ""),
                    container_ipv6=str(n.get("GlobalIPv6Address") or ""),
                )
            )
        out.append(
            MailContainer(
                id=data["Id"],
                name=str(data.get("Name") or data["Id"][:12]).lstrip("/"),
                status=str((data.get("State") or {}).get("Status") or "unknown"),
                env=env,
                labels=dict(cfg.get("Labels") or {}),
                bindings=bindings,
                networks=networks,
            )
        )
    return out


# ------------------------------------------------------------------ mynetworks


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


def _postconf(c: MailContainer, param: str) -> str | None:
    """``postconf -xh PARAM`` in the container (``-h`` when -x is unknown); None without postconf."""
    from lockdown import dockerapi

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


# ------------------------------------------------------------------ the audit


@dataclass
class AuditOptions:
    containers: list[str] = field(default_factory=list)
    daemon_json: Path = DAEMON_JSON
    logs: list[Path] = field(default_factory=list)
    container_logs: bool = True
    log_seconds: float = DEFAULT_LOG_SECONDS
    firewall: bool = True


@dataclass
class _Trust:
    """Why a container's Postfix trusts the gateway."""

    container: MailContainer
    gateway: str
    reason: str


class Auditor:
    """Runs the checks in order; each adds findings to ``result``."""

    def __init__(self, options: AuditOptions) -> None:
        self.opt = options
        self.result = AuditResult()
        self.v6 = host_ipv6_addresses()
        self.v4 = host_ipv4_address() or DOC_ADDRESS
        self.containers = load_containers(options.containers)
        self.daemon = daemon_config(options.daemon_json)
        self.proxies = docker_proxies()
        self.listeners = tcp_listeners()
        self.v6_paths: dict[str, list[str]] = {}  # container id -> evidence of an IPv6 -> IPv4 path
        self.trust: list[_Trust] = []

    def run(self) -> AuditResult:
        for c in self.containers:
            self.check_published(c)
            self.check_ipv6_mismatch(c)
            self.check_proxy(c)
            self.check_postfix(c)
        self.check_chain()
        if self.opt.firewall:
            self.check_firewall()
        self.check_logs()
        self.result.sort()
        return self.result

    def add(self, *args: str) -> None:
        self.result.add(Finding(*args))

    def skipped(self, what: str, why: str, fix: str = "run as root with access to the Docker socket") -> None:
        self.add("check-skipped", "info", f"{what}: not checked", why, fix)

    # 1 ---------------------------------------------------------------
    def check_published(self, c: MailContainer) -> None:
        wide = [b for b in c.mail_bindings if b.everywhere]
        if not wide:
            return
        example = wide[0]
        self.add(
            "mail-port-all-addresses",
            "medium",
            f"{c.name} publishes mail ports on every address",
            f"container {c.name}: NetworkSettings.Ports "
            + ", ".join(b.show() for b in wide)
            + " (HostIp 0.0.0.0, :: or empty listens on every host address, IPv6 included)",
            f"publish on one host address: `-p {self.v4}:{example.host_port}:{example.container_port}` "
            f'(compose: ports: ["{self.v4}:{example.host_port}:{example.container_port}"]) '
            f'instead of "{example.host_port}:{example.container_port}"',
        )

    # 2 ---------------------------------------------------------------
    def check_ipv6_mismatch(self, c: MailContainer) -> None:
        v6_bind = [b for b in c.mail_bindings if b.covers_ipv6]
        if not self.v6 or not v6_bind or c.has_ipv6:
            return
        nets = (
            ", ".join(
                f"{n.name} (EnableIPv6={str(n.enable_ipv6).lower()}, GlobalIPv6Address={n.container_ipv6 or 'empty'})"
                for n in c.networks
            )
            or "none"
        )
        addrs = ", ".join(f"{a.address} on {a.ifname}" for a in self.v6[:6])
        self.add(
            "host-ipv6-container-ipv4",
            "medium",
            f"{c.name} is IPv4-only but reachable on the host's global IPv6 addresses",
            f"host global IPv6: {addrs}; {c.name} networks: {nets}; IPv6 bindings: "
            + ", ".join(b.show() for b in v6_bind),
            "give the network IPv6 so clients keep their address (compose: `enable_ipv6: true` with an IPv6 "
            'subnet, and `"ipv6": true, "ip6tables": true` in /etc/docker/daemon.json), or publish on an '
            f"IPv4 address only (`-p {self.v4}:{v6_bind[0].host_port}:{v6_bind[0].container_port}`)",
        )

    # 3 ---------------------------------------------------------------
    def check_proxy(self, c: MailContainer) -> None:
        ips = {n.container_ip for n in c.networks if n.container_ip}
        ports = {b.host_port: b for b in c.mail_bindings}
        found = [
            p for p in self.proxies if p.ipv6_into_ipv4 and p.container_ip in ips and p.container_port in MAIL_PORTS
        ]
        evidence = [
            f"docker-proxy pid {p.pid} ({p.exe}{', socket passed by fd' if p.listen_fd else ''}): "
            f"-host-ip {p.host_ip} -host-port {p.host_port} -container-ip {p.container_ip} "
            f"-container-port {p.container_port}"
            for p in found
        ]
        proxy_ports = {p.host_port for p in found}
        owners = {p.pid for p in found}
        listen = [
            ln
            for ln in self.listeners
            if _is_v6(ln.address)
            and ln.port in ports
            and ports[ln.port].covers_ipv6
            and (ln.pid in owners or ln.process in (DOCKER_PROXY, "dockerd"))
        ]
        if listen:
            evidence.append("IPv6 listeners: " + ", ".join(ln.show() for ln in listen))
        if not found and not listen:
            return
        if not found and not self.daemon.userland_proxy:
            return
        if not c.has_ipv6 or found:
            self.v6_paths[c.id] = evidence
        ports_text = ", ".join(str(p) for p in sorted(proxy_ports or {ln.port for ln in listen}))
        self.add(
            "proxy-ipv6-to-ipv4",
            "medium",
            f"docker-proxy forwards IPv6 clients into {c.name} over IPv4 (port {ports_text})",
            "; ".join(evidence) + f"; daemon: {self.daemon.describe()}. Postfix sees every IPv6 client "
            "as the bridge gateway.",
            f'set "userland-proxy": false in {self.daemon.path} (or give the network IPv6 with '
            '"ip6tables": true), or publish on an IPv4 address only '
            f"(`-p {self.v4}:{next(iter(ports.values())).host_port if ports else 25}:25`)",
        )

    # 4 ---------------------------------------------------------------
    def check_postfix(self, c: MailContainer) -> None:
        gws = [g for g in c.gateways if g]
        self._check_env(c, gws)
        if not c.candidate:
            return
        if c.status != "running":
            self.skipped(
                f"mynetworks of {c.name}",
                f"the container is {c.status}; docker exec needs it running",
                "audit again once it runs (a paused container cannot relay meanwhile)",
            )
            return
        value = _postconf(c, "mynetworks")
        if value is None:
            return
        entries = parse_matchlist(value)
        for gw in gws:
            entry, unknown = trusted_by(entries, gw)
            if entry is None:
                continue
            keep = [e for e in entries if trusted_by([e], gw)[0] is None] or ["127.0.0.0/8", "[::1]/128"]
            self.trust.append(_Trust(c, gw, f"mynetworks entry {entry}"))
            extra = f" (not evaluated: {', '.join(unknown)})" if unknown else ""
            self.add(
                "postfix-trusts-gateway",
                "high",
                f"Postfix in {c.name} trusts the Docker gateway {gw}",
                f"`postconf -h mynetworks` in {c.name}: {value!r}; gateway {gw} (IPAM of "
                f"{', '.join(n.name for n in c.networks if gw in n.gateways)}) is inside {entry}{extra}. "
                "Anything that reaches Postfix through docker-proxy or the gateway may relay.",
                f"main.cf: `mynetworks = {' '.join(keep)}` (was `mynetworks = {value}`)",
            )
        xclient = _postconf(c, "smtpd_authorized_xclient_hosts") if "SUBNET" in c.env else None
        if xclient:
            for gw in gws:
                entry, _ = trusted_by(parse_matchlist(xclient), gw)
                if entry is not None:
                    self.add(
                        "mailu-xclient-gateway",
                        "high",
                        f"Postfix in {c.name} takes client addresses by XCLIENT from the gateway {gw}",
                        f"smtpd_authorized_xclient_hosts = {xclient!r} admits {gw} ({entry}): the Mailu front "
                        "passes the address it saw, and behind docker-proxy that is the gateway.",
                        "publish the front's ports on a specific IPv4 address "
                        f'(ports: ["{self.v4}:25:25"]), or enable IPv6 on the Mailu network',
                    )

    def _check_env(self, c: MailContainer, gws: list[str]) -> None:
        permit = c.env.get("PERMIT_DOCKER", "").strip().lower()
        if permit in RISKY_PERMIT_DOCKER:
            gw = gws[0] if gws else "the gateway"
            self.trust.append(_Trust(c, gw, f"PERMIT_DOCKER={permit}"))
            self.add(
                "dms-permit-docker",
                "high",
                f"docker-mailserver {c.name} trusts Docker networks (PERMIT_DOCKER={permit})",
                f"Config.Env of {c.name}: PERMIT_DOCKER={permit} {RISKY_PERMIT_DOCKER[permit]}; "
                f"gateways: {', '.join(gws) or 'unknown'}",
                f"mailserver.env: `PERMIT_DOCKER=none` (was `PERMIT_DOCKER={permit}`)",
            )
        for var, fid in (("SUBNET", "mailu-subnet-gateway"), ("RELAYNETS", "mailu-relaynets-gateway")):
            if var not in c.env:
                continue
            entries = parse_matchlist(c.env[var])
            for gw in gws:
                entry, _ = trusted_by(entries, gw)
                if entry is None:
                    continue
                self.trust.append(_Trust(c, gw, f"{var}={c.env[var]}"))
                fix = (
                    "mailu.env: keep `SUBNET` as the Mailu network, but stop the gateway address from "
                    "speaking for clients: publish the front on a specific IPv4 address "
                    f'(ports: ["{self.v4}:25:25"]) or enable IPv6 on the Mailu network'
                    if var == "SUBNET"
                    else f"mailu.env: `RELAYNETS=` without {entry} (was `RELAYNETS={c.env[var]}`)"
                )
                self.add(
                    fid,
                    "high",
                    f"Mailu {c.name}: {var} contains the Docker gateway {gw}",
                    f"Config.Env of {c.name}: {var}={c.env[var]!r} contains gateway {gw} ({entry}); "
                    "Mailu puts it in mynetworks",
                    fix,
                )

    def check_chain(self) -> None:
        """The postmortem's whole chain: an IPv6 -> IPv4 path and trust in the gateway, in one deployment."""
        chains: dict[tuple[str, str], list[_Trust]] = {}
        for t in self.trust:
            mine = t.container
            for c in self.containers:
                if c.id in self.v6_paths and (c.id == mine.id or (c.project and c.project == mine.project)):
                    chains.setdefault((c.id, mine.id), []).append(t)
        by_id = {c.id: c for c in self.containers}
        for (path_id, _), trusts in chains.items():
            c, mine = by_id[path_id], trusts[0].container
            gws = sorted({t.gateway for t in trusts})
            reasons = "; ".join(sorted({t.reason for t in trusts}))
            self.add(
                "ipv6-relay-path",
                "critical",
                f"IPv6 clients reach {mine.name} as the trusted gateway {', '.join(gws)}: open relay path",
                f"{c.name}: {'; '.join(self.v6_paths[c.id][:2])}; and {mine.name} trusts {', '.join(gws)} "
                f"({reasons}). `lockdown audit --probe` confirms it.",
                "fix either link, best both: remove the gateway from mynetworks (see postfix-trusts-gateway / "
                f'dms-permit-docker), and publish on `{self.v4}:25:25` or set "userland-proxy": false',
            )

    # 5 ---------------------------------------------------------------
    def check_firewall(self) -> None:
        published = [(c, b) for c in self.containers for b in c.mail_bindings if b.everywhere]
        if not published:
            return
        ufw = _ufw_enabled()
        dump = _iptables_save("iptables-save")
        if dump is None and not ufw:
            self.skipped("firewall", "iptables-save is not installed or failed (needs root)")
            return
        rules = [ln for ln in (dump or "").splitlines() if ln.startswith("-A INPUT")]
        policy = next((ln.split()[1] for ln in (dump or "").splitlines() if ln.startswith(":INPUT ")), "ACCEPT")
        if not ufw and not rules and policy == "ACCEPT":
            return
        dnat = [ln for ln in (dump or "").splitlines() if "-j DNAT" in ln and "--dport" in ln]
        ports = ", ".join(sorted({f"{b.host_port}/tcp ({c.name})" for c, b in published}))
        what = []
        if ufw:
            what.append(f"UFW is enabled ({UFW_CONF})")
        if policy != "ACCEPT":
            what.append(f"INPUT policy {policy}")
        if rules:
            what.append(f"{len(rules)} INPUT rule(s), e.g. `{rules[0]}`")
        self.add(
            "firewall-input-bypassed",
            "medium" if ufw or policy != "ACCEPT" else "low",
            "INPUT firewall rules do not apply to Docker's published ports",
            f"{'; '.join(what)}; published mail ports: {ports}. Docker DNATs IPv4 traffic in nat PREROUTING "
            f"and accepts it in FORWARD ({len(dnat)} DNAT rule(s)), so INPUT never sees it; IPv6 clients go "
            "to docker-proxy through INPUT but then arrive from the gateway.",
            "filter in the DOCKER-USER chain (e.g. `iptables -I DOCKER-USER -p tcp -m conntrack "
            "--ctorigdstport 25 ! -s 192.0.2.0/24 -j DROP`), or with UFW `ufw route` rules, or publish on "
            f"`{self.v4}:25:25` only",
        )

    # 6 ---------------------------------------------------------------
    def check_logs(self) -> None:
        from lockdown.mail import report as rp

        sources: list[rp.Source] = list(rp.sources_from_paths(self.opt.logs)) if self.opt.logs else []
        if self.opt.container_logs:
            since = time.time() - self.opt.log_seconds
            for c in self.containers:
                if c.candidate:
                    sources.append(rp.ContainerLogSource(c.id, c.name, since))
        if not sources:
            return
        gateways = sorted({g for c in self.containers for g in c.gateways})
        gw_list, _origin = rp.choose_gateways(gateways or None)
        r = rp.analyse(sources, gateways=gw_list, gateway_source="audit")
        where = ", ".join(s.name for s in sources[:5]) + (" ..." if len(sources) > 5 else "")
        if r.signature_messages:
            first = r.first_abuse.first_seen.isoformat() if r.first_abuse and r.first_abuse.first_seen else "?"
            last = r.last_abuse.first_seen.isoformat() if r.last_abuse and r.last_abuse.first_seen else "?"
            top = ", ".join(f"{d} ({n})" for d, n in r.signature_by_recipient_domain.most_common(5))
            self.add(
                "log-gateway-relay",
                "high",
                f"{r.signature_messages} message(s) relayed from a Docker gateway without SASL",
                f"in {where}: client= lines from {', '.join(sorted({m.client_addr or '?' for m in r.sample}))} "
                f"without sasl_username, then deliveries to outside domains: {top}; first {first}, last {last}",
                "close the relay first (mynetworks without the gateway), contain with `lockdown run "
                "relay-incident`, then `lockdown report --log FILE` for the details",
            )
        if r.connects_from_gateway:
            self.add(
                "log-gateway-connections",
                "medium",
                f"{r.connects_from_gateway} connection(s) logged from a Docker gateway",
                f"in {where}: {r.postscreen_connects_from_gateway} postscreen `CONNECT from [gateway]` and "
                f"{r.connects_from_gateway - r.postscreen_connects_from_gateway} smtpd `connect from` line(s) "
                f"from {', '.join(gw_list[:4])}{' ...' if len(gw_list) > 4 else ''}: clients arrive through "
                "docker-proxy and lose their address",
                f'set "userland-proxy": false in {self.daemon.path}, or give the network IPv6, '
                "so Postfix sees the real client",
            )


def _ufw_enabled(path: Path = UFW_CONF) -> bool:
    try:
        text = path.read_text()
    except OSError:
        return False
    return any(ln.strip().replace('"', "").lower() == "enabled=yes" for ln in text.splitlines())


def _iptables_save(tool: str) -> str | None:
    """``iptables-save -t filter`` + ``-t nat``: a read-only dump; None when unavailable."""
    exe = shutil.which(tool)
    if exe is None:
        return None
    out = []
    for table in ("filter", "nat"):
        try:
            proc = subprocess.run([exe, "-t", table], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        out.append(proc.stdout)
    return "\n".join(out)


def audit(options: AuditOptions | None = None) -> AuditResult:
    """Run checks 1-6. Raises Unavailable/PrivilegeError when Docker cannot be read."""
    from lockdown import dockerapi

    dockerapi.ping("lockdown audit")
    return Auditor(options or AuditOptions()).run()


# ------------------------------------------------------------------ probe


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
    own = {a.address for a in host_ipv6_addresses()}
    if addresses:
        chosen = []
        for text in addresses:
            try:
                ip = ipaddress.ip_address(text.strip("[]"))
            except ValueError:
                raise BadInput(f"--address {text}: not an IP address") from None
            if ip.version != 6:
                raise BadInput(f"--address {text}: the probe tests the IPv6 path; give an IPv6 address")
            if str(ip) not in own or not is_host_address(str(ip)):
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


def smtp_probe(target: ProbeTarget, rcpt: str = PROBE_RCPT, timeout: float = 5.0) -> ProbeReply:
    """EHLO, MAIL FROM, RCPT TO an outside domain, then RSET and QUIT. Never DATA."""
    if not is_host_address(target.address):  # checked again right before connecting
        raise BadInput(f"{target.address} is not configured on this host; refusing to probe it")
    transcript: list[str] = []
    code: int | None = None
    try:
        with smtplib.SMTP(timeout=timeout) as s:
            c, msg = s.connect(target.address, target.port)
            transcript.append(f"<- {c} {msg.decode(errors='replace')}")
            if c != 220:
                return ProbeReply(target, transcript, None, f"no 220 banner (got {c})")
            c, msg = s.ehlo(PROBE_HELO)
            transcript.append(f"EHLO {PROBE_HELO} -> {c}")
            c, msg = s.mail(PROBE_FROM)
            transcript.append(f"MAIL FROM:<{PROBE_FROM}> -> {c} {msg.decode(errors='replace')}")
            if c == 250:
                code, msg = s.rcpt(rcpt)
                transcript.append(f"RCPT TO:<{rcpt}> -> {code} {msg.decode(errors='replace')}")
            c, _ = s.rset()
            transcript.append(f"RSET -> {c}")
            c, _ = s.docmd("QUIT")
            transcript.append(f"QUIT -> {c}")
            s.close()
    except (OSError, smtplib.SMTPException) as exc:
        return ProbeReply(target, transcript, code, f"{type(exc).__name__}: {exc}")
    return ProbeReply(target, transcript, code)


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
        if not host_ipv6_addresses():
            why = "the host has no global IPv6 address"
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


def merge(result: AuditResult, findings: Iterable[Finding]) -> AuditResult:
    for f in findings:
        result.add(f)
    result.sort()
    return result
