"""snapshot.connections / .processes / .network on a namespace holding known sockets and processes.

Each test builds its own namespace with a veth pair (192.0.2.1/24 and
2001:db8:5::1/64), then starts three real processes inside it:

* ``lkd-srv`` (root) listens on 0.0.0.0:25, [2001:db8:5::1]:587 (tcp6),
  udp 127.0.0.1:5300 and udp6 [::]:5301, and accepts two connections;
* ``lkd-cli`` (drops to nobody) holds those two established connections
  (127.0.0.1 -> :25 and 2001:db8:5::1 -> :587) plus a connected UDP socket;
* ``docker-proxy`` (a script of that name, run with docker-proxy's real
  arguments) listens on [::]:25, the postmortem's ``tcp6 :::25 docker-proxy``.

lockdown runs as the real CLI inside the namespace, and the JSON evidence
is compared with what the test knows it created and with ``ip -j`` / /proc /
psutil read independently.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import netlab
from tests.conftest import AS_NOBODY, REPO, ip_json
from tests.netlab import ipn, lockdown, nsexec, set_sysctl, veth

pytestmark = pytest.mark.netns

WORKLOAD = r"""
import ctypes, encodings.idna, json, os, socket, sys, time
from socket import AF_INET, AF_INET6, SOCK_DGRAM, IPPROTO_IPV6, IPV6_V6ONLY, SOL_SOCKET, SO_REUSEADDR

libc = ctypes.CDLL(None)
role = sys.argv[1]

def say(**kw):
    print(json.dumps(kw), flush=True)

def listener(family, addr, port):
    s = socket.socket(family)
    s.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
    if family == AF_INET6:
        s.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 1)
    s.bind((addr, port))
    s.listen(16)
    return s

held = []
if role == "server":
    libc.prctl(15, b"lkd-srv", 0, 0, 0)  # PR_SET_NAME
    smtp = listener(AF_INET, "0.0.0.0", 25)
    sub = listener(AF_INET6, "2001:db8:5::1", 587)
    u4 = socket.socket(AF_INET, SOCK_DGRAM); u4.bind(("127.0.0.1", 5300))
    u6 = socket.socket(AF_INET6, SOCK_DGRAM); u6.bind(("::", 5301))
    held += [smtp, sub, u4, u6]
    say(ready=True)
    held.append(smtp.accept()[0])
    held.append(sub.accept()[0])
    say(accepted=2)
elif role == "client":
    libc.prctl(15, b"lkd-cli", 0, 0, 0)
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: setuid cleared it; nobody may read our fds again
    a = socket.create_connection(("127.0.0.1", 25))
    b = socket.create_connection(("2001:db8:5::1", 587))
    u = socket.socket(AF_INET, SOCK_DGRAM); u.connect(("127.0.0.1", 5300))
    held += [a, b, u]
    say(ports=[a.getsockname()[1], b.getsockname()[1], u.getsockname()[1]])
else:  # docker-proxy -proto tcp -host-ip :: -host-port 25 -container-ip ... -container-port 25
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    held.append(listener(AF_INET6, args["-host-ip"], int(args["-host-port"])))
    say(ready=True)
while True:
    time.sleep(60)
