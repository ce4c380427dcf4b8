"""The stack labs (scripts/lab up --stack dms|mailcow|mailu) against real Docker, Postfix and nginx.

Issue 18's tests, per stack: the relay is open over IPv6 before; ``lockdown run relay-incident``
with no vars but the Compose project (other engineers' stacks may run on this host) holds the
queue and pauses the stack's own containers and the relay is closed; the evidence holds the
stack's gateway lines (``client=`` or postscreen's); ``audit --json`` names the stack and gives
its fix; restore gives back the exact Docker State and addresses; and for docker-mailserver and
mailcow, applying the fix the audit printed makes ``audit --probe`` clean.

One lab per stack, shared by that stack's tests (a module-scoped, parametrised fixture: pytest
runs every test of one stack before it builds the next). lockdown runs in a network namespace
of the test's own (a veth with a 2001:db8 address), so its IPv6 strip touches only that; the
relay is closed by the pause, which the attack from the lab's client netns proves.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import shlex
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockdown.audit import stackfix
from tests import netlab
from tests.conftest import REPO, ip_json, run_cli, sh, unique, wait_for
from tests.dockerlab import incident_dir
from tests.test_lab import free_port, host_snapshot, require_lab_facilities

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

LAB = str(REPO / "scripts" / "lab")
TITLES = {"dms": "docker-mailserver", "mailcow": "mailcow", "mailu": "Mailu"}
STACK_IDS = {"dms": "docker-mailserver", "mailcow": "mailcow", "mailu": "mailu"}


class StackLab:
    """One `scripts/lab --stack X` lab on unique names, plus the namespace lockdown runs in."""

    def __init__(self, stack: str, state: Path) -> None:
        self.stack = stack
        self.prefix = unique()
        net6 = f"2001:db8:1b{'cde'[list(TITLES).index(stack)]}:{os.getpid() % 0xFFFF:x}"
        self.env = {
            "LAB_PREFIX": self.prefix,
            "LAB_PORT": str(free_port()),
            "LAB_HOST6": f"{net6}::1",
            "LAB_CLIENT6": f"{net6}::2",
            "LAB_STATE": str(state),
        }
        self.env_file = state / f"{self.prefix}.env"
        self.facts: dict[str, str] = {}
        self.ops = ""  # the namespace lockdown runs in
        self.ops_if = ""
        self.before: dict[str, Any] = {}

    def run(self, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, **extra}
        r = subprocess.run(
            [LAB, *args, "--stack", self.stack], capture_output=True, text=True, env=env, timeout=timeout
        )
        print(f"$ scripts/lab {' '.join(args)} --stack {self.stack} -> {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def attack(self, expect: str) -> subprocess.CompletedProcess[str]:
        return self.run("attack", "--expect", expect, LAB_CONNECT_TIMEOUT="3", LAB_TIMEOUT="6")

    @property
    def inbound(self) -> list[str]:
        return self.facts["LAB_INBOUND"].split()

    def inspect(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(sh("docker", "inspect", name).stdout)[0]
        return doc

    def lab_addresses(self) -> dict[str, Any]:
        """ip -j addresses of the lab's interfaces and of lockdown's namespace (global scope)."""

        def glob(links: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
            return sorted(
                (ln["ifname"], a["local"], a["prefixlen"])
                for ln in links
                for a in ln.get("addr_info", [])
                if a.get("scope") == "global"
            )

        return {
            "host": glob(ip_json("addr", "show", "dev", self.facts["LAB_HOST_IF"])),
            "client": glob(ip_json("addr", "show", "dev", self.facts["LAB_CLIENT_IF"], netns=self.facts["LAB_NETNS"])),
            "ops": glob(ip_json("addr", netns=self.ops)),
        }

    def lockdown(self, state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return netlab.lockdown(self.ops, state_dir, *args)


@pytest.fixture(scope="module", params=["dms", "mailcow", "mailu"])
def slab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackLab]:
    require_lab_facilities()
    the_lab = StackLab(request.param, tmp_path_factory.mktemp(f"lab-{request.param}"))
    the_lab.ops = unique()
    sh("ip", "netns", "add", the_lab.ops)
    try:
        a0, _ = netlab.veth(the_lab.ops)
        netlab.ipn(the_lab.ops, "addr", "add", "2001:db8:18::1/64", "dev", a0, "nodad")
        the_lab.ops_if = a0
        the_lab.before = {**host_snapshot(), "networks": docker_networks()}
        up = the_lab.run("up", timeout=300)
        assert up.returncode == 0, up.stderr
        the_lab.facts = dict(ln.split("=", 1) for ln in shlex.split(the_lab.env_file.read_text(), comments=True))
        yield the_lab
    finally:
        the_lab.run("down")
        sh("ip", "netns", "del", the_lab.ops, check=False)


def docker_networks() -> list[str]:
    """Docker's networks but the tests' own (lkd-...), which other tests make in parallel."""
    names = sh("docker", "network", "ls", "--format", "{{.Name}}").stdout.split()
    return sorted(n for n in names if not n.startswith("lkd-"))


def test_up_builds_the_stack_shape(slab: StackLab) -> None:
    f = slab.facts
    assert f["LAB_PROJECT"] == slab.prefix
    for name in slab.inbound:
        labels = slab.inspect(name)["Config"]["Labels"]
        assert labels["com.docker.compose.project"] == slab.prefix
        assert name == f"{slab.prefix}-{labels['com.docker.compose.service']}"
    net = json.loads(sh("docker", "network", "inspect", f["LAB_NETWORK"]).stdout)[0]
    assert net["IPAM"]["Config"][0]["Subnet"] == f["LAB_SUBNET"]
    assert net["IPAM"]["Config"][0]["Gateway"] == f["LAB_GATEWAY4"]
    mynetworks = sh("docker", "exec", f["LAB_POSTFIX"], "postconf", "-h", "mynetworks").stdout.split()
    if slab.stack == "dms":
        # PERMIT_DOCKER=network trusts 172.16.0.0/12; a lab whose subnet Docker took elsewhere
        # (its 172.x pools used up) trusts its own subnet, as PERMIT_DOCKER=connected-networks would
        in_default = ipaddress.ip_network(f["LAB_SUBNET"]).subnet_of(ipaddress.ip_network("172.16.0.0/12"))
        assert mynetworks == ["127.0.0.0/8", "172.16.0.0/12" if in_default else f["LAB_SUBNET"]]
        assert slab.inspect(f["LAB_POSTFIX"])["Config"]["Env"].count("PERMIT_DOCKER=network") == 1
    elif slab.stack == "mailcow":
        assert f["LAB_NETWORK"] == f"{slab.prefix}_mailcow-network"
        assert mynetworks == ["127.0.0.0/8", f["LAB_SUBNET"]]
        master = sh("docker", "exec", f["LAB_POSTFIX"], "postconf", "-M", "smtp/inet").stdout.split()
        assert master[-1] == "postscreen"
    else:
        assert mynetworks == ["127.0.0.0/8", f["LAB_SUBNET"]]
        assert f"SUBNET={f['LAB_SUBNET']}" in slab.inspect(f["LAB_POSTFIX"])["Config"]["Env"]
        xclient = sh("docker", "exec", f["LAB_POSTFIX"], "postconf", "-h", "smtpd_authorized_xclient_hosts").stdout
        assert xclient.strip() == f["LAB_SUBNET"]
        assert sh("docker", "exec", f["LAB_PUBLISHER"], "nginx", "-t").returncode == 0
    ports = slab.inspect(f["LAB_PUBLISHER"])["HostConfig"]["PortBindings"]
    assert ports == {"25/tcp": [{"HostIp": "", "HostPort": slab.env["LAB_PORT"]}]}


def gateway_lines(slab: StackLab, text: str) -> list[str]:
    gw = slab.facts["LAB_GATEWAY4"]
    return [ln for ln in text.splitlines() if f"client=unknown[{gw}]" in ln]


def test_before_the_relay_is_open_over_ipv6(slab: StackLab) -> None:
    r = slab.attack("open")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "relay OPEN: RCPT TO:<victim@qq.com> -> 250 2.1.5 Ok" in r.stdout
    post = slab.facts["LAB_POSTFIX"]

    def seen() -> str | None:
        logs = sh("docker", "logs", post, check=False)
        return logs.stdout if gateway_lines(slab, logs.stdout) else None

    wait_for(seen, timeout=20, what=f"client=unknown[{slab.facts['LAB_GATEWAY4']}] in {post}'s log")


def test_audit_names_the_stack_and_gives_its_fix(slab: StackLab, tmp_path: Path) -> None:
    doc = audit(slab, tmp_path)
    f = slab.facts
    (stack,) = doc["stacks"]
    assert (stack["stack"], stack["project"], stack["postfix"]) == (
        STACK_IDS[slab.stack],
        slab.prefix,
        f["LAB_POSTFIX"],
    )
    assert stack["inbound"] == sorted(slab.inbound)
    assert (stack["network"]["name"], stack["gateway"]) == (f["LAB_NETWORK"], f["LAB_GATEWAY4"])
    found = {x["id"]: x for x in doc["findings"]}
    published = found["mail-port-all-addresses"]
    assert published["stack"] == STACK_IDS[slab.stack]
    if slab.stack == "dms":
        assert found["dms-permit-docker"]["fix"] == "mailserver.env: `PERMIT_DOCKER=none` (was `PERMIT_DOCKER=network`)"
        assert found["postfix-trusts-gateway"]["fix_setting"] == "PERMIT_DOCKER=none"
    elif slab.stack == "mailcow":
        trust = found["postfix-trusts-gateway"]
        assert trust["fix_setting"] == f"mynetworks = !{f['LAB_GATEWAY4']} 127.0.0.0/8 {f['LAB_SUBNET']}"
        assert trust["fix_file"] == stackfix.MAIN_CF["mailcow"]
        assert trust["fix_file"].startswith("data/conf/postfix/extra.cf")
    else:
        subnet = found["mailu-subnet-gateway"]
        assert subnet["title"] == f"Mailu {f['LAB_POSTFIX']}: SUBNET contains the Docker gateway {f['LAB_GATEWAY4']}"
        assert published["title"] == f"{f['LAB_PUBLISHER']} publishes mail ports on every address"


def audit(slab: StackLab, tmp_path: Path, *extra: str) -> dict[str, Any]:
    daemon = tmp_path / "daemon.json"
    daemon.write_text("{}\n")
    names = [a for c in slab.inbound for a in ("--container", c)]
    r = run_cli("audit", "--json", "--no-container-logs", "--daemon-json", str(daemon), *names, *extra)
    assert r.stdout.strip(), r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def evidence_log(slab: StackLab, evidence: Path) -> str:
    """The mail log where the stack keeps it: dms's /var/log/mail/ files, else the Postfix container log."""
    post = slab.facts["LAB_POSTFIX"]
    if slab.stack != "dms":
        return (evidence / "logs" / f"{post}.log").read_text()
    with tarfile.open(evidence / "files" / post / "var" / "log" / "mail.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("mail.log"))
        fh = tar.extractfile(member)
        assert fh is not None
        return io.TextIOWrapper(fh, encoding="utf-8").read()


def test_contain_evidence_and_restore(slab: StackLab, tmp_path: Path) -> None:
    f = slab.facts
    post, gw = f["LAB_POSTFIX"], f["LAB_GATEWAY4"]
    assert slab.attack("open").returncode == 0  # a fresh relayed message to hold
    before = {c: slab.inspect(c)["State"] for c in slab.inbound}
    net_before = slab.lab_addresses()
    state_dir = tmp_path / "state"

    r = slab.lockdown(state_dir, "run", "relay-incident", "--var", f"project={slab.prefix}", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "contained", doc["steps"]
    steps = {s["id"]: s for s in doc["steps"]}
    assert steps["hold-queue"]["notes"][0].startswith(f"{post}: queue ")
    paused = [n for n in steps["pause"]["notes"] if "-> paused" in n]
    assert paused == [f"{c}: running -> paused (restart policy no)" for c in sorted(slab.inbound)]
    assert {c: slab.inspect(c)["State"]["Status"] for c in slab.inbound} == dict.fromkeys(slab.inbound, "paused")
    closed = slab.attack("closed")
    assert closed.returncode == 0, closed.stdout + closed.stderr

    evidence = incident_dir(state_dir, doc["incident_id"]) / "evidence"
    recorded = json.loads((evidence / "docker" / "stack.json").read_text())
    assert (recorded["stack"], recorded["gateway"], recorded["network"]["name"]) == (
        STACK_IDS[slab.stack], gw, f["LAB_NETWORK"],
    )  # fmt: skip
    log = evidence_log(slab, evidence)
    assert len(gateway_lines(slab, log)) >= 2, log[-2000:]
    if slab.stack == "mailcow":
        assert f"CONNECT from [{gw}]:" in log and f"ALLOWLISTED [{gw}]:" in log, log[-2000:]
    if slab.stack == "mailu":
        front = (evidence / "logs" / f"{f['LAB_PUBLISHER']}.log").read_text()
        assert f"client {gw}:" in front, front[-2000:]

    r = slab.lockdown(state_dir, "restore", doc["incident_id"], "--reopen-anyway")  # the lab stays open on purpose
    assert r.returncode == 0, r.stderr
    after = {c: slab.inspect(c)["State"] for c in slab.inbound}
    assert after == before
    assert slab.lab_addresses() == net_before
    assert slab.attack("open").returncode == 0  # the lab is still the vulnerable host


@pytest.mark.parametrize("slab", ["dms", "mailcow"], indirect=True)  # issue 18: the fix, on two stacks
def test_applying_the_audit_fix_makes_the_probe_clean(slab: StackLab, tmp_path: Path) -> None:
    f = slab.facts
    post, host6 = f["LAB_POSTFIX"], f["LAB_HOST6"]
    doc = audit(slab, tmp_path, "--probe", "--address", host6)
    probes = [x for x in doc["findings"] if x["id"].startswith("probe-")]
    assert [x["id"] for x in probes] == ["probe-open-relay"], probes
    setting = next(x for x in doc["findings"] if x["id"] == "postfix-trusts-gateway")["fix_setting"]
    if slab.stack == "dms":
        # PERMIT_DOCKER=none: docker-mailserver's start script then leaves mynetworks at localhost.
        assert setting == "PERMIT_DOCKER=none"
        value = "127.0.0.0/8"
    else:
        key, value = (s.strip() for s in setting.split("=", 1))  # mailcow's extra.cf line
        assert key == "mynetworks"
    sh("docker", "exec", post, "postconf", "-e", f"mynetworks={value}")
    sh("docker", "exec", post, "postfix", "reload")
    doc = audit(slab, tmp_path, "--probe", "--address", host6)
    probes = [x for x in doc["findings"] if x["id"].startswith("probe-")]
    assert [x["id"] for x in probes] == ["probe-closed"], probes
    assert "postfix-trusts-gateway" not in {x["id"] for x in doc["findings"]}
    assert slab.attack("closed").returncode == 0


def test_down_removes_exactly_what_up_made(slab: StackLab) -> None:
    f = slab.facts
    r = slab.run("down")
    assert r.returncode == 0, r.stderr
    for name in slab.inbound:
        assert sh("docker", "inspect", name, check=False).returncode == 1, name
    assert sh("docker", "network", "inspect", f["LAB_NETWORK"], check=False).returncode == 1
    assert not any(ln["ifname"].startswith(slab.prefix) for ln in ip_json("link"))
    assert not Path("/run/netns", f["LAB_NETNS"]).exists()
    assert not slab.env_file.exists()
    assert {**host_snapshot(), "networks": docker_networks()} == slab.before
    assert slab.run("status").returncode == 1
    assert slab.run("down").returncode == 0  # idempotent


def test_unknown_stack_is_one_line_exit_2_and_nothing_made(tmp_path: Path) -> None:
    env = {**os.environ, "LAB_STATE": str(tmp_path / "state")}
    r = subprocess.run([LAB, "up", "--stack", "postal"], capture_output=True, text=True, env=env, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (
        2,
        "",
        "lab: --stack: expected one of plain, dms, mailcow, mailu, got 'postal'\n",
    )
    assert not (tmp_path / "state").exists()


def test_mailcow_subnet_taken_is_said_and_another_is_used(tmp_path: Path) -> None:
    """172.22.1.0/24 held by a network the lab did not make: `up` says so, uses another, and `down`
    leaves that network alone."""
    require_lab_facilities()
    squatter = unique()
    made = sh("docker", "network", "create", "--subnet", "172.22.1.0/24", squatter, check=False)
    the_lab = StackLab("mailcow", tmp_path / "state")
    try:
        up = the_lab.run("up", timeout=300)
        assert up.returncode == 0, up.stderr
        assert "lab: note: 172.22.1.0/24 is not free (" in up.stderr
        facts = dict(ln.split("=", 1) for ln in shlex.split(the_lab.env_file.read_text(), comments=True))
        assert facts["LAB_SUBNET"] != "172.22.1.0/24"
        assert the_lab.attack("open").returncode == 0
        assert the_lab.run("down").returncode == 0
        if made.returncode == 0:
            assert sh("docker", "network", "inspect", squatter, check=False).returncode == 0
    finally:
        the_lab.run("down")
        if made.returncode == 0:
            sh("docker", "network", "rm", squatter, check=False)
