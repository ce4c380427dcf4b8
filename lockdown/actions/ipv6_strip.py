"""``ipv6.strip``: remove global IPv6 addresses, and put them back exactly as they were.

In the postmortem the spam stopped the moment the host's IPv6 addresses went
away (a container's SMTP port was published on ``:::25``). Removing them is
quick and complete; the hard part is giving them back identically, so
``prepare`` records every attribute the kernel will let us set again:
flags from IFA_FLAGS (noprefixroute and mngtmpaddr live above 0xff), the
remaining lifetimes, and the routes on those interfaces (the kernel drops an
address's prefix route with it, and a gateway route may depend on it).

SLAAC would bring addresses straight back, so accept_ra and autoconf are set
to 0 on each targeted interface (old values recorded, whatever they were:
Docker hosts forward, and then RAs are only accepted with accept_ra=2).
Link-local addresses stay: neighbour discovery needs them and they are not
reachable from the internet.

The lockout guard runs in ``preflight``, before anything changes: stripping
the address an operator's SSH session runs over would cut them off in the
middle of an incident.
"""

from __future__ import annotations

import copy
import fnmatch
import ipaddress
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from lockdown import netlink
from lockdown.actions.base import Action, ParamError, StepContext, UndoRecord, fail
from lockdown.errors import BadInput, LockdownError, Setting
from lockdown.hostfacts import network_managers as suspect_managers
from lockdown.hostfacts import plain_ip as _plain_ip
from lockdown.hostfacts import sshd_ancestors as _sshd_ancestors
from lockdown.hostfacts import sshd_pids as _sshd_pids
from lockdown.hostfacts import tcp_established as _tcp_established
from lockdown.netlink import AF_INET6, Address, Route
from lockdown.sysctl import PROC_SYS, read_sysctl, write_sysctl

SYSCTL_KEYS = ("accept_ra", "autoconf")
RECORD_VERSION = 1
_GLOB_CHARS = set("*?[")
ADDR_PROTO_NAMES = {1: "kernel (loopback)", 2: "kernel SLAAC (router advertisement)", 3: "kernel (link-local)"}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)


@dataclass(frozen=True)
class Params:
    interfaces: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    keep_operator_session: bool = True

    def __post_init__(self) -> None:
        for i, pattern in enumerate(self.interfaces):
            if not pattern or "/" in pattern or any(c.isspace() for c in pattern) or len(pattern) > 64:
                raise ParamError(f"interfaces[{i}]", f"expected an interface name or glob, got {pattern!r}")
        for i, cidr in enumerate(self.keep):
            try:
                _net(cidr)
            except ValueError:
                raise ParamError(
                    f"keep[{i}]", f"expected an address or CIDR like 2001:db8::1/128, got {cidr!r}"
                ) from None

    def keeps(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in _net(cidr) for cidr in self.keep)


# ------------------------------------------------------------ what to strip


def _fmt_lifetime(addr: Address) -> str:
    if addr.valid == netlink.INFINITE:
        return ""
    return f"valid {addr.valid}s, preferred {addr.preferred}s"


def describe_address(addr: Address) -> str:
    """``2001:db8::1/64 (nodad noprefixroute; valid 297s, preferred 197s)``."""
    shown = netlink.SETTABLE_ADDR_FLAGS | netlink.IFA_F_TEMPORARY  # not DAD/lifetime state
    flags = " ".join(n for bit, n in netlink.ADDR_FLAGS.items() if addr.flags & bit & shown)
    extra = "; ".join(x for x in (flags, _fmt_lifetime(addr)) if x)
    return f"{addr.cidr} ({extra})" if extra else addr.cidr


def strippable(addr: Address, params: Params) -> bool:
    """A global-scope (ULA included) IPv6 address that ``keep`` does not cover."""
    return addr.family == AF_INET6 and addr.scope == netlink.SCOPE_GLOBAL and not params.keeps(addr.address)


@dataclass
class Survey:
    """Target interfaces and the addresses that would go, read from the live system."""

    interfaces: list[str]
    addresses: list[Address]
    skipped_kept: list[Address]
    #: interfaces left out because IPv6 is off on them, with the reason (``ipv6_off``)
    disabled: dict[str, str] = field(default_factory=dict)