"""

PROXY_ARGS = ["-proto", "tcp", "-host-ip", "::", "-host-port", "25", "-container-ip", "172.17.0.2",
              "-container-port", "25"]


@dataclass
class Lab:
    ns: str
    dev: str
    peer: str
    workdir: Path
    srv: int
    cli: int
    proxy: int
    ports: list[int]  # client side: tcp to :25, tcp to :587, udp to :5300

    def expected_sockets(self, *, root: bool = True) -> set[tuple[Any, ...]]:
        """(proto, family, local, lport, remote, rport, state, pid, process) of every socket in the netns."""
        c25, c587, cudp = self.ports
        srv = (self.srv, "lkd-srv") if root else (None, None)
        proxy = (self.proxy, "docker-proxy") if root else (None, None)
        cli = (self.cli, "lkd-cli")  # runs as nobody: visible without root too
        v6 = "2001:db8:5::1"
        return {
            ("tcp", "inet", "0.0.0.0", 25, None, None, "LISTEN", *srv),
            ("tcp", "inet6", v6, 587, None, None, "LISTEN", *srv),
            ("udp", "inet", "127.0.0.1", 5300, None, None, "NONE", *srv),
            ("udp", "inet6", "::", 5301, None, None, "NONE", *srv),
            ("tcp", "inet6", "::", 25, None, None, "LISTEN", *proxy),
            ("tcp", "inet", "127.0.0.1", 25, "127.0.0.1", c25, "ESTABLISHED", *srv),
            ("tcp", "inet", "127.0.0.1", c25, "127.0.0.1", 25, "ESTABLISHED", *cli),
            ("tcp", "inet6", v6, 587, v6, c587, "ESTABLISHED", *srv),
            ("tcp", "inet6", v6, c587, v6, 587, "ESTABLISHED", *cli),
            ("udp", "inet", "127.0.0.1", cudp, "127.0.0.1", 5300, "NONE", *cli),
        }


def _start(ns: str, workdir: Path, argv: list[str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise AssertionError(f"{argv[:3]} did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


@pytest.fixture
def lab(netns: str) -> Iterator[Lab]:
    a0, a1 = veth(netns)
    ipn(netns, "addr", "add", "192.0.2.1/24", "dev", a0)
    ipn(netns, "addr", "add", "2001:db8:5::1/64", "dev", a0, "nodad")
    ipn(netns, "addr", "add", "2001:db8:6::1/64", "dev", a0, "nodad", "valid_lft", "900", "preferred_lft", "600")
    ipn(netns, "route", "add", "default", "via", "192.0.2.254", "dev", a0)
    ipn(netns, "-6", "route", "add", "default", "via", "2001:db8:5::fe", "dev", a0)
    ipn(netns, "-6", "route", "add", "2001:db8:99::/48", "via", "2001:db8:5::fd", "dev", a0, "metric", "50")
    set_sysctl(netns, a0, "accept_ra", "2")
    netlab.wait_link_local(netns, [a0, a1])
    netlab.wait_settled(netns)
    # world-readable (nobody runs lockdown in one test): pytest's tmp_path is 0700
    workdir = Path(tempfile.mkdtemp(prefix="lkd-snap-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    script = workdir / "workload.py"
    script.write_text(WORKLOAD)
    proxy_script = workdir / "docker-proxy"
    proxy_script.write_text(f"#!{sys.executable}\n{WORKLOAD}")
    proxy_script.chmod(0o755)
    procs: list[subprocess.Popen[str]] = []
    try:
        srv, _ = _start(netns, workdir, [sys.executable, str(script), "server"])
        procs.append(srv)
        proxy, _ = _start(netns, workdir, [str(proxy_script), *PROXY_ARGS])
        procs.append(proxy)
        cli, hello = _start(netns, workdir, [sys.executable, str(script), "client"])
        procs.append(cli)
        assert srv.stdout is not None
        assert json.loads(srv.stdout.readline()) == {"accepted": 2}
        yield Lab(netns, a0, a1, workdir, srv.pid, cli.pid, proxy.pid, hello["ports"])
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(workdir, ignore_errors=True)


PLAYBOOK = """
[[steps]]
id = "conns"
action = "snapshot.connections"

[[steps]]
id = "procs"
action = "snapshot.processes"

