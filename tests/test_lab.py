"""The relay lab (scripts/lab) against a real Docker Engine and real namespaces.

Proves the facts of issue 7 on this machine: an IPv6 client is relayed because
docker-proxy makes it look like the bridge gateway (172.17.0.1 by default; read
from Docker, never assumed), the same attempt over IPv4 (DNAT,
real client address) gets 554, removing the host-side IPv6 address stops it,
nothing is ever delivered, and `down` removes the lab and nothing else.

The lab gets its own names, port and addresses (LAB_PREFIX, LAB_PORT, ...) so a
demo lab on the default names can run at the same time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, docker_bridge, ip_json, sh, unavailable, unique, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

LAB = str(REPO / "scripts" / "lab")
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv6/conf/all/disable_ipv6",
    "net/ipv6/conf/default/disable_ipv6",
)


def free_port() -> int:
    """A port nothing listens on, on 0.0.0.0 nor [::] (docker-proxy binds both)."""
    for _ in range(50):
        port = 20000 + secrets.randbelow(10000)
        try:
            for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((addr, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


def host_snapshot() -> dict[str, Any]:
    """What the lab must never change: other links, containers, addresses, routes, sysctls.

    Names starting with lkd- (other tests' namespaces and links, made in parallel)
    and docker's own vethXXXX for containers are left out of the comparison;
    link-local addresses and routes are too (docker0 gets one whenever a
    container starts).
    """

    def ours_or_transient(name: str) -> bool:
        return name.startswith(("lkd-", "veth"))

    links = sorted(link["ifname"] for link in ip_json("link") if not ours_or_transient(link["ifname"]))
    addrs = sorted(
        (link["ifname"], a["local"], a["prefixlen"])
        for link in ip_json("addr")
        if not ours_or_transient(link["ifname"])
        for a in link.get("addr_info", [])
        if a.get("scope") != "link"
    )
    routes = sorted(
        (fam, r.get("dst", ""), r.get("dev", ""), r.get("gateway", ""))
        for fam in ("-4", "-6")
        for r in ip_json(fam, "route")
        if not ours_or_transient(r.get("dev", "")) and not r.get("dst", "").startswith("fe80:")
    )
    names = sh("docker", "ps", "-a", "--format", "{{.Names}}").stdout.split()
    containers = sorted(n for n in names if not n.startswith("lkd-"))
    sysctls = {k: Path("/proc/sys", k).read_text().strip() for k in SYSCTLS}
    return {"links": links, "addrs": addrs, "routes": routes, "containers": containers, "sysctls": sysctls}


class Lab:
    def __init__(self, state: Path) -> None:
        self.prefix = unique()
        k = secrets.randbelow(64)
        net6 = f"2001:db8:1ab:{secrets.randbelow(0xFFFF) + 1:x}"
        self.env = {
            "LAB_PREFIX": self.prefix,
            "LAB_PORT": str(free_port()),
            "LAB_HOST6": f"{net6}::1",
            "LAB_CLIENT6": f"{net6}::2",
            # TEST-NET-3 /30s, apart from the demo's default 198.51.100.0/24.
            "LAB_HOST4": f"203.0.113.{4 * k + 1}",
            "LAB_CLIENT4": f"203.0.113.{4 * k + 2}",
            "LAB_PLEN4": "30",
            "LAB_STATE": str(state),
        }
        self.netns = f"{self.prefix}-client"
        self.host_if = f"{self.prefix}-h"
        self.client_if = f"{self.prefix}-c"
        self.container = f"{self.prefix}-mail"
        self.env_file = state / f"{self.prefix}.env"
        self.before: dict[str, Any] = {}

    def run(self, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, **extra}
        result = subprocess.run([LAB, *args], capture_output=True, text=True, env=env, timeout=timeout)
        print(f"$ scripts/lab {' '.join(args)}  -> {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def docker_logs(self) -> str:
        logs = sh("docker", "logs", self.container, check=False)
        return logs.stdout + logs.stderr

    def teardown(self) -> None:
        """``scripts/lab down``, then a safety net on this lab's own names should ``down`` be broken."""
        self.run("down")
        sh("docker", "rm", "-f", self.container, check=False)
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.netns, check=False)

    def leftovers(self) -> list[str]:
        left = []
        if Path("/run/netns", self.netns).exists():
            left.append(f"netns {self.netns}")
        for dev in (self.host_if, self.client_if):
            if sh("ip", "link", "show", "dev", dev, check=False).returncode == 0:
                left.append(f"link {dev}")
        if sh("docker", "inspect", self.container, check=False).returncode == 0:
            left.append(f"container {self.container}")
        if self.env_file.exists():
            left.append(f"file {self.env_file}")
        return left


