"""``nft.block`` on the real kernel, and ``relay-incident-surgical`` on a real Postfix container.

Kernel tests build their whole world in namespaces they create: ``host`` (where
lockdown runs, as on a mail server), ``client`` (the bot) and ``ctr`` (a
container behind DNAT), joined by veth pairs, addresses in 2001:db8::/32 and
10.2xx/24. The test's own nat table in ``host`` stands in for Docker with
``userland-proxy: false``; a listener in ``host`` itself stands in for
docker-proxy. Everything is read with ``nft``/``ip`` directly, never through
lockdown's code.

Docker tests act in the host's network namespace, as lockdown does on a real
server: they only ever create lockdown's own ``lockdown_*`` table there, with
rules matching only the test's own ports and the test's own Docker network, and
delete it in ``finally`` whatever happens. No other table is touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, sh, unavailable, unique
from tests.dockerlab import BUSYBOX, POSTFIX, TEST_LABEL, Lab, journal, lab, playbook, v6_host_port, wait_smtp

pytestmark = [pytest.mark.netns]

CONNECT = """
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        print(s.recv(100).decode(errors="replace").strip())
except OSError as exc:
    print(type(exc).__name__, exc)
    sys.exit(1)
"""

SERVE = """
import socket, sys
ports = [int(p) for p in sys.argv[1:]]
socks = []
for port in ports:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(64)
    socks.append(s)
print("ready", flush=True)
import selectors
sel = selectors.DefaultSelector()
for s in socks:
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(b"220 port %d\\r\\n" % key.fileobj.getsockname()[1])
        conn.close()