[[steps]]
id = "net"
action = "snapshot.network"
"""


def _evidence(state_dir: Path, name: str) -> Any:
    return json.loads((netlab.incident_dir(state_dir) / "evidence" / name).read_text())


def _sock_key(s: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(s[k] for k in ("proto", "family", "local", "lport", "remote", "rport", "state", "pid", "process"))


def _notes(run: subprocess.CompletedProcess[str], step: str) -> list[str]:
    doc = json.loads(run.stdout)
    return next(s["notes"] for s in doc["steps"] if s["id"] == step)


def _run(lab: Lab, state_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    pb = lab.workdir / "snap.toml"
    pb.write_text('name = "snap"\n' + PLAYBOOK)
    pb.chmod(0o644)
    run = lockdown(lab.ns, state_dir, "run", str(pb), *extra)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def test_connections_snapshot_records_exactly_the_namespaces_sockets(lab: Lab, state_dir: Path) -> None:
    run = _run(lab, state_dir, "--json")
    doc = _evidence(state_dir, "connections.json")
    assert doc["pids_complete"] is True
    assert {_sock_key(s) for s in doc["sockets"]} == lab.expected_sockets()
    assert len(doc["sockets"]) == 10
    # ss, read independently, sees the same sockets
    ss = nsexec(lab.ns, "ss", "-Htanu").stdout.splitlines()
    assert len(ss) == 10, ss

    summary = doc["summary"]
    assert summary["total"] == 10
    assert summary["by_state"] == {"ESTABLISHED": 4, "LISTEN": 3, "NONE": 3}
    assert summary["by_proto"] == {"tcp": 3, "tcp6": 4, "udp": 2, "udp6": 1}
    c25, c587, cudp = lab.ports
    assert sorted(map(tuple, summary["by_local_port"])) == sorted(
        [(25, 3), (587, 2), (5300, 1), (5301, 1), (c25, 1), (c587, 1), (cudp, 1)]
    )
    assert summary["top_remote_addresses"] == [["127.0.0.1", 3], ["2001:db8:5::1", 2]]
    mail = summary["mail"]
    assert sorted(mail["listening"]) == sorted(
        [f"tcp 0.0.0.0:25 lkd-srv({lab.srv})", f"tcp6 2001:db8:5::1:587 lkd-srv({lab.srv})",
         f"tcp6 :::25 docker-proxy({lab.proxy})"]
    )
    assert mail["outbound"]["count"] == 2
    assert mail["outbound"]["processes"] == [[f"lkd-cli({lab.cli})", 2]]
    assert mail["inbound"]["count"] == 2

    notes = _notes(run, "conns")
    assert notes[0].startswith(
        "10 sockets (tcp 3, tcp6 4, udp 2, udp6 1): ESTABLISHED 4, LISTEN 3, NONE 3 -> evidence/"
    )
    assert notes[1].startswith("busiest local ports: 25 (3), 587 (2), ")
    assert notes[2] == "top remote addresses: 127.0.0.1 (3), 2001:db8:5::1 (2)"
    (listening,) = [n for n in notes if n.startswith("MAIL PORTS listening: ")]
    assert f"tcp6 :::25 docker-proxy({lab.proxy})" in listening
    assert f"tcp 0.0.0.0:25 lkd-srv({lab.srv})" in listening
    (outbound,) = [n for n in notes if n.startswith("MAIL PORTS outbound: ")]
    assert outbound.startswith("MAIL PORTS outbound: 2 connection(s) to port 25/587 (ESTABLISHED 2); ")
    assert f"from lkd-cli({lab.cli}) (2)" in outbound
    assert not any("not running as root" in n for n in notes)


def test_highlights_are_on_screen(lab: Lab, state_dir: Path) -> None:
    """The human output (not --json) shows the mail-port and docker-proxy lines."""
    out = _run(lab, state_dir).stdout
    assert "[conns] MAIL PORTS listening: " in out
    assert f"tcp6 :::25 docker-proxy({lab.proxy})" in out
    assert f"[procs] DOCKER-PROXY pid {lab.proxy}: tcp6 :::25 docker-proxy -> 172.17.0.2:25" in out
    assert "[conns] top remote addresses: 127.0.0.1 (3), 2001:db8:5::1 (2)" in out


def test_processes_snapshot_joins_listeners_and_highlights_docker_proxy(lab: Lab, state_dir: Path) -> None:
    alive_before = set(psutil.pids())
    run = _run(lab, state_dir, "--json")
    alive_after = set(psutil.pids())
    doc = _evidence(state_dir, "processes.json")
    by_pid = {p["pid"]: p for p in doc["processes"]}
    assert doc["count"] == len(doc["processes"])
    missing = (alive_before & alive_after) - set(by_pid)
    assert not missing, f"processes alive throughout but not recorded: {sorted(missing)[:10]}"

    assert sorted(by_pid[lab.srv]["listening"]) == [
        "tcp 0.0.0.0:25", "tcp6 2001:db8:5::1:587", "udp 127.0.0.1:5300", "udp6 :::5301"
    ]
    assert by_pid[lab.proxy]["listening"] == ["tcp6 :::25"]
    assert by_pid[lab.cli]["listening"] == [], "connected sockets are not listeners"
    listeners = {pid for pid, p in by_pid.items() if p["listening"]}
    assert listeners == {lab.srv, lab.proxy}, "only the namespace's sockets may be joined"

    # Every field against psutil, read independently of the action's /proc parser.
    for pid, name, user in ((lab.srv, "lkd-srv", "root"), (lab.cli, "lkd-cli", "nobody"),
                            (lab.proxy, "docker-proxy", "root")):
        rec, ps = by_pid[pid], psutil.Process(pid)
        assert rec["name"] == name == ps.name()
        assert rec["user"] == user == ps.username()
        assert rec["ppid"] == ps.ppid()
        assert rec["exe"] == ps.exe()
        assert rec["cmdline"] == ps.cmdline()
        assert rec["cwd"] == ps.cwd() == str(lab.workdir)
        assert abs(rec["create_time"] - ps.create_time()) < 0.05
    assert by_pid[lab.proxy]["cmdline"][1:] == [str(lab.workdir / "docker-proxy"), *PROXY_ARGS]

    ours = [p for p in doc["docker_proxies"] if p["pid"] == lab.proxy]
    assert ours == [{"pid": lab.proxy, "listening": ["tcp6 :::25"], "forwards_to": "172.17.0.2:25"}]
    for other in doc["docker_proxies"]:
        if other["pid"] != lab.proxy:  # a real one of a concurrent Docker test, outside this netns
            assert all(sock.endswith("(from its command line)") for sock in other["listening"]), other
    notes = _notes(run, "procs")
    assert f"DOCKER-PROXY pid {lab.proxy}: tcp6 :::25 docker-proxy -> 172.17.0.2:25" in notes
    (listening,) = [n for n in notes if n.startswith("listening: ")]
    assert f"tcp6 :::25 docker-proxy({lab.proxy})" in listening
    assert f"udp6 :::5301 lkd-srv({lab.srv})" in listening


def _route_key(r: dict[str, Any], family: str) -> tuple[Any, ...]:
    return (family, r["dst"], r.get("gateway"), r.get("dev"), r.get("table", "main"), r.get("metric", 0),
            r.get("type", "unicast"))


def test_network_snapshot_matches_ip_json(lab: Lab, state_dir: Path) -> None:
    _run(lab, state_dir)
    doc = _evidence(state_dir, "network.json")
    ns = lab.ns

    theirs_addrs = {
        (link["ifname"], a["family"], a["local"], a["prefixlen"], a["scope"])
        for link in ip_json("addr", netns=ns)
        for a in link.get("addr_info", [])
    }
    family_names = {2: "inet", 10: "inet6"}
    ours_addrs = {
        (a["ifname"], family_names[a["family"]], a["address"], a["prefixlen"], a["scope_name"])
        for a in doc["addresses"]
    }
    assert ours_addrs == theirs_addrs
    assert (lab.dev, "inet", "192.0.2.1", 24, "global") in ours_addrs
    assert (lab.dev, "inet6", "2001:db8:5::1", 64, "global") in ours_addrs
    finite = next(a for a in doc["addresses"] if a["address"] == "2001:db8:6::1")
    assert 800 < finite["valid"] <= 900 and 500 < finite["preferred"] <= 600
    assert {"nodad"} <= set(finite["flag_names"])

    theirs_routes = {_route_key(r, "inet") for r in ip_json("-4", "route", "show", "table", "all", netns=ns)} | {
        _route_key(r, "inet6") for r in ip_json("-6", "route", "show", "table", "all", netns=ns)
    }
    table_names = {254: "main", 255: "local"}
    ours_routes = set()
    for r in doc["routes"]:
        full = 32 if r["family"] == 2 else 128
        dst = r["dst"].removesuffix(f"/{full}") if r["dst_len"] == full else r["dst"]
        ours_routes.add((family_names[r["family"]], dst, r["gateway"], r["dev"],
                         table_names.get(r["table"], str(r["table"])), r["metric"], r["type_name"]))
    assert ours_routes == theirs_routes
    assert ("inet", "default", "192.0.2.254", lab.dev, "main", 0, "unicast") in ours_routes
    assert ("inet6", "default", "2001:db8:5::fe", lab.dev, "main", 1024, "unicast") in ours_routes

    for ifname in ("all", "default", "lo", lab.dev, lab.peer):
        listing = nsexec(ns, "grep", "-r", ".", f"/proc/sys/net/ipv6/conf/{ifname}/", check=False).stdout
        theirs = {}
        for line in listing.splitlines():
            path, _, value = line.partition(":")
            theirs[path.rsplit("/", 1)[1]] = " ".join(value.split())
        assert doc["ipv6_conf"][ifname] == theirs, ifname
    assert doc["ipv6_conf"][lab.dev]["accept_ra"] == "2"
    assert doc["ipv6_conf"][lab.peer]["accept_ra"] == "1"

    expected_listening = {k for k in lab.expected_sockets() if k[4] is None}
    assert {_sock_key(s) for s in doc["listening"]} == expected_listening




def test_without_root_pids_are_missing_but_the_snapshot_succeeds(lab: Lab) -> None:
    state = lab.workdir / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    pb = lab.workdir / "snap.toml"
    pb.write_text('name = "snap"\n' + PLAYBOOK)
    pb.chmod(0o644)
    env = dict(os.environ, SSH_CONNECTION="", SSH_CLIENT="")
    r = subprocess.run(
        ["ip", "netns", "exec", lab.ns, sys.executable, "-c", AS_NOBODY, "run", str(pb), "--json",
         "--state-dir", str(state)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(r.stdout)
    assert run["status"] == "contained", run
    (incident,) = list((state / "incidents").iterdir())
    doc = json.loads((incident / "evidence" / "connections.json").read_text())
    assert doc["pids_complete"] is False
    assert {_sock_key(s) for s in doc["sockets"]} == lab.expected_sockets(root=False)
    notes = _notes(r, "conns")
    assert "not running as root: pids and process names are missing for 7 socket(s)" in notes

    procs = json.loads((incident / "evidence" / "processes.json").read_text())
    assert procs["root"] is False
    by_pid = {p["pid"]: p for p in procs["processes"]}
    assert by_pid[lab.srv]["exe"] is None and by_pid[lab.srv]["cwd"] is None
    assert by_pid[lab.cli]["cwd"] == str(lab.workdir), "nobody's own process stays readable"
    assert by_pid[lab.srv]["listening"] == []
    ours = [p for p in procs["docker_proxies"] if p["pid"] == lab.proxy]
    assert ours == [{"pid": lab.proxy, "listening": ["tcp6 :::25 (from its command line)"],
                     "forwards_to": "172.17.0.2:25"}]
    assert any(n.startswith("not running as root: exe and cwd unreadable for ") for n in _notes(r, "procs"))


def test_a_socket_held_by_two_processes_lists_both_holders() -> None:
    """Since Docker 28 dockerd opens a published port and hands the fd to docker-proxy; the audit's
    fd-handoff check needs every holder, not psutil's one pid per socket."""
    from lockdown import hostfacts

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=[srv.fileno()])
        try:
            held = {(ln.pid, ln.process) for ln in hostfacts.tcp_listeners() if ln.port == port}
            (sock,) = [s for s in hostfacts.collect_sockets() if s.lport == port and s.state == "LISTEN"]
            expected = {(os.getpid(), psutil.Process().name()), (child.pid, psutil.Process(child.pid).name())}
        finally:
            child.kill()
            child.wait()
    assert held == expected
    assert sorted(sock.pids) == sorted([os.getpid(), child.pid])
