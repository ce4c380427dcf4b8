"""``snapshot.network``: the "before" picture of addresses, routes, IPv6 sysctls and listeners.

Taken before containment changes anything, it is what an operator compares
against when deciding whether restore put the host back as it was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockdown import hostfacts, netlink
from lockdown.actions.base import Action, EvidenceFile, StepContext, UndoRecord

IPV6_CONF = Path("/proc/sys/net/ipv6/conf")
GLOBAL_SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv6/conf/all/disable_ipv6",
    "net/ipv6/conf/default/accept_ra",
    "net/ipv6/conf/default/autoconf",
)


def ipv6_sysctls() -> dict[str, dict[str, str]]:
    """Interface (plus ``all`` and ``default``) -> every readable key under /proc/sys/net/ipv6/conf.

    A few keys are unreadable by design (stable_secret when unset raises
    EIO); they are left out rather than failing the snapshot.
    """
    out: dict[str, dict[str, str]] = {}
    try:
        ifaces = sorted(os.listdir(IPV6_CONF))
    except FileNotFoundError:  # IPv6 disabled in the kernel
        return out
    for iface in ifaces:
        values: dict[str, str] = {}
        try:
            keys = sorted(os.listdir(IPV6_CONF / iface))
        except OSError:
            continue
        for key in keys:
            try:
                values[key] = " ".join((IPV6_CONF / iface / key).read_text().split())
            except OSError:
                continue
        out[iface] = values
    return out


def global_sysctls() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in GLOBAL_SYSCTLS:
        try:
            out[name.replace("/", ".")] = Path("/proc/sys", name).read_text().strip()
        except OSError:
            out[name.replace("/", ".")] = None
    return out


def network_state() -> dict[str, Any]:
    """Links, addresses and routes (IPv4 and IPv6, every table), sysctls and listening sockets."""
    links = netlink.list_links()
    addresses = netlink.dump_addresses(family=None)
    routes = netlink.dump_routes(family=None, include_local=True)
    listening = [s.as_dict() for s in hostfacts.collect_sockets() if s.listening]
    return {
        "collected_at": time.time(),
        "links": [link.as_dict() for link in links],
        "addresses": [a.as_dict() for a in addresses],
        "routes": [r.as_dict() for r in routes],
        "ipv6_conf": ipv6_sysctls(),
        "sysctls": global_sysctls(),
        "listening": listening,
    }


@dataclass(frozen=True)
class Params(EvidenceFile):
    file: str = "network.json"


class SnapshotNetwork(Action[Params]):
    """Record interfaces, addresses, routes, per-interface IPv6 sysctls and listening sockets.

    Addresses are recorded with flags, lifetimes and scope, routes of every
    table (including the local table) with gateway, metric and protocol:
    enough to compare with the state after a restore. Everything is read in
    the current network namespace.

    Parameters:
      file: evidence file name (default ``network.json``).

    Example::

        [[steps]]
        id = "network-before"
        action = "snapshot.network"
    """

    name = "snapshot.network"
    Params = Params

    def describe(self) -> str:
        return f"record addresses, routes, IPv6 sysctls and listening sockets to evidence/{self.params.file}"

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        state = network_state()
        entry = ctx.write_json(self.params.file, state)
        v6_global = [
            a for a in state["addresses"] if a["family"] == netlink.AF_INET6 and a["scope"] == netlink.SCOPE_GLOBAL
        ]
        v4 = [a for a in state["addresses"] if a["family"] == netlink.AF_INET]
        ctx.note(
            f"{len(state['links'])} interfaces, {len(v4)} IPv4 and {len(v6_global)} global IPv6 address(es), "
            f"{sum(1 for r in state['routes'] if r['table'] != netlink.RT_TABLE_LOCAL)} routes, "
            f"{len(state['listening'])} listening sockets -> {entry.path}"
        )
        by_if: dict[str, list[str]] = {}
        for a in v6_global:
            by_if.setdefault(a["ifname"], []).append(f"{a['address']}/{a['prefixlen']}")
        for ifname, cidrs in by_if.items():
            conf = state["ipv6_conf"].get(ifname, {})
            ctx.note(
                f"{ifname}: global IPv6 {', '.join(cidrs)} "
                f"(accept_ra={conf.get('accept_ra', '?')}, autoconf={conf.get('autoconf', '?')}, "
                f"forwarding={conf.get('forwarding', '?')})"
            )
        defaults = [r for r in state["routes"] if r["dst"] == "default" and r["table"] != netlink.RT_TABLE_LOCAL]
        for r in defaults:
            fam = "IPv6" if r["family"] == netlink.AF_INET6 else "IPv4"
            ctx.note(f"{fam} default route via {r['gateway'] or '-'} dev {r['dev'] or '-'} metric {r['metric']}")
        ctx.result.update(
            {
                "interfaces": [link["name"] for link in state["links"]],
                "global_ipv6": by_if,
                "default_routes": [f"{r['gateway'] or '-'} dev {r['dev'] or '-'}" for r in defaults],
                "listening": [f"{s['proto']}{'6' if s['family'] == 'inet6' else ''} {s['local']}:{s['lport']}"
                              for s in state["listening"]][:50],
            }
        )
