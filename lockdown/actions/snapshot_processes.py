"""``snapshot.processes``: every process and what it listens on, as JSON evidence.

The postmortem's key line was ``tcp6 :::25 docker-proxy``: a container port
published on every IPv6 address. So listening sockets are joined to their
processes, and docker-proxy processes are called out with what they forward.

Processes and sockets are read by lockdown.hostfacts (from /proc directly:
psutil.process_iter took 0.4-0.8 s for 2,000 processes against a 1 s budget
that must also cover the socket join; bench/bench_snapshots.py), and a
docker-proxy command line is understood there too, the same way for this
snapshot and for ``lockdown audit``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from lockdown import hostfacts
from lockdown.actions.base import Action, EvidenceFile, StepContext, UndoRecord
from lockdown.actions.records import write_records
from lockdown.hostfacts import DOCKER_PROXY


def collect_processes() -> list[dict[str, Any]]:
    """Every process with its listening sockets (``listening``: ``tcp6 :::25`` style).

    Sockets come from the current network namespace only; processes from the
    whole pid namespace.
    """
    procs = hostfacts.read_processes()
    listening = hostfacts.listening_by_pid(hostfacts.collect_sockets())
    for proc in procs:
        proc["listening"] = listening.get(proc["pid"], [])
    return procs


def docker_proxies(procs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each docker-proxy with what it listens on and where it forwards."""
    out = []
    for p in procs:
        if not hostfacts.is_docker_proxy(p["name"], p["cmdline"], p["exe"]):
            continue
        args = hostfacts.parse_flags(p["cmdline"][1:])
        host_ip, host_port = args.get("host-ip"), args.get("host-port")
        listening = list(p["listening"])
        if not listening and host_port:
            # not in our netns (or no root): say what its command line publishes
            proto = args.get("proto", "tcp") + ("6" if host_ip and ":" in host_ip else "")
            listening = [f"{proto} {host_ip or '0.0.0.0'}:{host_port} (from its command line)"]
        target = None
        if args.get("container-ip"):
            target = f"{args['container-ip']}:{args.get('container-port', '?')}"
        out.append({"pid": p["pid"], "listening": listening, "forwards_to": target})
    return out


@dataclass(frozen=True)
class Params(EvidenceFile):
    file: str = "processes.json"


class SnapshotProcesses(Action[Params]):
    """Record every process (pid, ppid, user, exe, cmdline, cwd) and the sockets it listens on.

    docker-proxy processes are highlighted with what they publish: a line
    like ``tcp6 :::25 docker-proxy`` means a container's SMTP port is open on
    every IPv6 address of the host. Listening sockets are those of the
    current network namespace; exe and cwd need root for other users'
    processes.

    Parameters:
      file: evidence file name (default ``processes.json``).

    Example::

        [[steps]]
        id = "what-is-running"
        action = "snapshot.processes"
    """

    name = "snapshot.processes"
    Params = Params

    def describe(self) -> str:
        return f"record every process and its listening sockets to evidence/{self.params.file}"

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        t0 = time.monotonic()
        procs = collect_processes()
        seconds = time.monotonic() - t0
        proxies = docker_proxies(procs)
        listeners = [p for p in procs if p["listening"]]
        users = Counter(p["user"] for p in procs)
        unreadable = sum(1 for p in procs if p["exe"] is None and p["cmdline"])
        head = {
            "collected_at": time.time(),
            "seconds": round(seconds, 3),
            "root": os.geteuid() == 0,
            "count": len(procs),
            "docker_proxies": proxies,
        }
        with ctx.open_evidence(self.params.file) as fh:
            write_records(fh, head, "processes", procs)
        ctx.note(
            f"{len(procs)} processes ({', '.join(f'{u} {n}' for u, n in users.most_common(4))}), "
            f"{len(listeners)} listening -> {fh.rel}"
        )
        shown = [f"{sock} {p['name']}({p['pid']})" for p in listeners for sock in p["listening"]]
        if shown:
            more = f" and {len(shown) - 12} more" if len(shown) > 12 else ""
            ctx.note("listening: " + ", ".join(shown[:12]) + more)
        for proxy in proxies:
            where = ", ".join(f"{sock} {DOCKER_PROXY}" for sock in proxy["listening"]) or "nothing visible"
            to = f" -> {proxy['forwards_to']}" if proxy["forwards_to"] else ""
            ctx.note(f"DOCKER-PROXY pid {proxy['pid']}: {where}{to}")
        if unreadable and os.geteuid() != 0:
            ctx.note(f"not running as root: exe and cwd unreadable for {unreadable} process(es) of other users")
        ctx.result.update(
            {
                "count": len(procs),
                "seconds": round(seconds, 3),
                "listening": shown[:50],
                "docker_proxies": proxies,
            }
        )
