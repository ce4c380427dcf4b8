"""``snapshot.connections``: every inet/inet6 TCP and UDP socket, as JSON evidence.

Who is connected disappears with the incident, so this is recorded first.
The socket helpers here are shared with the other snapshot actions and the
ipv6.strip lockout guard, so that socket collection lives in one module.

Sockets are read from /proc/net/{tcp,tcp6,udp,udp6} directly instead of
psutil.net_connections(kind="inet"): psutil decodes every address with a
regex and base64 and took 1.1-1.5 s for 30,000 sockets on the test VM, over
the 1 s budget; this parser caches decoded addresses and stays well under
(bench/bench_snapshots.py measures it against ``ss -tanpu``). psutil is still
used for process names, once per pid.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from lockdown.actions.base import Action, EvidenceFile, StepContext, UndoRecord

MAIL_PORTS = (25, 465, 587)

# /proc/net/tcp "st" column (include/net/tcp_states.h), named as psutil names them.
TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
    "0B": "CLOSING", "0C": "NEW_SYN_RECV",
}
PROC_NET_FILES = (("tcp", "tcp", "inet"), ("tcp6", "tcp", "inet6"), ("udp", "udp", "inet"), ("udp6", "udp", "inet6"))


class Sock(NamedTuple):
    """One socket. A NamedTuple because 30,000 of them must be built in well under a second."""

    proto: str  # tcp | udp
    family: str  # inet | inet6
    local: str
    lport: int
    remote: str | None
    rport: int | None
    state: str  # psutil's names; "NONE" for UDP
    pid: int | None  # the first holder; None when unknown (not root) or orphaned (TIME_WAIT)
    process: str | None
    uid: int | None
    inode: int | None
    pids: tuple[int, ...] = ()  # every holder, only when the socket is shared (forked listeners)

    @property
    def netstat_proto(self) -> str:
        return self.proto + ("6" if self.family == "inet6" else "")

    @property
    def endpoint(self) -> str:
        """netstat style: ``:::25`` for [::]:25, ``0.0.0.0:25`` for IPv4."""
        return f"{self.local}:{self.lport}"

    @property
    def listening(self) -> bool:
        return self.state == "LISTEN" or (self.proto == "udp" and not self.remote)

    def as_dict(self) -> dict[str, Any]:
        d = self._asdict()
        d["pids"] = list(self.pids)
        return d

    def short(self) -> str:
        """``tcp6 :::25 docker-proxy(1234)``, the shape the postmortem found."""
        who = f" {self.process or '?'}({self.pid})" if self.pid else ""
        return f"{self.netstat_proto} {self.endpoint}{who}"


def process_names(pids: Iterable[int]) -> dict[int, str]:
    """pid -> process name for the given pids, one lookup per pid (not per socket)."""
    import psutil

    names: dict[int, str] = {}
    for pid in set(pids):
        try:
            names[pid] = psutil.Process(pid).name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return names


def _decoder(family: str) -> Callable[[str], str]:
    """A cached hex -> text decoder; /proc/net prints each 32-bit word in host order."""
    cache: dict[str, str] = {}
    little = sys.byteorder == "little"
    af = socket.AF_INET6 if family == "inet6" else socket.AF_INET

    def decode(hexaddr: str) -> str:
        text = cache.get(hexaddr)
        if text is None:
            raw = bytes.fromhex(hexaddr)
            if little:
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            text = socket.inet_ntop(af, raw)
            cache[hexaddr] = text
        return text

    return decode


def socket_owners() -> dict[int, list[int]]:
    """Socket inode -> pids holding it, from /proc/<pid>/fd.

    Other users' fd directories are unreadable without root; their sockets
    simply get no pid.
    """
    owners: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fd_dir = f"/proc/{pid}/fd/"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        readlink = os.readlink
        for fd in fds:
            try:
                target = readlink(fd_dir + fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                pids = owners.setdefault(int(target[8:-1]), [])
                if not pids or pids[-1] != pid:
                    pids.append(pid)
    return owners


def collect_sockets(proc_net: str = "/proc/self/net") -> list[Sock]:
    """Every TCP and UDP socket (IPv4 and IPv6, every state) in this network namespace.

    /proc/self/net is the namespace of the calling thread, so under
    ``ip netns exec`` only that namespace's sockets are listed. A socket
    shared by several processes appears once, with all of them in ``pids``.
    """
    owners = socket_owners()
    rows: list[tuple[str, str, str, int, str | None, int | None, str, int, int]] = []
    for fname, proto, family in PROC_NET_FILES:
        decode = _decoder(family)
        try:
            with open(f"{proc_net}/{fname}") as fh:
                lines = fh.read().splitlines()[1:]
        except FileNotFoundError:  # IPv6 disabled
            continue
        tcp = proto == "tcp"
        for line in lines:
            f = line.split(None, 10)
            lhex, _, lport_hex = f[1].partition(":")
            rhex, _, rport_hex = f[2].partition(":")
            rp = int(rport_hex, 16)
            remote: str | None = decode(rhex)
            if rp == 0 and remote in ("0.0.0.0", "::"):
                remote = None
            rows.append(
                (
                    proto, family, decode(lhex), int(lport_hex, 16), remote, rp if remote else None,
                    TCP_STATES.get(f[3], f[3]) if tcp else "NONE", int(f[7]), int(f[9]),
                )
            )
    names = process_names(owners[r[8]][0] for r in rows if r[8] in owners)
    out = []
    empty: list[int] = []
    for proto, family, local, lport, remote, rport, state, uid, inode in rows:
        pids = owners.get(inode, empty) if inode else empty
        pid = pids[0] if pids else None
        out.append(
            Sock(
                proto, family, local, lport, remote, rport, state, pid,
                names.get(pid) if pid else None, uid, inode or None,
                tuple(pids) if len(pids) > 1 else (),
            )
        )
    return out


def listening_by_pid(socks: Iterable[Sock]) -> dict[int, list[str]]:
    """pid -> ``tcp6 :::25`` style listening endpoints, for every holder of each socket."""
    out: dict[int, list[str]] = {}
    for s in socks:
        if not s.listening:
            continue
        for pid in s.pids or ((s.pid,) if s.pid else ()):
            out.setdefault(pid, []).append(f"{s.netstat_proto} {s.endpoint}")
    return out


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


def write_records(fh: Any, head: dict[str, Any], key: str, records: Iterable[dict[str, Any]]) -> None:
    """Write ``{**head, key: [records]}`` as JSON with one compact record per line.

    json.dump(indent=...) falls back to the pure-Python encoder, which is
    slow for tens of thousands of records; this stays on the C encoder,
    writes in ~1 MiB chunks (``fh`` hashes and writes unbuffered), and the
    file is still valid JSON and greppable line by line.
    """
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode
    text = json.dumps(head, indent=1, sort_keys=True, default=str)
    parts = [text[:-2] + f',\n "{key}": [']
    size = 0
    sep = "\n  "
    for rec in records:
        line = sep + encode(rec)
        sep = ",\n  "
        parts.append(line)
        size += len(line)
        if size > 1 << 20:
            fh.write("".join(parts).encode())
            parts, size = [], 0
    parts.append("\n ]\n}\n")
    fh.write("".join(parts).encode())


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
