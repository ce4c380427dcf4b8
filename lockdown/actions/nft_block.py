"""``nft.block``: drop new SMTP connections in lockdown's own nftables table; undo deletes it.

The narrow cut. Instead of pausing the mail server and stripping every IPv6
address of the host, drop only the abused path: new IPv6 connections to the
published SMTP ports (inbound), or new connections to port 25 from the mail
container's networks (outbound: queued spam cannot leave).

Where the rules hook, and why (both directions use the same hook):

* ``prerouting`` at priority -150 (nft's "mangle"). Conntrack has run (-200),
  so ``ct state new`` works; Docker's DNAT (nat prerouting, -100) has not, so
  the destination is still the host's own address and the *published* port.
  That one hook sees both of Docker's ways in: with docker-proxy
  (``userland-proxy: true``, every IPv6 client of an IPv4-only network) the
  packet then goes to INPUT, where docker-proxy accepts it; with kernel NAT
  (``userland-proxy: false``) it is rewritten to the container's address and
  port 25 and FORWARDed. A filter on INPUT would miss the second, one on
  FORWARD the first and would see the container's port, not the published one.
* Inbound rules match ``fib daddr type local``: only connections to the
  host's own addresses (what Docker publishes, as Docker's own DNAT rule
  matches ``addrtype LOCAL``), never traffic the host routes elsewhere.
* Outbound rules match the source address in the container networks'
  subnets (before any masquerade) and catch delivery to the outside
  (forwarded) and to a relay on the host itself (local) alike.

The table is ``inet lockdown_<incident>``, one per incident; each step owns
one chain in it (named after the step). Nothing else is listed, changed or
flushed: other tables (Docker's, ufw's, firewalld's, iptables-nft's) are only
recorded verbatim as evidence. Undo deletes the step's chain, and the table
once no chain is left.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from lockdown import dockerapi, nft
from lockdown.actions.base import ParamError, StepContext, UndoRecord
from lockdown.actions.containers import ContainerAction, ContainerParams
from lockdown.errors import BadInput

TABLE_FAMILY = "inet"
HOOK = "prerouting"
#: After conntrack (-200), before Docker's DNAT (-100): see the module docstring.
PRIORITY = -150
SMTP_PORTS = (25, 465, 587)
OUTBOUND_PORTS = (25,)
FAMILIES = {"ip6": ("ipv6",), "ip": ("ipv4",), "both": ("ipv4", "ipv6")}
DIRECTIONS = ("inbound", "outbound")
_NAME_RE = re.compile(r"[^A-Za-z0-9_]")


def table_name(incident_id: str) -> str:
    """``20261122T234500.123456Z-relay-incident-3f2a`` -> ``lockdown_20261122t234500_123456z_3f2a``.

    Ids without microseconds (older versions) keep their shape; anything else is hashed.
    """
    parts = incident_id.split("-")
    stamp = parts[0]
    stamp_ok = re.fullmatch(r"[0-9]{8}T[0-9]{6}(\.[0-9]{6})?Z", stamp) is not None
    if len(parts) >= 2 and stamp_ok and re.fullmatch(r"[0-9a-f]+", parts[-1]):
        return f"lockdown_{stamp.lower().replace('.', '_')}_{parts[-1]}"
    return "lockdown_" + hashlib.sha256(incident_id.encode()).hexdigest()[:12]


def chain_name(step_id: str) -> str:
    """The step id as an nft identifier; a hash suffix keeps ``a-b`` and ``a_b`` apart."""
    safe = _NAME_RE.sub("_", step_id)[:40] or "step"
    if safe != step_id:
        safe += "_" + hashlib.sha256(step_id.encode()).hexdigest()[:6]
    return safe


@dataclass(frozen=True)
class NftParams(ContainerParams):
    ports: list[int] = field(default_factory=list)
    family: str = "ip6"
    direction: str = "inbound"

    def __post_init__(self) -> None:
        super().__post_init__()
        for i, port in enumerate(self.ports):
            if not 0 < port < 65536:
                raise ParamError(f"ports[{i}]", f"expected a TCP port 1 to 65535, got {port}")
        if self.family not in FAMILIES:
            raise ParamError("family", f'expected "ip6", "ip" or "both", got {self.family!r}')
        if self.direction not in DIRECTIONS:
            raise ParamError("direction", f'expected "inbound" or "outbound", got {self.direction!r}')
        if self.direction == "outbound" and self.container == "none":
            raise ParamError("container", 'direction = "outbound" needs the mail container (its networks), not "none"')

    @property
    def needs_docker(self) -> bool:
        return self.container != "none" and (self.direction == "outbound" or not self.ports)


@dataclass
class Plan:
    """What preflight resolved: the ports, and (outbound) the source subnets."""

    ports: list[int]
    subnets: list[str]
    why_ports: str


class NftBlock(ContainerAction[NftParams]):
    """Drop new SMTP connections in lockdown's own nftables table; restore deletes the table.

    The surgical alternative to pausing the container and stripping the
    host's IPv6: the container keeps running and every other path stays
    open. Rules go into ``table inet lockdown_<incident>`` (one chain per
    step) through ``nft -j``, hooked at prerouting priority -150, so they
    stop new connections whether Docker forwards through docker-proxy or
    through kernel DNAT (``userland-proxy: false``); see docs/nft.md. No
    other table is read into, changed or flushed. Evidence: the whole
    ruleset before the run (read in preflight) and after the step
    (``nft/<step>/ruleset-*.json``), and the
    counters of the step's own rules, read just before the undo deletes
    them (``nft/<step>/counters.json``). Needs ``nft`` (Debian package
    nftables); without it the run stops in preflight, exit 5.

    Parameters:
      {ContainerParams}
      ports: TCP ports to block. Default inbound: the host ports on which the
        containers publish 25, 465 or 587 (else 25, 465 and 587); outbound: 25.
      family: "ip6" (default: the postmortem's path), "ip" or "both".
      direction: "inbound" (new connections to the host's own addresses on
        those ports) or "outbound" (new connections to those ports from the
        container networks' subnets: queued spam cannot leave).

    Example::

        [[steps]]
        id = "block-v6-smtp"
        action = "nft.block"
        container = "mailserver"
        family = "ip6"
        direction = "inbound"
    """

    name = "nft.block"
    container_note = (
        "Its published ports (inbound) or networks (outbound) are what is blocked; "
        '"none" (inbound only) needs no Docker.'
    )
    #: Deleting the table reopens the blocked path: restore's gate probes the relay first.
    reopens_path = True
    Params = NftParams
    requires = ("net_admin",)

    def __init__(self, params: NftParams) -> None:
        super().__init__(params)
        self._plan: Plan | None = None
        self._before: nft.RulesetRead | None = None

    def describe(self) -> str:
        p = self.params
        fam = {"ip6": "IPv6", "ip": "IPv4", "both": "IPv4 and IPv6"}[p.family]
        ports = ", ".join(map(str, p.ports)) if p.ports else None
        if p.direction == "inbound":
            where = f"ports {ports}" if ports else "the SMTP ports published by " + p.target_text()
            return f"drop new inbound {fam} TCP to {where} (nftables, own table)"
        return (
            f"drop new {fam} TCP to port(s) {ports or '25'} from the networks of "
            f"{p.target_text()} (nftables, own table)"
        )

    def preflight(self) -> None:
        nft.binary()
        nft.load_library()  # here, not at the block: serve's warm-up walks this preflight
        self._plan = self.plan()
        # The "before" ruleset: its listing starts here, before the run changes anything, goes
        # on while the run's other checks do, and is collected (waited for) in apply, before the
        # change. Read in apply, it would delay the block it documents.
        self._before = nft.ruleset_read()

    def resolved(self) -> dict[str, Any]:
        out = super().resolved() if self.params.needs_docker else {}
        if self._plan is not None:
            out.update(ports=self._plan.ports, subnets=self._plan.subnets)
        return out

    def plan(self) -> Plan:
        """Ports and subnets from the parameters and, when needed, from Docker. Changes nothing."""
        if self._plan is not None:
            return self._plan
        p = self.params
        refs = self.resolve() if p.needs_docker else []
        inspected = [dockerapi.inspect(r.id, r.name) for r in refs]
        if p.direction == "outbound":
            why = "given" if p.ports else "SMTP delivery"
            return Plan(sorted(set(p.ports or OUTBOUND_PORTS)), self._subnets(refs, inspected), why)
        if p.ports:
            return Plan(sorted(set(p.ports)), [], "given")
        published = sorted({port for d in inspected for port in dockerapi.published_host_ports(d, SMTP_PORTS)})
        if published:
            names = ", ".join(r.name for r in refs)
            return Plan(published, [], f"published by {names} for 25/465/587")
        return Plan(list(SMTP_PORTS), [], "default (no container publishes 25, 465 or 587)")

    def _subnets(self, refs: list[dockerapi.ContainerRef], inspected: list[dict[str, Any]]) -> list[str]:
        wanted = FAMILIES[self.params.family]
        subnets: list[str] = []
        for ref, data in zip(refs, inspected, strict=True):
            found = dockerapi.container_subnets(data, ref.name)
            if not found:
                raise BadInput(
                    f"{ref.name} is on no Docker network with a subnet (host network?): "
                    "its outbound mail cannot be told apart by source address",
                    "block its outbound SMTP in the host's own firewall, or use docker.pause",
                )
            subnets += [s for s in found if ("ipv6" if ":" in s else "ipv4") in wanted]
        if not subnets:
            raise BadInput(
                f'family = "{self.params.family}": the networks of {", ".join(r.name for r in refs)} '
                f"have no {' or '.join(wanted)} subnet, so nothing would be blocked",
                'use family = "ip" or "both" for an IPv4 Docker network',
            )
        return sorted(set(subnets))

    # ------------------------------------------------------------ apply / undo

    def prepare(self, ctx: StepContext) -> UndoRecord:
        """The table and chain the undo deletes; no nft call (the table is the incident's own)."""
        return {"family": TABLE_FAMILY, "table": table_name(ctx.incident_id), "chain": chain_name(ctx.step_id)}

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        assert undo is not None
        plan = self.plan()
        table, chain = undo["table"], undo["chain"]
        rules = self.rules(plan)
        before = (self._before or nft.ruleset_read()).chunks()  # complete before the ruleset changes
        nft.run_batch(chain_commands(table, chain, rules), f"add the rules of {table} chain {chain}")
        with ctx.open_evidence(f"nft/{ctx.step_id}/ruleset-before.json") as fh:
            for chunk in before:
                fh.write(chunk)
        with ctx.open_evidence(f"nft/{ctx.step_id}/ruleset-after.json") as fh:
            nft.dump_ruleset(fh.write)
        ctx.result.update(table=f"{TABLE_FAMILY} {table}", chain=chain, ports=plan.ports, subnets=plan.subnets)
        ctx.note(
            f"table {TABLE_FAMILY} {table}, chain {chain} (hook {HOOK}, priority {PRIORITY}): "
            + "; ".join(r["comment"] for r in rules)
            + f" (ports {plan.why_ports})"
        )

    def rules(self, plan: Plan) -> list[dict[str, Any]]:
        """The rule objects (``expr`` and ``comment``) of this step's chain."""
        p = self.params
        dport = nft.match(nft.payload("tcp", "dport"), {"set": plan.ports})
        new = nft.match({"ct": {"key": "state"}}, "new", op="in")
        tail = [{"counter": None}, {"drop": None}]
        shown = ", ".join(map(str, plan.ports))
        out = []
        if p.direction == "inbound":
            local = nft.match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
            for fam in FAMILIES[p.family]:
                proto = nft.match({"meta": {"key": "nfproto"}}, fam)
                comment = f"lockdown: new {fam} tcp to local port(s) {shown}"
                out.append({"comment": comment, "expr": [proto, local, dport, new, *tail]})
            return out
        for fam, header in (("ipv4", "ip"), ("ipv6", "ip6")):
            nets = [s for s in plan.subnets if (":" in s) == (fam == "ipv6")]
            if nets:
                src = nft.match(nft.payload(header, "saddr"), {"set": [nft.prefix(n) for n in nets]})
                comment = f"lockdown: new {fam} tcp to port(s) {shown} from {', '.join(nets)}"
                out.append({"comment": comment, "expr": [src, dport, new, *tail]})
        return out

    @classmethod
    def undo(cls, ctx: StepContext, record: UndoRecord) -> None:
        family, table, chain = record["family"], record["table"], record["chain"]
        items = nft.list_table(family, table)
        if items is None:
            ctx.note(f"table {family} {table} is already gone: nothing to delete")
            return
        counters = [c for c in nft.rule_counters(items) if c["chain"] == chain]
        ctx.write_json(f"nft/{ctx.step_id}/counters.json", counters)
        dropped = sum(int(c["packets"] or 0) for c in counters)
        chains = nft.chain_names(items)
        commands: list[nft.Command] = []
        if chain in chains:
            ref = {"family": family, "table": table, "name": chain}
            commands += [{"flush": {"chain": ref}}, {"delete": {"chain": ref}}]
        others = [c for c in chains if c != chain]
        if not others:
            commands.append({"delete": {"table": {"family": family, "name": table}}})
        if commands:
            nft.run_batch(commands, f"delete chain {chain} of {family} {table}")
        gone = f"table {family} {table} deleted" if not others else f"chain {chain} deleted ({len(others)} left)"
        ctx.note(f"{gone}; its rules had dropped {dropped} packet(s)")


def chain_commands(table: str, chain: str, rules: list[dict[str, Any]]) -> list[nft.Command]:
    """One transaction: the table and chain (created if absent), emptied, then the rules.

    Flushing first makes a re-run (resume after a crash) give the same rules,
    not twice the rules.
    """
    ref = {"family": TABLE_FAMILY, "table": table, "name": chain}
    base = {**ref, "type": "filter", "hook": HOOK, "prio": PRIORITY, "policy": "accept"}
    commands: list[nft.Command] = [
        {"add": {"table": {"family": TABLE_FAMILY, "name": table}}},
        {"add": {"chain": base}},
        {"flush": {"chain": ref}},
    ]
    for rule in rules:
        commands.append({"add": {"rule": {"family": TABLE_FAMILY, "table": table, "chain": chain, **rule}}})
    return commands