"""


def nsexec(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def connects(ns: str | None, host: str, port: int, timeout: float = 1.0) -> bool:
    """A TCP connection from ``ns`` (None: this namespace) is accepted and says 220."""
    cmd = [sys.executable, "-c", CONNECT, host, str(port), str(timeout)]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and r.stdout.startswith("220")


def nft_json(ns: str | None, *args: str) -> str:
    cmd = ["nft", "-j", *args]
    return (nsexec(ns, *cmd) if ns else sh(*cmd)).stdout


def lockdown_tables(ns: str | None = None) -> list[str]:
    doc = json.loads(nft_json(ns, "list", "tables"))
    return sorted(
        f"{t['table']['family']} {t['table']['name']}"
        for t in doc["nftables"]
        if "table" in t and t["table"]["name"].startswith("lockdown_")
    )


def need_nft() -> None:
    if shutil.which("nft") is None:
        unavailable("nft is not installed (Debian package nftables; scripts/install-deps)")


def counters(state_dir: Path, incident_id: str, step: str) -> list[dict[str, Any]]:
    path = state_dir / "incidents" / incident_id / "evidence" / "nft" / step / "counters.json"
    doc: list[dict[str, Any]] = json.loads(path.read_text())
    return doc


# ------------------------------------------------------------ the namespace world


@dataclass
class World:
    """host, client and ctr namespaces; addresses of host as the client sees them."""

    host: str
    client: str
    ctr: str
    host6: str = "2001:db8:a::1"
    host4: str = "10.250.0.1"
    ctr6: str = "2001:db8:b::2"
    ctr4: str = "10.251.0.2"
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def serve(self, ns: str, *ports: int) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SERVE, *map(str, ports)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def ruleset(self) -> str:
        return nft_json(self.host, "list", "ruleset")

    def run(self, *args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, netns=self.host, state_dir=state_dir)


def link(a: str, b: str, a_addrs: list[str], b_addrs: list[str]) -> None:
    """A veth pair between namespaces ``a`` and ``b`` with addresses on each end (no DAD wait)."""
    ea, eb = unique(), unique()
    sh("ip", "link", "add", ea, "netns", a, "type", "veth", "peer", "name", eb, "netns", b)
    for ns, dev, addrs in ((a, ea, a_addrs), (b, eb, b_addrs)):
        for addr in addrs:
            extra = ["nodad"] if ":" in addr else []
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, *extra)
        sh("ip", "-n", ns, "link", "set", dev, "up")


@pytest.fixture
def world(need_root: None) -> Iterator[World]:
    need_nft()
    names = [unique(), unique(), unique()]
    made: list[str] = []
    w = World(*names)
    try:
        for ns in names:
            if sh("ip", "netns", "add", ns, check=False).returncode != 0:
                unavailable("cannot create a network namespace")
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # no DAD on the links made next (link-local addresses included): usable at once
            nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
        link(w.host, w.client, ["2001:db8:a::1/64", "10.250.0.1/24"], ["2001:db8:a::2/64", "10.250.0.2/24"])
        link(w.host, w.ctr, ["2001:db8:b::1/64", "10.251.0.1/24"], ["2001:db8:b::2/64", "10.251.0.2/24"])
        for ns in (w.client, w.ctr):
            gw6, gw4 = ("2001:db8:a::1", "10.250.0.1") if ns == w.client else ("2001:db8:b::1", "10.251.0.1")
            sh("ip", "-n", ns, "-6", "route", "add", "default", "via", gw6)
            sh("ip", "-n", ns, "route", "add", "default", "via", gw4)
        nsexec(w.host, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv4.ip_forward=1")
        yield w
    finally:
        for proc in w.procs:
            proc.kill()
            proc.wait()
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


PROXY_PORT, NAT_PORT, OTHER_PORT, CTR_PORT = 2525, 2626, 8025, 25

#: The test's stand-in for Docker with userland-proxy false: DNAT of the published
#: port to the "container", in nat prerouting at -100, as Docker's own rule.
DNAT = f"""
table ip6 lkdtest_nat {{
  chain pre {{ type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local tcp dport {NAT_PORT} dnat to [2001:db8:b::2]:{CTR_PORT}
  }}
}}
table ip lkdtest_nat {{
  chain pre {{ type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local tcp dport {NAT_PORT} dnat to 10.251.0.2:{CTR_PORT}
  }}
}}
"""

#: A table of someone else (a firewall), which nft.block must leave byte for byte.
DECOY = """
table inet lkdtest_decoy {
  set trusted { type ipv6_addr; flags interval; elements = { 2001:db8:ffff::/48 } }
  chain input { type filter hook input priority filter; policy accept;
    tcp dport 9 ip6 saddr @trusted counter accept comment "decoy"
  }
  chain pre { type filter hook prerouting priority -150; policy accept;
    tcp dport 9 counter
  }
}
"""


def paths(w: World) -> dict[str, bool]:
    """Which ways in are open, as the client in its own namespace sees them."""
    return {
        "v6 proxy port": connects(w.client, w.host6, PROXY_PORT),
        "v6 nat port": connects(w.client, w.host6, NAT_PORT),
        "v6 other port": connects(w.client, w.host6, OTHER_PORT),
        "v4 proxy port": connects(w.client, w.host4, PROXY_PORT),
        "v4 nat port": connects(w.client, w.host4, NAT_PORT),
    }


ALL_OPEN = dict.fromkeys(["v6 proxy port", "v6 nat port", "v6 other port", "v4 proxy port", "v4 nat port"], True)


def test_inbound_ip6_blocks_docker_proxy_and_dnat_paths_and_undo_is_exact(
    world: World, tmp_path: Path, state_dir: Path
) -> None:
    w = world
    w.serve(w.host, PROXY_PORT, OTHER_PORT)  # docker-proxy stand-in: INPUT path
    w.serve(w.ctr, CTR_PORT)  # the "container" behind DNAT: FORWARD path
    subprocess.run(["ip", "netns", "exec", w.host, "nft", "-f", "-"], input=DNAT + DECOY, text=True, check=True)
    decoy_before = nft_json(w.host, "list", "table", "inet", "lkdtest_decoy")
    nat_before = nft_json(w.host, "list", "table", "ip6", "lkdtest_nat")
    assert paths(w) == ALL_OPEN
    before = w.ruleset()

    pb = playbook(
        tmp_path,
        {"id": "block-v6", "action": "nft.block", "container": "none", "ports": [PROXY_PORT, NAT_PORT]},
    )
    r = w.run("run", str(pb), "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    incident = json.loads(r.stdout)["incident_id"]
    table = lockdown_tables(w.host)
    assert len(table) == 1 and table[0].startswith("inet lockdown_"), table

    assert paths(w) == {**ALL_OPEN, "v6 proxy port": False, "v6 nat port": False}
    assert nft_json(w.host, "list", "table", "inet", "lkdtest_decoy") == decoy_before
    assert nft_json(w.host, "list", "table", "ip6", "lkdtest_nat") == nat_before

    r = w.run("restore", incident, state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert w.ruleset() == before  # exact: nothing of ours left, nothing else changed
    assert paths(w) == ALL_OPEN
    dropped = counters(state_dir, incident, "block-v6")
    assert len(dropped) == 1 and dropped[0]["packets"] >= 2, dropped  # >= one SYN per blocked path
    assert dropped[0]["comment"] == f"lockdown: new ipv6 tcp to local port(s) {PROXY_PORT}, {NAT_PORT}"

    r = w.run("restore", incident, state_dir=state_dir)  # idempotent
    assert r.returncode == 0, r.stdout + r.stderr
    assert w.ruleset() == before
    ev = state_dir / "incidents" / incident / "evidence" / "nft" / "block-v6"
    assert json.loads((ev / "ruleset-before.json").read_text()) == json.loads(before)
    after = json.loads((ev / "ruleset-after.json").read_text())
    assert any(i.get("table", {}).get("name", "").startswith("lockdown_") for i in after["nftables"])


def test_family_both_blocks_ipv4_too_and_other_ports_stay_open(world: World, tmp_path: Path, state_dir: Path) -> None:
    w = world
    w.serve(w.host, PROXY_PORT, OTHER_PORT)
    before = w.ruleset()
    pb = playbook(tmp_path, {"action": "nft.block", "container": "none", "ports": [PROXY_PORT], "family": "both"})
    r = w.run("run", str(pb), "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not connects(w.client, w.host6, PROXY_PORT)
    assert not connects(w.client, w.host4, PROXY_PORT)
    assert connects(w.client, w.host6, OTHER_PORT) and connects(w.client, w.host4, OTHER_PORT)
    assert w.run("restore", "--last", state_dir=state_dir).returncode == 0
    assert w.ruleset() == before


def test_two_steps_share_the_incident_table_and_undo_one_at_a_time(
    world: World, tmp_path: Path, state_dir: Path
) -> None:
    w = world
    w.serve(w.host, PROXY_PORT, OTHER_PORT)
    before = w.ruleset()
    pb = playbook(
        tmp_path,
        {"id": "a", "action": "nft.block", "container": "none", "ports": [PROXY_PORT]},
        {"id": "b-2", "action": "nft.block", "container": "none", "ports": [OTHER_PORT], "family": "ip"},
    )
    r = w.run("run", str(pb), "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    incident = json.loads(r.stdout)["incident_id"]
    (table,) = lockdown_tables(w.host)
    chains = sorted(
        c["chain"]["name"] for c in json.loads(nft_json(w.host, "list", "table", *table.split()))["nftables"]
        if "chain" in c
    )
    assert chains[0] == "a" and chains[1].startswith("b_2_"), chains
    assert not connects(w.client, w.host6, PROXY_PORT) and not connects(w.client, w.host4, OTHER_PORT)
    r = w.run("restore", incident, "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    notes = [n for s in json.loads(r.stdout)["steps"] for n in s["notes"]]
    assert any(n.startswith("chain b_2_") and "deleted (1 left)" in n for n in notes), notes
    assert any(n.startswith(f"table inet {table.split()[1]} deleted") for n in notes), notes
    assert w.ruleset() == before


def test_a_table_deleted_by_hand_is_fine_on_restore(world: World, tmp_path: Path, state_dir: Path) -> None:
    w = world
    before = w.ruleset()
    pb = playbook(tmp_path, {"id": "block", "action": "nft.block", "container": "none"})
    r = w.run("run", str(pb), "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    incident = json.loads(r.stdout)["incident_id"]
    (table,) = lockdown_tables(w.host)
    listing = json.loads(nft_json(w.host, "list", "table", *table.split()))["nftables"]
    (rule,) = [i["rule"] for i in listing if "rule" in i]
    assert {"set": [25, 465, 587]} in [e["match"]["right"] for e in rule["expr"] if "match" in e]
    nsexec(w.host, "nft", "delete", "table", *table.split())
    r = w.run("restore", incident, state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"table {table} is already gone: nothing to delete" in r.stdout
    assert w.ruleset() == before


def test_missing_nft_is_exit_5_naming_the_package_and_nothing_changes(
    world: World, tmp_path: Path, state_dir: Path
) -> None:
    """Run in the test's namespace with a PATH that has no nft (should it run, nothing of the host changes)."""
    before = world.ruleset()
    pb = playbook(tmp_path, {"id": "block", "action": "nft.block", "container": "none", "ports": [2525]})
    empty = tmp_path / "empty-path"
    empty.mkdir()
    ip = shutil.which("ip")
    assert ip is not None
    r = subprocess.run(
        [ip, "netns", "exec", world.host, sys.executable, "-m", "lockdown", "run", str(pb)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": str(empty), "LOCKDOWN_STATE_DIR": str(state_dir)},
    )
    assert r.returncode == 5, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        f"lockdown: error: {pb} step 1 (block): nft (nftables) is not installed: nft.block needs it",
        "  -> install Debian's nftables package: apt-get install nftables",
    ]
    assert not (state_dir / "incidents").exists() or not any((state_dir / "incidents").iterdir())
    assert world.ruleset() == before


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"family": "ip4"}, 'family: expected "ip6", "ip" or "both", got \'ip4\''),
        ({"direction": "in"}, 'direction: expected "inbound" or "outbound", got \'in\''),
        ({"ports": [0]}, "ports[0]: expected a TCP port 1 to 65535, got 0"),
        (
            {"direction": "outbound", "container": "none"},
            'container: direction = "outbound" needs the mail container (its networks), not "none"',
        ),
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, step: dict[str, Any], message: str) -> None:
    pb = playbook(tmp_path, {"id": "block", "action": "nft.block", **step})
    r = run_cli("playbooks", "validate", str(pb))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[0] == f"lockdown: error: {pb}: step 1 (block): {message}"