def require_lab_facilities() -> None:
    if os.geteuid() != 0:
        unavailable("the lab needs root")
    for tool in ("ip", "docker", "python3"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (run scripts/setup-test-env)")
    if sh("docker", "info", check=False).returncode != 0:
        unavailable("no Docker engine (run scripts/setup-test-env)")
    probe = unique()
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        unavailable("cannot create network namespaces")
    sh("ip", "netns", "del", probe, check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab_facilities()
    lab = Lab(tmp_path_factory.mktemp("lab-state"))
    lab.before = host_snapshot()
    try:
        up = lab.run("up", timeout=300)
        assert up.returncode == 0, up.stderr
        yield lab
    finally:
        lab.teardown()


def queue_id(out: str) -> str:
    m = re.search(r"queued as ([0-9A-F]+)", out)
    assert m, out
    return m.group(1)


def test_up_publishes_on_both_families_and_writes_facts(lab: Lab) -> None:
    listeners = sh("ss", "-Htlnp", f"sport = :{lab.env['LAB_PORT']}").stdout
    assert re.search(rf"0\.0\.0\.0:{lab.env['LAB_PORT']} .*docker-proxy", listeners), listeners
    assert re.search(rf"\[::\]:{lab.env['LAB_PORT']} .*docker-proxy", listeners), listeners

    facts = dict(line.split("=", 1) for line in shlex.split(lab.env_file.read_text(), comments=True))
    assert facts["LAB_CONTAINER"] == lab.container
    assert facts["LAB_NETNS"] == lab.netns
    assert facts["LAB_HOST_IF"] == lab.host_if
    assert facts["LAB_PORT"] == lab.env["LAB_PORT"]
    assert facts["LAB_HOST6"] == lab.env["LAB_HOST6"]
    assert facts["LAB_MYNETWORKS"] == f"127.0.0.0/8 {docker_bridge().trusted}"
    assert facts["LAB_GATEWAY4"] == docker_bridge().gateway

    host = ip_json("addr", "show", "dev", lab.host_if)[0]
    assert {(a["local"], a["prefixlen"]) for a in host["addr_info"] if a["scope"] == "global"} == {
        (lab.env["LAB_HOST6"], 64),
        (lab.env["LAB_HOST4"], 30),
    }
    labels = json.loads(sh("docker", "inspect", "--format", "{{json .Config.Labels}}", lab.container).stdout)
    assert labels["lockdown.lab"] == lab.prefix

    again = lab.run("up", timeout=120)  # idempotent
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    status = lab.run("status")
    assert status.returncode == 0, status.stdout
    assert f"{lab.env['LAB_HOST6']}/64" in status.stdout
    assert "running" in status.stdout


def test_ipv6_client_is_relayed_as_the_bridge_gateway(lab: Lab) -> None:
    r = lab.run("attack", "--expect", "open")
    assert r.returncode == 0, r.stderr
    assert "relay OPEN: RCPT TO:<victim@qq.com> -> 250 2.1.5 Ok" in r.stdout
    gateway = docker_bridge().gateway
    assert f"(client seen as {gateway})" in r.stdout
    qid = queue_id(r.stdout)
    # Postfix writes the delivery attempt after the client has its 250: wait for it, with a deadline.
    line = f"{qid}: to=<victim@qq.com>, relay=none"

    def logs_with_line() -> str | None:
        text = lab.docker_logs()
        return text if line in text else None

    logs = wait_for(logs_with_line, timeout=30, what=f"the log line '{line}'")
    assert f"{qid}: client=unknown[{gateway}]" in logs

    wrong = lab.run("attack", "--expect", "closed")
    assert wrong.returncode == 1
    assert "relay OPEN" in wrong.stdout


def test_ipv4_client_keeps_its_address_and_is_denied(lab: Lab) -> None:
    r = lab.run("attack-v4", "--expect", "closed")
    assert r.returncode == 0, r.stderr
    client4 = lab.env["LAB_CLIENT4"]
    assert "relay CLOSED: RCPT TO:<victim@qq.com> -> 554 5.7.1 <victim@qq.com>: Relay access denied" in r.stdout
    assert f"(client seen as {client4})" in r.stdout  # DNAT kept the real source address
    assert "554 5.5.1 Error: no valid recipients" in r.stdout
    assert f"NOQUEUE: reject: RCPT from unknown[{client4}]: 554 5.7.1 <victim@qq.com>: Relay access denied" in (
        lab.docker_logs()
    )


def test_nothing_is_ever_delivered(lab: Lab) -> None:
    r = lab.run("attack", "--expect", "open")
    qid = queue_id(r.stdout)
    deadline = time.monotonic() + 10
    while True:
        out = sh("docker", "exec", lab.container, "postqueue", "-j").stdout
        queue = {m["queue_id"]: m for m in map(json.loads, out.splitlines())}
        if (qid in queue and queue[qid]["queue_name"] == "deferred") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert queue[qid]["queue_name"] == "deferred", queue
    assert queue[qid]["sender"] == "spam@some-random-domain.example"
    assert queue[qid]["recipients"] == [{"address": "victim@qq.com", "delay_reason": "deferred transport"}]
    assert all(m["queue_name"] == "deferred" for m in queue.values()), queue
    logs = lab.docker_logs()
    assert "status=deferred (deferred transport)" in logs
    assert "status=sent" not in logs
    postconf = sh("docker", "exec", lab.container, "postconf", "defer_transports", "smtp_dns_support_level").stdout
    assert "defer_transports = smtp" in postconf
    assert "smtp_dns_support_level = disabled" in postconf


def test_paused_container_gives_closed_quickly(lab: Lab) -> None:
    sh("docker", "pause", lab.container)
    try:
        started = time.monotonic()
        r = lab.run("attack", "--expect", "closed", LAB_TIMEOUT="3")
        elapsed = time.monotonic() - started
    finally:
        sh("docker", "unpause", lab.container)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "relay CLOSED: timed out waiting for the 220 banner" in r.stdout
    assert elapsed < 8


def test_removing_the_host_ipv6_address_stops_the_relay(lab: Lab) -> None:
    sh("ip", "addr", "del", f"{lab.env['LAB_HOST6']}/64", "dev", lab.host_if)
    r = lab.run("attack", "--expect", "closed", LAB_CONNECT_TIMEOUT="3", LAB_TIMEOUT="5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "relay CLOSED: " in r.stdout
    assert "RCPT TO" not in r.stdout.split("relay CLOSED: ", 1)[1]
    # The IPv4 path is unaffected: still denied by Postfix, not by the network.
    r4 = lab.run("attack-v4", "--expect", "closed")
    assert "554 5.7.1" in r4.stdout

    # `up` again puts the address back (the lab is still misconfigured): open again.
    up = lab.run("up", timeout=120)
    assert up.returncode == 0, up.stderr
    assert lab.run("attack", "--expect", "open").returncode == 0


def test_down_removes_the_lab_and_nothing_else(lab: Lab) -> None:
    assert lab.leftovers(), "the lab should be up before down"
    r = lab.run("down")
    assert r.returncode == 0, r.stderr
    assert lab.leftovers() == []
    assert lab.prefix not in sh("ip", "netns", "list").stdout
    assert not any(link["ifname"].startswith(lab.prefix) for link in ip_json("link"))
    again = lab.run("down")
    assert again.returncode == 0, again.stderr
    status = lab.run("status")
    assert status.returncode == 1
    assert host_snapshot() == lab.before


def test_failed_up_removes_what_it_made(tmp_path: Path) -> None:
    """`up` on a port that is taken fails and leaves nothing behind (trap cleanup)."""
    require_lab_facilities()
    lab = Lab(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", int(lab.env["LAB_PORT"])))
        taken.listen()
        try:
            r = lab.run("up", timeout=300)
            assert r.returncode != 0
            assert "up failed" in r.stderr
            assert lab.leftovers() == []
        finally:
            lab.run("down")
            sh("docker", "rm", "-f", lab.container, check=False)
            sh("ip", "netns", "del", lab.netns, check=False)


def test_up_on_a_host_without_ipv6_says_what_to_enable(tmp_path: Path, netns: str) -> None:
    """IPv6 disabled (common on servers): `up` names the sysctl to set instead of ip's raw
    "IPv6 is disabled on this device", and makes nothing. The "host" is a netns of our own with
    disable_ipv6=1 set inside it only, so the real host's sysctls are never touched."""
    require_lab_facilities()
    for conf in ("all", "default"):
        sh("ip", "netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")
    lab = Lab(tmp_path)
    env = {**os.environ, **lab.env}
    r = subprocess.run(["ip", "netns", "exec", netns, LAB, "up"], capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        "lab: IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1),"
        " and the lab's relay path is IPv6 -> docker-proxy; nothing was changed. To run the lab, enable it:"
        " sysctl -w net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0"
        " (and set it back afterwards if this host should stay IPv6-free)\n"
    )
    assert lab.leftovers() == []
    assert ip_json("link", netns=netns)[0]["ifname"] == "lo" and len(ip_json("link", netns=netns)) == 1