def ipv6_off(ifname: str) -> str | None:
    """Why ``ifname`` can hold no IPv6 address (the sysctl that says so), or None when it can.

    Servers often run with ``net.ipv6.conf.all.disable_ipv6=1``: there is then nothing to
    strip and no IPv6 path into docker-proxy, which the step says instead of failing or
    writing accept_ra/autoconf on interfaces that cannot take an address anyway.
    """
    if not (PROC_SYS / "net" / "ipv6").is_dir():
        return "the kernel has IPv6 disabled (booted with ipv6.disable=1)"
    try:
        value = read_sysctl(_sysctl_name(ifname, "disable_ipv6"))
    except BadInput:
        return None
    return f"net.ipv6.conf.{ifname}.disable_ipv6=1" if value == "1" else None


def host_ipv6_off(names: list[str]) -> str | None:
    """Why no interface of ``names`` (the non-loopback ones) can hold IPv6, or None if one can."""
    reasons = [ipv6_off(n) for n in names]
    if not names or not all(reasons):
        return None
    if not (PROC_SYS / "net" / "ipv6").is_dir():
        return str(reasons[0])
    if read_sysctl("net/ipv6/conf/all/disable_ipv6") == "1":
        return "net.ipv6.conf.all.disable_ipv6=1"
    return "disable_ipv6=1 on " + ", ".join(names)


def survey(params: Params) -> Survey:
    """Resolve ``interfaces`` (names or globs) and list what would be stripped.

    With no ``interfaces``, the targets are the non-loopback interfaces with
    at least one global address that ``keep`` does not cover: an interface
    whose only global address is kept is left entirely alone (accept_ra
    included), since that is usually the management interface.
    Raises BadInput for a name or glob that matches no interface.
    """
    if params.interfaces:  # names are enough: no link dump (see netlink._names)
        addrs = netlink.dump_addresses(AF_INET6)
        targets, disabled = _named_targets(params.interfaces, netlink.interface_names())
    else:
        links, addrs = netlink.links_and_addresses(AF_INET6)
        names = [link.name for link in links]
        loopback = {link.name for link in links if link.loopback}
        with_global = {a.ifname for a in addrs if strippable(a, params)}
        targets = [n for n in names if n in with_global and n not in loopback]
        host_off = None if targets else host_ipv6_off([n for n in names if n not in loopback])
        disabled = {"host": host_off} if host_off else {}
    on_targets = [a for a in addrs if a.ifname in targets]
    return Survey(
        disabled=disabled,
        interfaces=targets,
        addresses=[a for a in on_targets if strippable(a, params)],
        skipped_kept=[
            a
            for a in on_targets
            if a.family == AF_INET6 and a.scope == netlink.SCOPE_GLOBAL and params.keeps(a.address)
        ],
    )


