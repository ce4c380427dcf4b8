"""The audit's checks, in the order of the postmortems' chain.

1. a mail port published on every address; 2. a host with global IPv6 in
front of an IPv4-only container; 3. docker-proxy forwarding IPv6 clients in
over IPv4 (so Postfix sees the bridge gateway); 4. Postfix (or
docker-mailserver / Mailu settings) trusting that gateway; the chain of
3 and 4 in one deployment is ``ipv6-relay-path``. Then the firewall that
does not see Docker's ports, and abuse already in the logs.

A host (or network namespace) with IPv6 disabled has no IPv6 -> docker-proxy
path at all: the audit says so (``ipv6-disabled``) instead of reporting
docker-proxy's ``[::]`` command lines as a path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from lockdown import dockerapi, hostfacts, stacks
from lockdown.audit import facts, stackfix
from lockdown.audit.containers import MAIL_PORTS, MailContainer, load_containers
from lockdown.audit.findings import AuditResult, Finding
from lockdown.audit.postfix import parse_matchlist, postconf, trusted_by
from lockdown.hostfacts import DOCKER_PROXY

#: docker-mailserver PERMIT_DOCKER values that put the Docker gateway into mynetworks.
RISKY_PERMIT_DOCKER = {
    "network": "adds 172.16.0.0/12, every default Docker bridge, to mynetworks",
    "connected-networks": "adds every Docker network the container is attached to, gateways included",
    "host": "adds the Docker host, which is what the bridge gateway is, to mynetworks",
}
#: Where an audit's container logs look: a week of logs is enough to see an
#: ongoing abuse without reading years of history on every run.
DEFAULT_LOG_SECONDS = 7 * 86400


@dataclass
class AuditOptions:
    containers: list[str] = field(default_factory=list)
    daemon_json: Path = facts.DAEMON_JSON
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
        self.v6 = facts.host_ipv6_addresses()
        self.ipv6_off = facts.ipv6_off(self.v6)  # why no IPv6 client can reach this host, or None
        self.closed_paths: list[str] = []  # docker-proxy paths that IPv6 being off keeps shut
        self.v4 = facts.host_ipv4_address() or facts.DOC_ADDRESS
        networks = dockerapi.networks()
        self.containers = load_containers(options.containers, networks)
        self.stacks = stacks.recognise([c.data for c in self.containers], networks)
        self.stack_of = {m.ref.id: s for s in self.stacks for m in s.members}
        self._docker_version: str | None = None
        self.daemon = facts.daemon_config(options.daemon_json)
        self.proxies = hostfacts.docker_proxies()
        self.listeners = hostfacts.tcp_listeners()
        self.v6_paths: dict[str, list[str]] = {}  # container id -> evidence of an IPv6 -> IPv4 path
        self.trust: list[_Trust] = []

    def run(self) -> AuditResult:
        for c in self.containers:
            self.check_published(c)
            self.check_ipv6_mismatch(c)
            self.check_proxy(c)
            self.check_postfix(c)
        self.check_chain()
        if self.ipv6_off:
            self.check_ipv6_off()
        if self.opt.firewall:
            self.check_firewall()
        self.check_logs()
        self.result.sort()
        self.result.stacks = [s.as_dict() for s in self.stacks]
        return self.result

    def add(self, *args: str, fix: stackfix.StackFix | None = None) -> None:
        """A finding; ``fix`` adds the stack's file, setting and check (and its own text, if any)."""
        if fix is None:
            self.result.add(Finding(*args))
            return
        fid, severity, title, evidence, text = args
        self.result.add(
            Finding(
                fid, severity, title, evidence, fix.text or text,
                stack=fix.stack, fix_file=fix.file, fix_setting=fix.setting, check=fix.check,
            )
        )

    def stack(self, c: MailContainer) -> stacks.Stack | None:
        return self.stack_of.get(c.id)

    @property
    def docker_version(self) -> str:
        """The daemon's version (what "userland-proxy": false implies for IPv6 depends on it)."""
        if self._docker_version is None:
            self._docker_version = str(dockerapi.daemon_version().get("Version") or "")
        return self._docker_version

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
            fix=stackfix.publish(
                self.stack(c), c.name, c.service or "", example.host_port, example.container_port, self.v4
            ),
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
            if hostfacts.is_ipv6(ln.address)
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
        ports_text = ", ".join(str(p) for p in sorted(proxy_ports or {ln.port for ln in listen}))
        if self.ipv6_off:
            self.closed_paths.append(f"{c.name} (port {ports_text})")
            return
        if not c.has_ipv6 or found:
            self.v6_paths[c.id] = evidence
        self.add(
            "proxy-ipv6-to-ipv4",
            "medium",
            f"docker-proxy forwards IPv6 clients into {c.name} over IPv4 (port {ports_text})",
            "; ".join(evidence) + f"; daemon: {self.daemon.describe()}. Postfix sees every IPv6 client "
            "as the bridge gateway.",
            f'set "userland-proxy": false in {self.daemon.path} (or give the network IPv6 with '
            '"ip6tables": true), or publish on an IPv4 address only '
            f"(`-p {self.v4}:{next(iter(ports.values())).host_port if ports else 25}:25`)",
            fix=stackfix.userland_proxy(self.stack(c), self.daemon.path, self.docker_version),
        )

    def check_ipv6_off(self) -> None:
        """IPv6 is off here: say that the postmortem's path is not exposed, and what would reopen it."""
        if self.closed_paths:
            what = "docker-proxy would forward IPv6 clients over IPv4 into " + ", ".join(self.closed_paths)
            fix = (
                "nothing to do while IPv6 stays off; before enabling it, publish those ports on an IPv4 "
                f'address only or set "userland-proxy": false in {self.daemon.path}, then audit again'
            )
        else:
            what = "no docker-proxy forwards IPv6 clients into a mail container"
            fix = "nothing to do while IPv6 stays off; audit again after enabling it"
        self.add(
            "ipv6-disabled",
            "info",
            "IPv6 is disabled: the IPv6 -> docker-proxy relay path is not exposed",
            f"{self.ipv6_off} (read in this network namespace) and no interface has a global IPv6 "
            f"address, so no IPv6 client can connect; {what}",
            fix,
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
        value = postconf(c, "mynetworks")
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
                fix=stackfix.trusts_gateway(self.stack(c), c.name, gw, value, " ".join(keep)),
            )
        xclient = postconf(c, "smtpd_authorized_xclient_hosts") if "SUBNET" in c.env else None
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
                fix=stackfix.permit_docker(self.stack(c), c.name),
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
                    fix=stackfix.mailu_var(self.stack(c), c.name, var, self._front_name(c)),
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
                fix=self._chain_fix(mine),
            )

    def _chain_fix(self, c: MailContainer) -> stackfix.StackFix:
        """The chain's fix in the stack's terms, keeping the generic text's two links."""
        base = stackfix.relay_path(self.stack(c), self.v4, self.daemon.path)
        text = (
            f"{base.text}. Fix either link, best both: the trust (see the stack's trust finding) and the path "
            f'(publish on `{self.v4}:25:25` or set "userland-proxy": false)'
        )
        return stackfix.StackFix(base.stack, base.file, base.setting, base.check, text)

    def _front_name(self, c: MailContainer) -> str:
        """Mailu: the container that publishes the ports (front), else this one."""
        stack = self.stack(c)
        front = [m.name for m in stack.inbound if m.service == "front"] if stack else []
        return front[0] if front else c.name

    # 5 ---------------------------------------------------------------
    def check_firewall(self) -> None:
        published = [(c, b) for c in self.containers for b in c.mail_bindings if b.everywhere]
        if not published:
            return
        ufw = facts.ufw_enabled()
        dump = facts.iptables_save("iptables-save")
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
            what.append(f"UFW is enabled ({facts.UFW_CONF})")
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


def audit(options: AuditOptions | None = None) -> AuditResult:
    """Run checks 1-6. Raises Unavailable/PrivilegeError when Docker cannot be read."""
    dockerapi.ping("lockdown audit")
    return Auditor(options or AuditOptions()).run()


