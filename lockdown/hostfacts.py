"""Host facts: processes, sockets, sessions and the IPv6 switch, read from /proc and psutil.

The ONLY module that imports psutil, as dockerapi.py is for docker and
netlink.py for pyroute2: the snapshot actions, the ipv6.strip lockout guard
and ``lockdown audit`` all ask here, so that a socket, a process or a
docker-proxy command line is understood in one place.

Everything here only READS, and reads the caller's own namespaces:
sockets from /proc/self/net (established TCP for the lockout guard from
the kernel's sock_diag, which filters by state) and sysctls from /proc/sys/net (all follow the
network namespace of the calling thread, so ``ip netns exec NS lockdown ...``
sees that namespace), processes from the whole pid namespace.

Why /proc rather than psutil for the bulk reads: psutil.net_connections
decodes every address with a regex and took 1.1-1.5 s for 30,000 sockets on
the test VM, and psutil.process_iter parses /proc/<pid>/stat twice and calls
getpwuid() per process (0.4-0.8 s for 2,000 processes); both budgets are 1 s
(bench/bench_snapshots.py). psutil is kept for what it does cheaply: process
names by pid, ancestors, boot time and logged-in users.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pwd
import socket
import struct
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from lockdown import nlmsg

DOCKER_PROXY = "docker-proxy"
SSHD_NAMES = ("sshd", "sshd-session")
# What may re-add addresses behind our back, by process name (comm is cut at 15).
NETWORK_MANAGERS = {
    "systemd-networkd": "systemd-networkd",
    "systemd-network": "systemd-networkd",
    "NetworkManager": "NetworkManager",
    "dhcpcd": "dhcpcd",
    "dhclient": "dhclient",
    "odhcp6c": "odhcp6c",
    "wicked": "wicked",
    "connmand": "ConnMan",
}
# /proc/net/tcp "st" column (include/net/tcp_states.h), named as psutil names them.
TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
    "0B": "CLOSING", "0C": "NEW_SYN_RECV",
}
PROC_NET_FILES = (("tcp", "tcp", "inet"), ("tcp6", "tcp", "inet6"), ("udp", "udp", "inet"), ("udp6", "udp", "inet6"))
PROC_SYS_IPV6 = Path("/proc/sys/net/ipv6")


def is_ipv6(text: str) -> bool:
    """``::``, ``[2001:db8::1]`` -> True; names and IPv4 -> False."""
    try:
        return ipaddress.ip_address(text.strip("[]")).version == 6
    except ValueError:
        return False


def is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


# ------------------------------------------------------------------ sockets


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

    @property
    def holders(self) -> tuple[int, ...]:
        """Every pid holding the socket (empty when none is known)."""
        return self.pids or ((self.pid,) if self.pid else ())

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


def socket_owners(among: Iterable[int] | None = None) -> dict[int, list[int]]:
    """Socket inode -> pids holding it, from /proc/<pid>/fd (only the pids ``among``, if given).

    Other users' fd directories are unreadable without root; their sockets
    simply get no pid.
    """
    owners: dict[int, list[int]] = {}
    pids = sorted(among) if among is not None else [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
    for pid in pids:
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


_Row = tuple[str, str, str, int, "str | None", "int | None", str, int, int]


def _proc_net_rows(proc_net: str, *, only: tuple[str, str] | None = None) -> list[_Row]:
    """(proto, family, local, lport, remote, rport, state, uid, inode) of the lines of /proc/net/*.

    ``only`` = (proto, state hex), e.g. ``("tcp", "01")`` for established TCP,
    skips the other files and lines before anything is decoded: a host under a
    bot flood holds thousands of TIME_WAIT sockets, and the lockout guard
    reads this between the alert and the first change.
    """
    rows: list[_Row] = []
    for fname, proto, family in PROC_NET_FILES:
        if only is not None and proto != only[0]:
            continue
        decode = _decoder(family)
        try:
            with open(f"{proc_net}/{fname}") as fh:
                lines = fh.read().splitlines()[1:]
        except FileNotFoundError:  # IPv6 disabled at boot: no tcp6/udp6
            continue
        tcp = proto == "tcp"
        for line in lines:
            if only is not None and line.split(None, 4)[3] != only[1]:
                continue
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
    return rows


def collect_sockets(proc_net: str = "/proc/self/net") -> list[Sock]:
    """Every TCP and UDP socket (IPv4 and IPv6, every state) in this network namespace.

    /proc/self/net is the namespace of the calling thread, so under
    ``ip netns exec`` only that namespace's sockets are listed. A socket
    shared by several processes appears once, with all of them in ``pids``
    (since Docker 28 dockerd opens a published port and hands the fd to
    docker-proxy, and both may hold it).
    """
    owners = socket_owners()
    rows = _proc_net_rows(proc_net)
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
        for pid in s.holders:
            out.setdefault(pid, []).append(f"{s.netstat_proto} {s.endpoint}")
    return out


@dataclass(frozen=True)
class Listener:
    """One holder of a listening TCP socket (a socket held by two processes gives two)."""

    address: str
    port: int
    pid: int | None
    process: str | None

    def show(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        who = f" {self.process or '?'} (pid {self.pid})" if self.pid else ""
        return f"{host}:{self.port}{who}"


def tcp_listeners(socks: Iterable[Sock] | None = None) -> list[Listener]:
    """Listening TCP sockets, one entry per holder, with the holder's name.

    Every holder counts: since Docker 28 dockerd opens the socket and hands
    it to docker-proxy by file descriptor, so the owner is whoever holds the
    fd now (docker-proxy, dockerd while it still holds it, or both).
    """
    listening = [s for s in (collect_sockets() if socks is None else socks) if s.proto == "tcp" and s.listening]
    names = process_names(pid for s in listening for pid in s.holders)
    out = []
    for s in listening:
        if not s.holders:
            out.append(Listener(s.local, s.lport, None, None))
        for pid in s.holders:
            out.append(Listener(s.local, s.lport, pid, names.get(pid, "?")))
    return out


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_TCP_ESTABLISHED = 1
#: Most established sockets one dump may list: beyond it the dump is cut, and the guard says so
#: by failing (a host with more than this many established TCP connections is not read whole).
_MAX_DIAG_ROWS = 1 << 20


def _established_by_diag(
    families: Collection[int] = (socket.AF_INET, socket.AF_INET6),
) -> list[tuple[str, str | None, int | None, int]]:
    """(local, remote, remote port, inode) of established TCP sockets, from the kernel's sock_diag.

    The kernel filters by state, so the thousands of TIME_WAIT sockets a bot
    flood leaves are never formatted, copied or read: /proc/net/tcp6 lists
    them all as text and is walked again for every page read (~5 ms idle for
    a hundred lines, several times that under a flood, on the path between an
    alert and the strip). Like /proc/self/net, the socket belongs to the calling
    thread's network namespace. Raises OSError when sock_diag is unavailable.
    """
    out: list[tuple[str, str | None, int | None, int]] = []
    for family in families:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(5)
            req = struct.pack("=BBBxI48x", family, socket.IPPROTO_TCP, 0, 1 << _TCP_ESTABLISHED)
            nl.sendto(nlmsg.header(len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP) + req, (0, 0))
            size = 4 if family == socket.AF_INET else 16
            while not _diag_part(nl.recv(1 << 16), family, size, out):
                if len(out) > _MAX_DIAG_ROWS:
                    raise OSError(errno.E2BIG, "too many established TCP sockets to list")
    return out


def _diag_part(data: bytes, family: int, size: int, out: list[tuple[str, str | None, int | None, int]]) -> bool:
    """Decode one recv() of a sock_diag dump into ``out``; True when the dump is done."""
    for off, length, kind in nlmsg.messages(data):
        if kind == nlmsg.NLMSG_DONE:
            return True
        if kind == nlmsg.NLMSG_ERROR:
            code = nlmsg.error_code(data, off)
            raise OSError(code, os.strerror(code))
        if length < nlmsg.HEADER + 72:
            raise OSError(errno.EPROTO, "short sock_diag message")
        body = off + nlmsg.HEADER  # struct inet_diag_msg
        rport = struct.unpack_from(">H", data, body + 6)[0]
        local = socket.inet_ntop(family, data[body + 8 : body + 8 + size])
        remote = socket.inet_ntop(family, data[body + 24 : body + 24 + size])
        out.append((local, remote, rport, struct.unpack_from("=I", data, body + 68)[0]))
    return False


def tcp_established(
    wanted: Callable[[str, str, int], bool] | None = None,
    *,
    owners_among: Callable[[], Iterable[int]] | None = None,
    ipv6_only: bool = False,
) -> list[tuple[str, str, int, int | None]]:
    """(local, remote, remote port, pid) of established TCP sockets in this netns, one per holder.

    Addresses are plain (zone dropped, ``::ffff:a.b.c.d`` unmapped): the
    lockout guard compares them with SSH_CONNECTION and interface addresses.
    ``wanted(local, remote, rport)`` picks the connections of interest first:
    only their owners are looked up, and with none left no process is read.
    ``owners_among()`` (asked only when some connection is wanted) limits the
    owners looked for to those pids (the lockout guard only asks about sshd):
    reading every process's descriptors is nearly all the cost.
    ``ipv6_only``: only the IPv6 table (IPv4-mapped connections included), when
    ``wanted`` can only want an IPv6 local address.
    """
    picked = []
    try:
        rows = _established_by_diag((socket.AF_INET6,) if ipv6_only else (socket.AF_INET, socket.AF_INET6))
    except OSError:  # no sock_diag (inet_diag not built or not loadable): the slower /proc read
        established = next(code for code, name in TCP_STATES.items() if name == "ESTABLISHED")
        rows = [
            (row[2], row[4], row[5], row[8])
            for row in _proc_net_rows("/proc/self/net", only=("tcp", established))
            if not ipv6_only or row[1] == "inet6"
        ]
    for local, remote, rport, inode in rows:
        if not remote or rport is None:
            continue
        lplain, rplain = plain_ip(local), plain_ip(remote)
        if lplain and rplain and (wanted is None or wanted(lplain, rplain, rport)):
            picked.append((lplain, rplain, rport, inode))
    if not picked:
        return []
    owners = socket_owners(owners_among() if owners_among is not None else None)
    out: list[tuple[str, str, int, int | None]] = []
    for lplain, rplain, rport, inode in picked:
        holders: list[int | None] = list(owners.get(inode, [])) or [None]
        out.extend((lplain, rplain, rport, pid) for pid in holders)
    return out


def plain_ip(text: str) -> str | None:
    """Drop a zone and unmap ``::ffff:a.b.c.d``; None if it is not an address."""
    try:
        ip = ipaddress.ip_address(text.split("%")[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


# ------------------------------------------------------------------ processes


def boot_time() -> float:
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


def _full_name(comm: str, cmdline: list[str], exe: str | None) -> str:
    """comm is cut at 15 characters; take the full name from argv[0] or exe, as psutil does."""
    if len(comm) >= 15 and cmdline:
        full = os.path.basename(cmdline[0]).split(" ")[0]
        if full.startswith(comm):
            return full
        if exe and os.path.basename(exe).startswith(comm):
            return os.path.basename(exe)
    return comm


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
    except (FileNotFoundError, ProcessLookupError, PermissionError):
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
    return {
        "pid": pid,
        "ppid": int(fields[1]),
        "user": _user(uid, users) if uid is not None else None,
        "uid": uid,
        "name": _full_name(comm, cmdline, exe),
        "state": fields[0],
        "exe": exe,
        "cmdline": cmdline,
        "create_time": round(boot + int(fields[19]) / hz, 2),
        "cwd": _readlink(base + "cwd"),
    }


def read_processes() -> list[dict[str, Any]]:
    """Every process of the pid namespace (see ``read_process``), by pid."""
    boot = boot_time()
    hz = os.sysconf("SC_CLK_TCK")
    users: dict[int, str] = {}
    procs = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = read_process(int(entry.name), boot, hz, users)
            if proc is not None:
                procs.append(proc)
    procs.sort(key=lambda p: p["pid"])
    return procs


def pids_named(names: Sequence[str]) -> set[int]:
    """Pids of the processes called one of ``names`` (at most 15 characters: the kernel's ``comm``).

    Read from /proc/<pid>/comm, one small read each: psutil's process_iter
    parses /proc/<pid>/stat and makes a Process for every pid it has not seen,
    and under a flood Postfix starts a new smtpd every few milliseconds
    (8.8 ms against 2.0 ms for 100 processes; the lockout guard asks this
    between the alert and the strip).
    """
    wanted = {n.encode() for n in names}
    if any(len(n) > 15 for n in wanted):
        raise ValueError(f"process names longer than 15 characters cannot be matched by comm: {names}")
    out = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", "rb", buffering=0) as fh:
                comm = fh.read(64)
        except OSError:  # gone meanwhile
            continue
        if comm[:-1] in wanted:
            out.add(int(entry.name))
    return out


def argv_of(name: str) -> list[str]:
    """The command line of the first process called ``name`` (e.g. ``dockerd``); [] when none runs."""
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info.get("name") == name:
            return list(p.info.get("cmdline") or [])
    return []


# ------------------------------------------------------------------ docker-proxy


def parse_flags(argv: Sequence[str]) -> dict[str, str]:
    """``-host-ip :: --host-port=25 -use-listen-fd`` -> {"host-ip": "::", "host-port": "25", "use-listen-fd": ""}.

    Go's flag package accepts ``-f v``, ``-f=v``, ``--f=v`` and bare booleans;
    docker-proxy and dockerd have used each of them across versions.
    """
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


def is_docker_proxy(name: str, argv: Sequence[str], exe: str | None) -> bool:
    """docker-proxy whichever directory it lives in (/usr/bin, /usr/sbin, /usr/libexec/docker, ...)."""
    return DOCKER_PROXY in (name, os.path.basename(argv[0]) if argv else "", os.path.basename(exe or ""))


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
        return is_ipv6(self.host_ip) and is_ipv4(self.container_ip)


def parse_proxy_cmdline(pid: int, argv: Sequence[str], exe: str = "") -> ProxyProcess | None:
    """A docker-proxy command line, or None when it does not say what it forwards."""
    f = parse_flags(argv[1:])
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


def docker_proxies(procs: Iterable[dict[str, Any]] | None = None) -> list[ProxyProcess]:
    """Every docker-proxy process that says what it forwards (``procs``: from ``read_processes``)."""
    out = []
    for p in read_processes() if procs is None else procs:
        if is_docker_proxy(p["name"], p["cmdline"], p["exe"]):
            proxy = parse_proxy_cmdline(p["pid"], p["cmdline"], p["exe"] or "")
            if proxy is not None:
                out.append(proxy)
    return out


# ------------------------------------------------------------------ sessions


def logged_in_users() -> list[dict[str, Any]]:
    """Login sessions from utmp: name, terminal, remote host, start time and pid."""
    return [
        {"name": u.name, "terminal": u.terminal, "host": u.host, "started": u.started, "pid": u.pid}
        for u in psutil.users()
    ]


def sshd_ancestors() -> set[int]:
    """Pids of sshd processes among our own ancestors: the session we run in, when there is one."""
    try:
        parents = psutil.Process().parents()
    except psutil.Error:
        return set()
    out = set()
    for p in parents:
        try:
            if p.name() in SSHD_NAMES:
                out.add(p.pid)
        except psutil.Error:
            continue
    return out


def sshd_pids() -> set[int]:
    """Pids of every sshd process (listener and per-session)."""
    return pids_named(SSHD_NAMES)


def network_managers() -> list[str]:
    """Running network managers that may re-add addresses, e.g. ``systemd-networkd (pid 512)``."""
    found = []
    for p in psutil.process_iter(["name"]):
        name = p.info.get("name") or ""
        for prefix, label in NETWORK_MANAGERS.items():
            if name.startswith(prefix):
                found.append(f"{label} (pid {p.pid})")
                break
    netplan = Path("/etc/netplan")
    if netplan.is_dir() and any(netplan.glob("*.yaml")):
        found.append("netplan (configuration in /etc/netplan, rendered to networkd or NetworkManager)")
    return found


# ------------------------------------------------------------------ sysctls


def ipv6_disabled(proc_sys_ipv6: Path = PROC_SYS_IPV6) -> str | None:
    """Why IPv6 is off in this network namespace, or None when it is on.

    /proc/sys/net follows the network namespace of the reading thread, so
    under ``ip netns exec`` this is that namespace's switch, not the host's.
    No /proc/sys/net/ipv6 at all means the kernel was booted with
    ``ipv6.disable=1``.
    """
    if not proc_sys_ipv6.is_dir():
        return f"{proc_sys_ipv6} is absent: the kernel runs without IPv6 (ipv6.disable=1)"
    try:
        value = (proc_sys_ipv6 / "conf" / "all" / "disable_ipv6").read_text().strip()
    except OSError:
        return None
    return "net.ipv6.conf.all.disable_ipv6 = 1" if value == "1" else None
