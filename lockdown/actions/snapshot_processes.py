"""``snapshot.processes``: every process and what it listens on, as JSON evidence.

The postmortem's key line was ``tcp6 :::25 docker-proxy``: a container port
published on every IPv6 address. So listening sockets are joined to their
processes, and docker-proxy processes are called out with what they forward.

Processes are read from /proc directly rather than with
psutil.process_iter(attrs=[...]): psutil parses /proc/<pid>/stat twice per
process and calls getpwuid() for each one, which took 0.4-0.8 s for 2,000
processes on the test VM against a 1 s budget that must also cover the
socket join. Reading stat, status and cmdline once and caching user names
does the same job several times faster (bench/bench_snapshots.py).
"""

from __future__ import annotations

import os
import pwd
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from lockdown.actions.base import Action, EvidenceFile, StepContext, UndoRecord
from lockdown.actions.snapshot_connections import collect_sockets, listening_by_pid, write_records

DOCKER_PROXY = "docker-proxy"


def _boot_time() -> float:
    import psutil

    return float(psutil.boot_time())


def _user(uid: int, cache: dict[int, str]) -> str:
    name = cache.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        cache[uid] = name
    return name


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # EACCES without root, ENOENT for kernel threads and zombies
        return None


def read_process(pid: int, boot: float, hz: int, users: dict[int, str]) -> dict[str, Any] | None:
    """One process from /proc, or None if it exited while being read.

    ``exe`` and ``cwd`` are None where they cannot be read (other users'
    processes without root, kernel threads).
    """
    base = f"/proc/{pid}/"
    try:
        with open(base + "stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        with open(base + "status", "rb") as fh:
            status = fh.read().decode(errors="replace")
        with open(base + "cmdline", "rb") as fh:
            raw_cmd = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        return None
    lpar, rpar = stat.find("("), stat.rfind(")")
    comm = stat[lpar + 1 : rpar]
    fields = stat[rpar + 2 :].split()
    uid = None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    cmdline = [a.decode(errors="replace") for a in raw_cmd.split(b"\0")[:-1]] if raw_cmd else []
    exe = _readlink(base + "exe")
    name = comm
    if len(comm) >= 15 and cmdline:
        # comm is truncated to 15 characters; take the full name as psutil does
        full = os.path.basename(cmdline[0]).split(" ")[0]
        if full.startswith(comm):
            name = full
        elif exe and os.path.basename(exe).startswith(comm):
            name = os.path.basename(exe)
    return {
        "pid": pid,
        "ppid": int(fields[1]),
        "user": _user(uid, users) if uid is not None else None,
        "uid": uid,
        "name": name,
        "state": fields[0],
        "exe": exe,
        "cmdline": cmdline,
        "create_time": round(boot + int(fields[19]) / hz, 2),
        "cwd": _readlink(base + "cwd"),
    }


def collect_processes() -> list[dict[str, Any]]:
    """Every process with its listening sockets (``listening``: ``tcp6 :::25`` style).

    Sockets come from the current network namespace only; processes from the
    whole pid namespace.
    """
    boot = _boot_time()
    hz = os.sysconf("SC_CLK_TCK")
    users: dict[int, str] = {}
    procs = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = read_process(int(entry.name), boot, hz, users)
            if proc is not None:
                procs.append(proc)
    listening = listening_by_pid(collect_sockets())
    for proc in procs:
        proc["listening"] = listening.get(proc["pid"], [])
    procs.sort(key=lambda p: p["pid"])
    return procs


def docker_proxy_target(cmdline: list[str]) -> dict[str, str]:
    """``-proto tcp -host-ip :: -host-port 25 -container-ip 172.17.0.2 ...`` as a dict."""
    out = {}
    for i, arg in enumerate(cmdline[:-1]):
        if arg.startswith("-") and not cmdline[i + 1].startswith("-"):
            out[arg.lstrip("-")] = cmdline[i + 1]
    return out


def docker_proxies(procs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each docker-proxy with what it listens on and where it forwards."""
    out = []
    for p in procs:
        if p["name"] != DOCKER_PROXY:
            continue
        args = docker_proxy_target(p["cmdline"])
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