# ------------------------------------------------------------ Docker, host namespace


@pytest.fixture
def dlab(docker_engine: Any) -> Iterator[Lab]:
    with lab(docker_engine) as the_lab:
        yield the_lab


@pytest.fixture
def no_stray_table() -> Iterator[list[str]]:
    """Tables of the test's incidents; deleted in ``finally`` if a test left one."""
    mine: list[str] = []
    try:
        yield mine
    finally:
        for table in mine:
            if table in lockdown_tables():
                sh("nft", "delete", "table", *table.split(), check=False)


@dataclass
class Bot:
    """A client namespace joined to the host by a test-created veth (2001:db8:…/64)."""

    ns: str
    host_if: str
    host6: str


@pytest.fixture
def bot(need_root: None) -> Iterator[Bot]:
    ns, host_if, client_if = unique(), unique(), unique()
    net = f"2001:db8:{secrets.randbelow(0xFFFF) + 1:x}:{secrets.randbelow(0xFFFF) + 1:x}"
    if sh("ip", "netns", "add", ns, check=False).returncode != 0:
        unavailable("cannot create a network namespace")
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", client_if, "netns", ns)
        sh("ip", "addr", "add", f"{net}::1/64", "dev", host_if, "nodad")
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{net}::2/64", "dev", client_if, "nodad")
        sh("ip", "-n", ns, "link", "set", client_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield Bot(ns, host_if, f"{net}::1")
    finally:
        sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", ns, check=False)


def published_everywhere(dlab: Lab, image: str, command: Any = None, **kwargs: Any) -> Any:
    """A container publishing 25/tcp on every address (0.0.0.0 and ::), as in the postmortem."""
    c = dlab.client.containers.run(
        image, command, name=unique(), detach=True, labels={TEST_LABEL: dlab.owner}, ports={"25/tcp": None}, **kwargs
    )
    dlab.containers.append(c)
    c.reload()
    return c


def published_port(c: Any) -> int:
    c.reload()
    return int(c.attrs["NetworkSettings"]["Ports"]["25/tcp"][0]["HostPort"])


def test_inbound_through_docker_proxy_on_a_real_container(
    dlab: Lab, bot: Bot, tmp_path: Path, state_dir: Path, no_stray_table: list[str]
) -> None:
    """IPv6 of the bot reaches the container through docker-proxy; nft.block stops exactly that."""
    need_nft()
    c = published_everywhere(dlab, BUSYBOX, ["nc", "-ll", "-p", "25", "-e", "echo", "220 ctr"])
    port, port4 = v6_host_port(c), published_port(c)
    assert wait_connects(bot.ns, bot.host6, port), "docker-proxy does not answer over IPv6"
    assert connects(None, "127.0.0.1", port4)
    pb = playbook(tmp_path, {"id": "block-v6", "action": "nft.block", "container": c.name})
    r = run_cli("run", str(pb), "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    stamp, suffix = doc["incident_id"].split("-")[0], doc["incident_id"].split("-")[-1]
    table = "inet lockdown_" + stamp.lower().replace(".", "_") + "_" + suffix
    no_stray_table.append(table)
    assert table in lockdown_tables()
    # the default ports are those the container publishes for 25 (docker-proxy's port)
    resolved = next(e for e in journal(state_dir, doc["incident_id"]) if e["phase"] == "intent")["resolved"]
    assert resolved["ports"] == sorted({port, port4}) and resolved["containers"] == [c.name]
    assert not connects(bot.ns, bot.host6, port)
    assert connects(None, "127.0.0.1", port4)  # IPv4 still answered
    r = run_cli("restore", doc["incident_id"], "--reopen-anyway", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert table not in lockdown_tables()
    assert connects(bot.ns, bot.host6, port)
    assert counters(state_dir, doc["incident_id"], "block-v6")[0]["packets"] >= 1


def wait_connects(ns: str | None, host: str, port: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if connects(ns, host, port):
            return True
        time.sleep(0.3)
    return False


class Listener:
    """TCP listeners of the test on one address, answering 220 (the test's own "outside" SMTP)."""

    def __init__(self, address: str, ports: list[int]) -> None:
        self.socks = []
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
            s.listen(16)
            s.settimeout(0.2)
            self.socks.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            for s in self.socks:
                try:
                    conn, _ = s.accept()
                except OSError:
                    continue
                with conn:
                    conn.sendall(b"220 outside\r\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def container_connects(c: Any, host: str, port: int) -> bool:
    code, out = c.exec_run(["sh", "-c", f"nc -w 2 {host} {port} </dev/null"])
    return code == 0 and b"220 outside" in out


def test_outbound_blocks_port_25_from_the_container_network_only(
    dlab: Lab, tmp_path: Path, state_dir: Path, no_stray_table: list[str], need_root: None
) -> None:
    need_nft()
    net = dlab.client.networks.create(unique(), labels={TEST_LABEL: dlab.owner})
    try:
        net.reload()
        subnet = net.attrs["IPAM"]["Config"][0]["Subnet"]
        gateway = net.attrs["IPAM"]["Config"][0]["Gateway"]
        c = dlab.run(BUSYBOX, ["sleep", "600"], network=net.name)
        listener = Listener(gateway, [25, 2587])
        try:
            assert container_connects(c, gateway, 25) and container_connects(c, gateway, 2587)
            pb = playbook(
                tmp_path, {"id": "out", "action": "nft.block", "container": c.name, "direction": "outbound",
                           "family": "both"},
            )
            r = run_cli("run", str(pb), "--json", state_dir=state_dir)
            assert r.returncode == 0, r.stdout + r.stderr
            incident = json.loads(r.stdout)["incident_id"]
            no_stray_table.append(f"inet {lockdown_table_of(incident)}")
            intent = next(e for e in journal(state_dir, incident) if e["phase"] == "intent")
            assert intent["resolved"]["subnets"] == [subnet] and intent["resolved"]["ports"] == [25]
            assert not container_connects(c, gateway, 25)
            assert container_connects(c, gateway, 2587)
            r = run_cli("restore", incident, "--reopen-anyway", state_dir=state_dir)
            assert r.returncode == 0, r.stdout + r.stderr
            assert container_connects(c, gateway, 25)
            assert counters(state_dir, incident, "out")[0]["packets"] >= 1
        finally:
            listener.close()
    finally:
        dlab.cleanup()
        dlab.containers.clear()
        net.remove()


def lockdown_table_of(incident_id: str) -> str:
    stamp, suffix = incident_id.split("-")[0], incident_id.split("-")[-1]
    return f"lockdown_{stamp.lower().replace('.', '_')}_{suffix}"


def test_outbound_on_an_ipv4_network_with_family_ip6_says_so(
    dlab: Lab, tmp_path: Path, state_dir: Path, need_root: None
) -> None:
    need_nft()
    net = dlab.client.networks.create(unique(), labels={TEST_LABEL: dlab.owner})
    try:
        c = dlab.run(BUSYBOX, ["sleep", "600"], network=net.name)
        tables = nft_json(None, "list", "tables")
        pb = playbook(tmp_path, {"id": "out", "action": "nft.block", "container": c.name, "direction": "outbound"})
        r = run_cli("run", str(pb), state_dir=state_dir)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.strip().splitlines() == [
            f'lockdown: error: {pb} step 1 (out): family = "ip6": the networks of {c.name} have no ipv6 '
            "subnet, so nothing would be blocked",
            '  -> use family = "ip" or "both" for an IPv4 Docker network',
        ]
        assert nft_json(None, "list", "tables") == tables
    finally:
        dlab.cleanup()
        dlab.containers.clear()
        net.remove()


# ------------------------------------------------------------ the surgical playbook


def smtp_relay(ns: str | None, host: str, port: int) -> str:
    """The bots' attempt (EHLO, MAIL FROM, RCPT TO qq.com, never DATA); the RCPT answer or the error."""
    code = f"""
import smtplib, sys
try:
    s = smtplib.SMTP({host!r}, {port}, timeout=3)
    s.ehlo("bot.example")
    s.mail("bot@example.net")
    print(s.rcpt("victim@qq.com")[0])
    s.rset(); s.quit()
except (OSError, smtplib.SMTPException) as exc:
    print("failed:", type(exc).__name__)
"""
    cmd = [sys.executable, "-c", code]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()


def test_surgical_playbook_closes_the_ipv6_relay_and_keeps_the_container_running(
    dlab: Lab, bot: Bot, tmp_path: Path, state_dir: Path, no_stray_table: list[str]
) -> None:
    need_nft()
    net = dlab.client.networks.create(unique(), labels={TEST_LABEL: dlab.owner})
    try:
        net.reload()
        subnet = net.attrs["IPAM"]["Config"][0]["Subnet"]
        c = published_everywhere(
            dlab, POSTFIX, network=net.name, environment={"POSTFIX_MYNETWORKS": f"127.0.0.0/8 {subnet}"}
        )
        port, port4 = v6_host_port(c), published_port(c)
        wait_smtp(port4)
        assert smtp_relay(bot.ns, bot.host6, port) == "250"  # the open relay, through docker-proxy
        addrs_before = host_v6_addresses(bot.host_if)
        tables_before = lockdown_tables()
        c.reload()
        state_before = c.attrs["State"]
        r = run_cli(
            "run", "relay-incident-surgical", "--var", f"container={c.name}", "--json", state_dir=state_dir,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        incident = doc["incident_id"]
        no_stray_table.append(f"inet {lockdown_table_of(incident)}")
        assert doc["status"] == "contained" and all(s["state"] == "ok" for s in doc["steps"]), doc["steps"]
        assert smtp_relay(bot.ns, bot.host6, port).startswith("failed:")
        assert connects(None, "127.0.0.1", port4)  # IPv4 still answered: 220
        c.reload()
        assert c.attrs["State"]["Status"] == "running"
        assert host_v6_addresses(bot.host_if) == addrs_before
        assert f"{bot.host_if} {bot.host6}/64" in addrs_before
        r = run_cli("restore", incident, "--reopen-anyway", state_dir=state_dir, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert counters(state_dir, incident, "block-inbound-v6")[0]["packets"] >= 1  # the bot's SYNs
        assert lockdown_tables() == tables_before  # our table gone, no other lockdown table touched
        c.reload()
        assert c.attrs["State"] == state_before  # never paused, never restarted
        assert host_v6_addresses(bot.host_if) == addrs_before
        assert smtp_relay(bot.ns, bot.host6, port) == "250"  # the hole is back (gate: test_gate.py)
    finally:
        dlab.cleanup()
        dlab.containers.clear()
        net.remove()


def host_v6_addresses(mine: str) -> list[str]:
    """Global IPv6 addresses of the host's interfaces: its own and the test's ``mine``
    (other tests' lkd-/veth links come and go meanwhile, and are left out)."""
    out = json.loads(sh("ip", "-j", "-6", "addr").stdout or "[]")
    return sorted(
        f"{link['ifname']} {a['local']}/{a['prefixlen']}"
        for link in out
        if link["ifname"] == mine or not link["ifname"].startswith(("lkd-", "veth"))
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    )


def test_serve_routes_can_name_either_playbook(tmp_path: Path) -> None:
    """Both shipped relay playbooks are found by name from a route, with the same vars."""
    from lockdown.engine.playbook import load_playbook
    from lockdown.triggers.config import load_config

    (tmp_path / "token").write_text("s3cret-0123456789abcdef\n")
    (tmp_path / "token").chmod(0o600)
    config = tmp_path / "lockdown.toml"
    config.write_text(
        f"""state_dir = "{tmp_path}/state"
[server]
token_file = "{tmp_path}/token"

[[routes]]
alert = "MailRelaySurge"
playbook = "relay-incident"
vars = {{ container = "mailserver" }}

[[routes]]
alert = "MailRelaySurgeBusinessHours"
playbook = "relay-incident-surgical"
vars = {{ container = "mailserver" }}
"""
    )
    cfg = load_config(config)
    assert [(r.alert, r.playbook) for r in cfg.routes] == [
        ("MailRelaySurge", "relay-incident"),
        ("MailRelaySurgeBusinessHours", "relay-incident-surgical"),
    ]
    surgical = load_playbook(cfg.routes[1].playbook, dict(cfg.routes[1].vars))
    assert [(s.id, s.action_name) for s in surgical.steps][:3] == [
        ("block-inbound-v6", "nft.block"),
        ("block-outbound-smtp", "nft.block"),
        ("hold-queue", "postfix.hold_queue"),
    ]
    assert "docker.pause" not in {s.action_name for s in surgical.steps}
    assert "ipv6.strip" not in {s.action_name for s in surgical.steps}


#: In the netns it runs in: no free file descriptor left, then one nft change through lockdown.nft.
NO_FDS = """
import json, os, resource, sys
from lockdown import nft
from lockdown.errors import LockdownError
assert nft.load_library(), "libnftables did not load"
free = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
for _ in range(free):
    os.close(held.pop())
add = [{"add": {"table": {"family": "inet", "name": "lkd_no_fds"}}}]
try:
    nft.run_batch(add, "add table inet lkd_no_fds")
    print("added")
except LockdownError as exc:
    print("error:", exc)
    print("hint:", exc.hint)
print("alive")
"""


def test_no_free_file_descriptor_is_a_step_error_not_the_end_of_the_process(world: World) -> None:
    """libnftables calls exit() when it cannot open its netlink socket: serve would end with it."""

    def attempt(free: int) -> list[str]:
        r = nsexec(world.host, sys.executable, "-c", NO_FDS, str(free), check=False)
        assert r.returncode == 0, f"exit {r.returncode}: {r.stdout}{r.stderr}"
        return r.stdout.splitlines()

    def tables() -> list[str]:
        listing = json.loads(nft_json(world.host, "list", "tables"))["nftables"]
        return [t["table"]["name"] for t in listing if "table" in t]

    assert attempt(0) == [
        "error: cannot add table inet lkd_no_fds: cannot open a netfilter netlink socket (Too many open files); "
        "nothing was changed",
        "hint: the process is out of file descriptors: raise its limit (ulimit -n; LimitNOFILE= for serve's unit) "
        "and run the same command again",
        "alive",
    ]
    assert "lkd_no_fds" not in tables()
    assert attempt(1) == ["added", "alive"]  # one descriptor is all the library needs: the probe leaves it
    assert "lkd_no_fds" in tables()
