"""``snapshot.connections``: every inet/inet6 TCP and UDP socket, as JSON evidence.

Who is connected disappears with the incident, so this is recorded first.
The sockets come from lockdown.hostfacts (/proc/net read directly, one
place for every reader of sockets: this action, snapshot.processes,
snapshot.network, the ipv6.strip lockout guard and ``lockdown audit``);
this module only summarises and writes them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from lockdown.actions.base import Action, EvidenceFile, StepContext, UndoRecord
from lockdown.actions.records import write_records
from lockdown.hostfacts import Sock, collect_sockets

MAIL_PORTS = (25, 465, 587)


def _top(counter: Counter[Any], n: int) -> list[list[Any]]:
    return [[k, v] for k, v in counter.most_common(n)]


def summarize(socks: list[Sock]) -> dict[str, Any]:
    """Counts by state, local and remote port, the busiest peers, and mail-port traffic."""
    by_state: Counter[str] = Counter(s.state for s in socks)
    by_proto: Counter[str] = Counter(s.netstat_proto for s in socks)
    by_lport: Counter[int] = Counter(s.lport for s in socks)
    by_rport: Counter[int] = Counter(s.rport for s in socks if s.rport)
    remotes: Counter[str] = Counter(s.remote for s in socks if s.remote)
    mail_listen = [s for s in socks if s.listening and s.lport in MAIL_PORTS]
    mail_out = [s for s in socks if s.rport in MAIL_PORTS]
    mail_in = [s for s in socks if not s.listening and s.lport in MAIL_PORTS]
    return {
        "total": len(socks),
        "by_proto": dict(by_proto),
        "by_state": dict(by_state.most_common()),
        "by_local_port": _top(by_lport, 20),
        "by_remote_port": _top(by_rport, 20),
        "top_remote_addresses": _top(remotes, 10),
        "mail": {
            "listening": [s.short() for s in mail_listen],
            "outbound": {
                "count": len(mail_out),
                "by_state": dict(Counter(s.state for s in mail_out).most_common()),
                "by_remote_port": {str(k): v for k, v in Counter(s.rport for s in mail_out).items()},
                "top_remote_addresses": _top(Counter(s.remote for s in mail_out), 10),
                "processes": _top(Counter(f"{s.process or '?'}({s.pid})" for s in mail_out if s.pid), 10),
            },
            "inbound": {
                "count": len(mail_in),
                "by_state": dict(Counter(s.state for s in mail_in).most_common()),
                "top_remote_addresses": _top(Counter(s.remote for s in mail_in), 10),
            },
        },
    }


def _pairs(items: list[list[Any]], n: int = 8) -> str:
    return ", ".join(f"{k} ({v})" for k, v in items[:n]) or "none"


def summary_notes(summary: dict[str, Any]) -> list[str]:
    """The on-screen lines: what the operator scans first during an incident."""
    states = ", ".join(f"{k} {v}" for k, v in summary["by_state"].items()) or "none"
    protos = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_proto"].items())) or "none"
    lines = [
        f"{summary['total']} sockets ({protos}): {states}",
        f"busiest local ports: {_pairs(summary['by_local_port'])}",
        f"top remote addresses: {_pairs(summary['top_remote_addresses'])}",
    ]
    mail = summary["mail"]
    if mail["listening"]:
        lines.append("MAIL PORTS listening: " + ", ".join(mail["listening"]))
    out = mail["outbound"]
    if out["count"]:
        states = ", ".join(f"{k} {v}" for k, v in out["by_state"].items())
        ports = "/".join(sorted(out["by_remote_port"], key=int))
        lines.append(
            f"MAIL PORTS outbound: {out['count']} connection(s) to port {ports} ({states}); "
            f"to {_pairs(out['top_remote_addresses'], 5)}; from {_pairs(out['processes'], 5)}"
        )
    inbound = mail["inbound"]
    if inbound["count"]:
        states = ", ".join(f"{k} {v}" for k, v in inbound["by_state"].items())
        lines.append(
            f"MAIL PORTS inbound: {inbound['count']} connection(s) ({states}) "
            f"from {_pairs(inbound['top_remote_addresses'], 5)}"
        )
    return lines


@dataclass(frozen=True)
class Params(EvidenceFile):
    file: str = "connections.json"


class SnapshotConnections(Action[Params]):
    """Record every TCP and UDP socket (IPv4 and IPv6, every state) with its process.

    Sockets are read in the current network namespace. Without root the
    snapshot still succeeds, but sockets of other users' processes have no
    pid; the step says so. The summary shows counts by state and local port,
    the top remote addresses, and anything on ports 25, 465 and 587.

    Parameters:
      file: evidence file name (default ``connections.json``).

    Example::

        [[steps]]
        id = "who-is-connected"
        action = "snapshot.connections"
    """

    name = "snapshot.connections"
    Params = Params

    def describe(self) -> str:
        return f"record every TCP/UDP socket and its process to evidence/{self.params.file}"

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        t0 = time.monotonic()
        socks = collect_sockets()
        seconds = time.monotonic() - t0
        root = os.geteuid() == 0
        summary = summarize(socks)
        head = {"collected_at": time.time(), "seconds": round(seconds, 3), "pids_complete": root, "summary": summary}
        with ctx.open_evidence(self.params.file) as fh:
            write_records(fh, head, "sockets", (s.as_dict() for s in socks))
        lines = summary_notes(summary)
        lines[0] += f" -> {fh.rel}"
        for line in lines:
            ctx.note(line)
        if not root:
            missing = sum(1 for s in socks if s.pid is None)
            ctx.note(f"not running as root: pids and process names are missing for {missing} socket(s)")
        ctx.result.update({"pids_complete": root, "seconds": round(seconds, 3), **summary})