def _named_targets(patterns: list[str], names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(targets, {name: why IPv6 is off there}) for ``interfaces`` names or globs; BadInput for a miss."""
    targets: list[str] = []
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern):
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise BadInput(f"interfaces: {pattern!r} matches no interface (have: {', '.join(names)})")
        elif pattern in names:
            matched = [pattern]
        else:
            raise BadInput(f"interfaces: no interface named {pattern!r} (have: {', '.join(names)})")
        targets.extend(n for n in matched if n not in targets)
    disabled = {n: why for n in targets if (why := ipv6_off(n))}
    return [n for n in targets if n not in disabled], disabled


# ------------------------------------------------------------ lockout guard


@dataclass(frozen=True)
class Session:
    """An SSH session we must not cut: its local (server-side) address and how we know."""

    local: str
    remote: str
    how: str


def operator_sessions(
    env: dict[str, str] | None = None, *, over: Collection[str] | None = None
) -> list[Session]:
    """The operator's SSH session(s), by the best evidence available.

    1. SSH_CONNECTION ("client port server port") names the server address.
    2. SSH_CLIENT has only the client side: the server address is found in
       the established connection to that client, or else as the source the
       kernel would use to reach it.
    3. sshd processes among our ancestors: their established connections.
    4. If none of that finds anything (sudo drops SSH_*, tmux detaches us
       from sshd), every established sshd connection counts: when we cannot
       tell which session is the operator's, protecting all of them is the
       safe side, and keep / --force remain the way out.

    ``over`` (plain addresses) narrows 3 and 4 to connections whose server
    side is one of them: the lockout guard passes what it would strip, so on
    a host where no connection runs over those addresses no process is read
    (serve's preflight sits between the alert and the first change).
    """
    env = dict(os.environ) if env is None else env
    out: list[Session] = []
    conn = env.get("SSH_CONNECTION", "").split()
    client = env.get("SSH_CLIENT", "").split()
    peer = _plain_ip(client[0]) if len(client) >= 2 else None
    within = None if over is None else {ipaddress.ip_address(a) for a in over}

    def wanted(local: str, remote: str, rport: int) -> bool:
        if peer is not None and remote == peer and str(rport) == client[1]:
            return True
        return within is None or ipaddress.ip_address(local) in within

    # Only an sshd process can own a session found by 3 and 4: owners are looked for among
    # sshd's descriptors alone (under a bot flood docker-proxy holds connections over the
    # very addresses to strip, and reading every process's descriptors is the slow part).
    sshd: set[int] = set()

    def sshd_now() -> set[int]:
        sshd.update(_sshd_pids())
        return sshd

    # Only an IPv6 local address can be wanted when no SSH_CLIENT names a peer (whose connection
    # may be IPv4) and every address in ``over`` is IPv6: the IPv4 table is then not read at all.
    v6_only = peer is None and within is not None and all(ip.version == 6 for ip in within)
    socks = _tcp_established(wanted, owners_among=sshd_now, ipv6_only=v6_only)
    if len(conn) >= 4 and (local := _plain_ip(conn[2])):
        out.append(Session(local, f"{conn[0]} port {conn[1]}", "SSH_CONNECTION"))
    elif peer is not None:
        match = [s for s in socks if s[1] == peer and str(s[2]) == client[1]]
        local = match[0][0] if match else netlink.route_source(peer)
        if local:
            out.append(Session(local, f"{peer} port {client[1]}", "SSH_CLIENT"))
    if not any(pid is not None for *_, pid in socks):  # no sshd holds them (a flood's, docker-proxy's)
        return out
    ancestors = _sshd_ancestors()
    for local, remote, rport, pid in socks:
        if pid in ancestors:
            out.append(Session(local, f"{remote} port {rport}", f"sshd pid {pid}"))
    if not out:
        for local, remote, rport, pid in socks:
            if pid in sshd:
                out.append(Session(local, f"{remote} port {rport}", f"established sshd connection, pid {pid}"))
    return out


# ------------------------------------------------------------ the action


#: Seconds for which prepare takes the preflight's survey as it is (see ``Ipv6Strip.prepare``).
SURVEY_REUSE = 1.0


def _sysctl_name(ifname: str, key: str) -> str:
    # slash form: interface names may contain dots (eth0.100)
    return f"net/ipv6/conf/{ifname}/{key}"


def _addr_key(a: dict[str, Any] | Address) -> tuple[str, int]:
    if isinstance(a, Address):
        return (ipaddress.ip_address(a.address).compressed, a.prefixlen)
    return (ipaddress.ip_address(a["address"]).compressed, int(a["prefixlen"]))


class Ipv6Strip(Action[Params]):
    """Remove global IPv6 addresses (ULA included) and block SLAAC; restore puts them back exactly.

    Link-local addresses are kept. Before anything changes, each address is
    recorded with its prefix length, scope, flags (nodad, noprefixroute,
    mngtmpaddr, home, ...), label and remaining lifetimes, together with the
    IPv6 routes on those interfaces (the default route included) and the
    old accept_ra/autoconf values. Right after removing, the step checks
    that no global address is left and strips whatever came back, naming the
    network manager it suspects; ``lockdown guard INCIDENT`` keeps them away
    afterwards (and accept_ra/autoconf at 0). Restore re-adds the
    addresses (finite lifetimes get what remains of them), then any missing
    routes, then the sysctls. If an interface has gone, the rest is restored
    and the step reports that part as failed.

    The step refuses to run (exit 2, nothing changed) when the operator's
    SSH session runs over an address it would strip, unless ``keep`` covers
    that address or ``--force`` is given.

    Parameters:
      interfaces: interface names or globs (``eth*``). Default: every
        non-loopback interface with a global IPv6 address not covered by ``keep``.
      keep: addresses or CIDRs that are never stripped, e.g. ``["2001:db8::22/128"]``.
      keep_operator_session: refuse to strip the address of the operator's
        own SSH session (default true).

    Example::

        [[steps]]
        id = "strip-v6"
        action = "ipv6.strip"
        interfaces = ["eth0"]
        keep = ["2001:db8:0:1::22/128"]
    """

    name = "ipv6.strip"
    #: Putting the addresses back reopens the IPv6 path: restore's gate probes the relay first.
    reopens_path = True
    Params = Params
    requires = ("root",)

    # filled in by preflight/prepare; the class defaults mean "not surveyed yet"
    _survey: Survey | None = None
    _surveyed_at = 0.0
    _forced: tuple[str, ...] = ()

    def describe(self) -> str:
        where = ", ".join(self.params.interfaces) or "every interface with one"
        keep = f", keeping {', '.join(self.params.keep)}" if self.params.keep else ""
        return f"remove global IPv6 addresses from {where}{keep}; accept_ra=0, autoconf=0"

    def preflight(self) -> None:
        found = survey(self.params)
        self._survey, self._surveyed_at = found, time.monotonic()
        for ifname in found.interfaces:
            for key in SYSCTL_KEYS:
                read_sysctl(_sysctl_name(ifname, key))
        if self.params.keep_operator_session:
            self._guard(found)

    def _guard(self, found: Survey) -> None:
        if not found.addresses:
            return  # nothing to strip: no session can be cut
        by_ip = {ipaddress.ip_address(a.address): a for a in found.addresses}
        for session in operator_sessions(over=[a.address for a in found.addresses]):
            try:
                addr = by_ip.get(ipaddress.ip_address(session.local))
            except ValueError:
                continue
            if addr is None:
                continue
            if self.force:
                self._forced += (
                    f"--force: stripping {addr.cidr} from {addr.ifname} although the operator's SSH session "
                    f"({session.how}, from {session.remote}) runs over it",
                )
                continue
            raise BadInput(
                f"{addr.cidr} on {addr.ifname} carries the operator's SSH session "
                f"({session.how}, from {session.remote}); stripping it would cut this connection",
                (
                    "keep it with ",
                    Setting("keep", (f"{session.local}/128",)),
                    ", or rerun with --force to strip it anyway",
                ),
            )

    def resolved(self) -> dict[str, Any]:
        if self._survey is None:
            return {}
        out: dict[str, Any] = {
            "interfaces": self._survey.interfaces,
            "strip": [a.cidr for a in self._survey.addresses],
        }
        if self._survey.disabled:
            out["ipv6_disabled"] = [f"{n}: {why}" if n != "host" else why for n, why in self._survey.disabled.items()]
        return out

    def prepare(self, ctx: StepContext) -> UndoRecord:
        # The preflight's survey, when it is that recent (a run's first step: the incident was
        # created in between): surveyed again, it cost a netlink dump between the alert and the
        # cut. What changed since is caught in apply: an address gone by then is taken out of
        # the record (``_delete``), one added since is stripped and journaled (``_strip_leftovers``).
        if self._survey is not None and time.monotonic() - self._surveyed_at < SURVEY_REUSE:
            found = self._survey
        else:
            found = survey(self.params)
        self._survey, self._surveyed_at = found, 0.0
        interfaces = []
        for ifname in found.interfaces:
            interfaces.append(
                {
                    "ifname": ifname,
                    "addresses": [a.as_dict() for a in found.addresses if a.ifname == ifname],
                    "sysctls": {key: read_sysctl(_sysctl_name(ifname, key)) for key in SYSCTL_KEYS},
                }
            )
        routes = [
            r.as_dict()
            for r in netlink.dump_routes(AF_INET6)
            if r.devices & set(found.interfaces)
        ]
        return {
            "version": RECORD_VERSION,
            "recorded_at": time.time(),
            "interfaces": interfaces,
            "routes": routes,
            "keep": list(self.params.keep),
        }

    # -------------------------------------------------------------- apply

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        assert undo is not None
        record = copy.deepcopy(undo)
        for line in self._forced:
            ctx.note(line)
        disabled = self._survey.disabled if self._survey else {}
        for ifname, why in disabled.items():
            if ifname == "host":
                ctx.note(
                    f"IPv6 is disabled on this host ({why}): no interface can hold an IPv6 address, so there "
                    "is nothing to strip and no IPv6 path into docker-proxy; nothing changed"
                )
            else:
                ctx.note(f"{ifname}: IPv6 is disabled ({why}): no IPv6 address to strip; left as it is")
        if disabled:
            ctx.result["ipv6_disabled"] = dict(disabled)
        if not record["interfaces"]:
            if not disabled:
                ctx.note("no interface has a global IPv6 address outside keep: nothing to strip")
            ctx.write_json("ipv6-before.json", record)
            ctx.result["removed"] = {}
            return
        for kept in self._survey.skipped_kept if self._survey else []:
            ctx.note(f"{kept.ifname}: keeping {kept.cidr} (covered by keep)")
        for iface in record["interfaces"]:
            ifname = iface["ifname"]
            changed = []
            for key, old in iface["sysctls"].items():
                if old != "0":
                    write_sysctl(_sysctl_name(ifname, key), "0")
                    changed.append(f"{key} {old} -> 0")
            if changed:
                ctx.note(f"{ifname}: SLAAC blocked ({', '.join(changed)})")
            else:
                ctx.note(f"{ifname}: accept_ra and autoconf already 0")
        removed: dict[str, list[str]] = {}
        for iface in record["interfaces"]:
            ifname = iface["ifname"]
            gone = []
            for a in list(iface["addresses"]):
                addr = Address.from_dict(a)
                if netlink.delete_address(ifname, addr.address, addr.prefixlen):
                    gone.append(describe_address(addr))
                    continue
                # Not removed by this run: restore must not add it back (undo is exact).
                iface["addresses"].remove(a)
                ctx.amend_undo(record, already_gone=f"{addr.cidr} on {ifname}")
                ctx.note(f"{ifname}: {addr.cidr} was already gone; left out of the restore")
            removed[ifname] = gone
            if gone:
                ctx.note(f"{ifname}: removed {len(gone)} address(es): {', '.join(gone)}")
        # The record (journaled before anything changed) as evidence, written once the path is
        # closed: writing it first delayed the removal by a file and its fsyncs.
        ctx.write_json("ipv6-before.json", record)
        # One check right after removing; what comes back later is `lockdown guard`'s job
        # (the run used to sleep a second here and check again).
        came_back = self._strip_leftovers(ctx, record, "after removing")
        targets = self._targets(record)
        left = [a for a in netlink.dump_addresses(AF_INET6) if a.ifname in targets and strippable(a, self.params)]
        after = {
            "addresses": [a.as_dict() for a in netlink.dump_addresses(AF_INET6)],
            "routes": [r.as_dict() for r in netlink.dump_routes(AF_INET6)],
        }
        ctx.write_json("ipv6-after.json", after)
        ctx.result.update({"removed": removed, "came_back": came_back})
        if came_back:
            suspects = suspect_managers()
            ctx.result["suspects"] = suspects
            who = "; ".join(suspects) or "no known network manager is running (a script, or a DHCPv6 client?)"
            ctx.note(f"something re-adds addresses; suspect: {who}")
        if left:
            raise fail(
                "global IPv6 address(es) still present after stripping: "
                + ", ".join(f"{a.cidr} on {a.ifname}" for a in left),
                "stop whatever re-adds them (see the suspects above), then run the step again",
            )
        total = sum(len(v) for v in removed.values())
        ctx.note(f"verified: no global IPv6 address left on {', '.join(targets)} ({total} removed)")

    @staticmethod
    def _targets(record: UndoRecord) -> list[str]:
        return [i["ifname"] for i in record["interfaces"]]

    def _strip_leftovers(self, ctx: StepContext, record: UndoRecord, when: str) -> list[str]:
        """Strip global addresses still (or again) on the targets; journal new ones first."""
        by_if = {i["ifname"]: i for i in record["interfaces"]}
        current = [a for a in netlink.dump_addresses(AF_INET6) if a.ifname in by_if and strippable(a, self.params)]
        if not current:
            return []
        new = []
        for a in current:
            iface = by_if[a.ifname]
            if _addr_key(a) not in {_addr_key(x) for x in iface["addresses"]}:
                # newest first, as in a kernel dump: restore re-adds in reverse
                iface["addresses"].insert(0, a.as_dict())
                new.append(a)
        if new:
            ctx.amend_undo(record)
        out = []
        for a in current:
            origin = ADDR_PROTO_NAMES.get(a.proto or 0, "")
            known = "" if a in new else " (re-added)"
            ctx.note(
                f"{a.ifname}: {describe_address(a)} appeared {when}{known}"
                + (f", added by {origin}" if origin else "")
                + ": removing it"
            )
            netlink.delete_address(a.ifname, a.address, a.prefixlen)
            out.append(f"{a.cidr} on {a.ifname} ({when})")
        return out

    # -------------------------------------------------------------- undo

    @classmethod
    def undo(cls, ctx: StepContext, record: UndoRecord) -> None:
        elapsed = max(0.0, time.time() - float(record.get("recorded_at", time.time())))
        links = {link.name for link in netlink.list_links()}
        failures: list[str] = []
        present_ifaces = []
        for iface in record["interfaces"]:
            ifname = iface["ifname"]
            if ifname not in links:
                cidrs = [f"{a['address']}/{a['prefixlen']}" for a in iface["addresses"]]
                msg = f"interface {ifname} is gone: cannot restore {', '.join(cidrs) or 'its settings'} or its sysctls"
                ctx.note(msg)
                failures.append(msg)
                continue
            present_ifaces.append(iface)
            try:
                cls._restore_addresses(ctx, iface, elapsed)
            except LockdownError as exc:
                failures.append(f"{ifname}: {exc.message}")
        cls._restore_routes(ctx, record, links, elapsed, failures)
        for iface in present_ifaces:
            ifname = iface["ifname"]
            for key, old in iface["sysctls"].items():
                name = _sysctl_name(ifname, key)
                try:
                    current = read_sysctl(name)
                    if current == old:
                        ctx.note(f"{ifname}: {key} already {old}")
                        continue
                    write_sysctl(name, old)
                    ctx.note(f"{ifname}: {key} {current} -> {old}")
                except LockdownError as exc:
                    failures.append(f"{ifname}: {exc.message}")
        if failures:
            raise fail(
                "could not restore everything: " + "; ".join(failures),
                "the rest was restored; recreate what is missing by hand (the record is in evidence/ipv6-before.json)",
            )

    @classmethod
    def _restore_addresses(cls, ctx: StepContext, iface: dict[str, Any], elapsed: float) -> None:
        ifname = iface["ifname"]
        current = {_addr_key(a): a for a in netlink.dump_addresses(AF_INET6, ifname=ifname)}
        added, already = [], []
        # the record is in dump order (newest first); oldest first gives the same order back
        for a in reversed(iface["addresses"]):
            addr = Address.from_dict(a)
            have = current.get(_addr_key(addr))
            if have is not None:
                settable = netlink.SETTABLE_ADDR_FLAGS
                differ = (have.flags & settable) != (addr.flags & settable)
                already.append(addr.cidr + (" (with different flags: left as it is)" if differ else ""))
                continue
            preferred, valid = addr.preferred, addr.valid
            if valid != netlink.INFINITE:
                valid = int(valid - elapsed)
                if valid <= 0:
                    ctx.note(f"{ifname}: {addr.cidr} not re-added: its valid lifetime ran out while it was stripped")
                    continue
            if preferred != netlink.INFINITE:
                preferred = max(0, int(preferred - elapsed))
            netlink.add_address(
                ifname, addr.address, addr.prefixlen, flags=addr.flags, preferred=preferred, valid=valid,
                label=addr.label, proto=addr.proto,
            )
            shown = Address.from_dict({**a, "preferred": preferred, "valid": valid})
            temp = " (no longer temporary: the kernel cannot re-create a privacy address)" if (
                addr.flags & netlink.IFA_F_TEMPORARY) else ""
            added.append(describe_address(shown) + temp)
        if added:
            ctx.note(f"{ifname}: re-added {len(added)} address(es): {', '.join(added)}")
        if already:
            ctx.note(f"{ifname}: already present: {', '.join(already)}")

    @classmethod
    def _restore_routes(
        cls, ctx: StepContext, record: UndoRecord, links: set[str], elapsed: float, failures: list[str]
    ) -> None:
        routes = [Route.from_dict(r) for r in record.get("routes", [])]
        if not routes:
            return
        current = {r.key(): r for r in netlink.dump_routes(AF_INET6)}
        added, fixed, already = [], [], 0
        # on-link routes first: a gateway must be reachable when its route is added
        for route in sorted(routes, key=lambda r: bool(r.gateway or r.multipath)):
            if route.devices - links:
                continue  # reported with its interface
            expires = None
            if route.expires:
                expires = int(route.expires - elapsed)
                if expires <= 0:
                    ctx.note(f"route {route.describe()} not re-added: it would have expired")
                    continue
            have = current.get(route.key())
            try:
                if have is None:
                    if netlink.add_route(route, expires=expires):
                        added.append(route.describe())
                    else:
                        already += 1
                elif route.prefsrc and have.prefsrc != route.prefsrc:
                    # deleting an address strips it from routes that used it as src
                    netlink.add_route(route, expires=expires, replace=True)
                    fixed.append(f"{route.describe()} src {route.prefsrc}")
                else:
                    already += 1
            except LockdownError as exc:
                failures.append(exc.message)
        if fixed:
            ctx.note(f"put back the source address of {len(fixed)} route(s): {'; '.join(fixed)}")
        if added:
            ctx.note(f"re-added {len(added)} route(s): {'; '.join(added)}")
        if already:
            ctx.note(f"{already} route(s) already present")
