"""Stack recognition (lockdown/stacks.py), stack-specific audit fixes, and relay-incident per stack.

Every stack is built by the test on the real engine, in its real shape:
Compose project and service labels, the environment its settings file
gives (PERMIT_DOCKER, SUBNET, MAILCOW_HOSTNAME), and its own network
(mailcow's ``*_mailcow-network``, Mailu's network whose subnet is SUBNET).
Networks are created by the test with ``lkd-`` names and a subnet Docker
chooses; the assertions compare with what Docker says about them. Each run
is scoped to the test's own Compose project (``--var project=...``), so no
container the test did not create is ever recognised or touched.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lockdown import stacks
from lockdown.audit import facts, stackfix
from tests import netlab
from tests.bridge import mynetworks
from tests.conftest import run_cli, unique
from tests.dockerlab import (
    BUSYBOX,
    POSTFIX,
    TEST_LABEL,
    Lab,
    host_port,
    incident_dir,
    lab,
    postqueue,
    send_spam,
    state,
    status,
    wait_queue,
    wait_smtp,
)

SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; echo started; while :; do sleep 1; done"]


@dataclass
class Shape:
    """One stack as the test built it."""

    kind: str
    project: str
    network: str  # the stack's network, as Docker names it
    subnet: str
    gateway: str  # what Docker says (IPAM Gateway, else the subnet's first address)
    postfix: Any
    inbound: list[Any]
    others: list[Any] = field(default_factory=list)


@pytest.fixture
def slab(docker_engine: Any) -> Iterator[Lab]:
    """A Lab that also removes the networks the test created (attribute ``networks``)."""
    with lab(docker_engine) as the_lab:
        the_lab.networks = []  # type: ignore[attr-defined]
        try:
            yield the_lab
        finally:
            the_lab.cleanup()
            for net in the_lab.networks:  # type: ignore[attr-defined]
                net.remove()


def _ipam(net: Any) -> tuple[str, str]:
    net.reload()
    cfg = net.attrs["IPAM"]["Config"][0]
    subnet = str(ipaddress.ip_network(cfg["Subnet"], strict=False))
    gateway = (cfg.get("Gateway") or "").split("/")[0] or str(next(ipaddress.ip_network(subnet).hosts()))
    return subnet, gateway


def _network(the_lab: Lab, suffix: str = "") -> tuple[str, str, str]:
    net = the_lab.client.networks.create(unique() + suffix, driver="bridge", labels={TEST_LABEL: the_lab.owner})
    the_lab.networks.append(net)  # type: ignore[attr-defined]
    subnet, gateway = _ipam(net)
    return net.name, subnet, gateway


def _compose(the_lab: Lab, service: str) -> dict[str, str]:
    return {"com.docker.compose.project": the_lab.owner, "com.docker.compose.service": service}


def _run(the_lab: Lab, image: str, command: list[str] | None, *, labels: dict[str, str], publish: str | None = None,
         env: dict[str, str] | None = None, network: str | None = None) -> Any:
    """A container of the test: ``publish`` 25/tcp on "" (every address) or "127.0.0.1", or not at all."""
    c = the_lab.client.containers.run(
        image, command, name=unique(), detach=True, labels={TEST_LABEL: the_lab.owner, **labels},
        environment=env or {}, network=network,
        ports=None if publish is None else {"25/tcp": (publish, None) if publish else None},
    )  # fmt: skip
    the_lab.containers.append(c)
    c.reload()
    return c


def wait_postfix(container: Any, timeout: float = 60) -> None:
    """Wait until Postfix runs in a container that publishes no port (``postfix status``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.exec_run(["postfix", "status"])[0] == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"Postfix did not start in {container.name} within {timeout} s")


def _postfix(the_lab: Lab, everywhere: bool, env: dict[str, str], labels: dict[str, str], **kw: Any) -> Any:
    c = _run(the_lab, POSTFIX, None, labels=labels, env=env, publish="" if everywhere else "127.0.0.1", **kw)
    wait_smtp(host_port(c))
    return c


def build(the_lab: Lab, kind: str, *, everywhere: bool = False) -> Shape:
    """The stack's shape: ``everywhere`` publishes 25 on every address (the audit's case), else on 127.0.0.1."""
    if kind == stacks.MAILCOW:
        net, subnet, gw = _network(the_lab, "_mailcow-network")
        env = {"MAILCOW_HOSTNAME": "mail.example.org", "POSTFIX_MYNETWORKS": f"127.0.0.0/8 {subnet}"}
        pf = _postfix(the_lab, everywhere, env, _compose(the_lab, "postfix-mailcow"), network=net)
        return Shape(kind, the_lab.owner, net, subnet, gw, pf, [pf])
    if kind == stacks.DMS:
        bridge = the_lab.client.networks.get("bridge")
        subnet, gw = _ipam(bridge)
        env = {"PERMIT_DOCKER": "network", "POSTFIX_MYNETWORKS": mynetworks()}
        pf = _postfix(the_lab, everywhere, env, _compose(the_lab, "mailserver"))
        return Shape(kind, the_lab.owner, "bridge", subnet, gw, pf, [pf])
    net, subnet, gw = _network(the_lab)
    env = {"SUBNET": subnet, "POSTFIX_MYNETWORKS": f"127.0.0.0/8 {subnet}"}
    smtp = _run(the_lab, POSTFIX, None, env=env, labels=_compose(the_lab, "smtp"), network=net)
    front = _run(
        the_lab, BUSYBOX, SLEEPER, labels=_compose(the_lab, "front"), network=net,
        publish="" if everywhere else "127.0.0.1",
    )  # fmt: skip
    return Shape(kind, the_lab.owner, net, subnet, gw, smtp, sorted([front, smtp], key=lambda c: c.name))


def reasons(shape: Shape) -> list[str]:
    """Why the stack is what it is, exactly as lockdown must say it."""
    n = shape.postfix.name
    if shape.kind == stacks.MAILCOW:
        return [
            f"{n}: label com.docker.compose.service=postfix-mailcow",
            f"{n}: env MAILCOW_HOSTNAME=mail.example.org",
            f"{n}: network {shape.network}",
        ]
    if shape.kind == stacks.DMS:
        return [f"{n}: label com.docker.compose.service=mailserver", f"{n}: env PERMIT_DOCKER=network"]
    front = next(c for c in shape.inbound if c is not shape.postfix)
    by_name = sorted(
        [
            (front.name, f"{front.name}: label com.docker.compose.service=front"),
            (n, f"{n}: label com.docker.compose.service=smtp"),
            (n + "~", f"{n}: env SUBNET={shape.subnet}"),
        ]
    )
    return [r for _, r in by_name]


def expected_stack(shape: Shape) -> dict[str, Any]:
    kind = stacks.KINDS[shape.kind]
    n = shape.postfix.name
    return {
        "stack": shape.kind,
        "title": kind.title,
        "project": shape.project,
        "reasons": reasons(shape),
        "postfix": n,
        "inbound": [c.name for c in shape.inbound],
        "logs": {
            "container_log": [c.name for c in shape.inbound] if shape.kind == stacks.MAILU else [n],
            "files": list(kind.log_files),
        },
        "network": {"name": shape.network, "subnets": [shape.subnet], "gateways": [shape.gateway]},
        "gateway": shape.gateway,
        "knob": kind.knob,
    }


def audit(shape: Shape, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    daemon = tmp_path / "daemon.json"
    daemon.write_text("{}\n")
    names = [a for c in [*shape.inbound, shape.postfix] for a in ("--container", c.name)]
    r = run_cli("audit", "--json", "--no-container-logs", "--daemon-json", str(daemon), *names)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


# ------------------------------------------------------------------ recognition and audit


@pytest.mark.parametrize("kind", [stacks.MAILCOW, stacks.DMS, stacks.MAILU])
def test_audit_names_the_stack_with_its_reasons_network_and_gateway(slab: Lab, kind: str, tmp_path: Path) -> None:
    shape = build(slab, kind, everywhere=True)
    code, doc = audit(shape, tmp_path)
    assert doc["stacks"] == [expected_stack(shape)]
    assert code == 1  # each shape trusts its gateway: high findings


def test_mailcow_fixes_name_mailcow_conf_and_extra_cf(slab: Lab, tmp_path: Path) -> None:
    shape = build(slab, stacks.MAILCOW, everywhere=True)
    _, doc = audit(shape, tmp_path)
    found = {f["id"]: f for f in doc["findings"]}
    n, port, gw = shape.postfix.name, host_port(shape.postfix), shape.gateway
    v4 = facts.host_ipv4_address() or facts.DOC_ADDRESS
    published = found["mail-port-all-addresses"]
    assert (published["stack"], published["fix_file"], published["fix_setting"]) == (
        "mailcow", "mailcow.conf (in the mailcow-dockerized directory)", f"SMTP_PORT={v4}:{port}",
    )  # fmt: skip
    assert published["fix"] == (
        f"mailcow.conf: `SMTP_PORT={v4}:{port}` (was `SMTP_PORT={port}`; docker-compose.yml publishes "
        "`${SMTP_PORT:-25}:25`), likewise SMTPS_PORT and SUBMISSION_PORT; then `docker compose up -d`"
    )
    assert published["check"] == (
        f"docker port {n} 25/tcp   # must print only {v4}:{port}; grep -E '^(SMTP|SMTPS|SUBMISSION)_PORT=' mailcow.conf"
    )
    trust = found["postfix-trusts-gateway"]
    assert trust["fix_setting"] == f"mynetworks = !{gw} 127.0.0.0/8 {shape.subnet}"
    assert trust["fix_file"] == stackfix.MAIN_CF["mailcow"]
    assert trust["fix"].startswith(f"data/conf/postfix/extra.cf: `mynetworks = !{gw} 127.0.0.0/8 {shape.subnet}`")
    assert trust["check"] == (
        f"docker exec {n} postconf -h mynetworks   # must not cover {gw}; "
        f"docker exec {n} postconf -h mynetworks | grep -F '!{gw}'"
    )


def test_dms_fixes_name_permit_docker_and_compose_yaml(slab: Lab, tmp_path: Path) -> None:
    shape = build(slab, stacks.DMS, everywhere=True)
    _, doc = audit(shape, tmp_path)
    found = {f["id"]: f for f in doc["findings"]}
    n, port = shape.postfix.name, host_port(shape.postfix)
    v4 = facts.host_ipv4_address() or facts.DOC_ADDRESS
    permit = found["dms-permit-docker"]
    assert permit == {
        "id": "dms-permit-docker",
        "severity": "high",
        "title": f"docker-mailserver {n} trusts Docker networks (PERMIT_DOCKER=network)",
        "evidence": permit["evidence"],
        "fix": "mailserver.env: `PERMIT_DOCKER=none` (was `PERMIT_DOCKER=network`)",
        "stack": "docker-mailserver",
        "fix_file": "mailserver.env",
        "fix_setting": "PERMIT_DOCKER=none",
        "check": f"grep PERMIT_DOCKER mailserver.env; docker exec {n} postconf -h mynetworks   "
        "# must not contain 172.16.0.0/12",
    }
    assert found["mail-port-all-addresses"]["fix"] == (
        f"compose.yaml (docker-mailserver's example; docker-compose.yml in older setups), service mailserver: "
        f'ports: - "{v4}:{port}:25" instead of "{port}:25"; then `docker compose up -d`'
    )


def test_mailu_fixes_name_subnet_and_the_front(slab: Lab, tmp_path: Path) -> None:
    shape = build(slab, stacks.MAILU, everywhere=True)
    _, doc = audit(shape, tmp_path)
    front = next(c for c in shape.inbound if c is not shape.postfix)
    subnet = next(f for f in doc["findings"] if f["id"] == "mailu-subnet-gateway")
    assert subnet["title"] == f"Mailu {shape.postfix.name}: SUBNET contains the Docker gateway {shape.gateway}"
    assert (subnet["stack"], subnet["fix_file"]) == ("mailu", "mailu.env and " + stackfix.COMPOSE_FILE["mailu"])
    assert subnet["check"] == (
        f"docker port {front.name} 25/tcp   # must print only the IPv4 address; "
        f"docker exec {shape.postfix.name} postconf -h mynetworks"
    )
    published = next(f for f in doc["findings"] if f["id"] == "mail-port-all-addresses")
    assert published["title"] == f"{front.name} publishes mail ports on every address"
    assert published["fix_file"] == stackfix.COMPOSE_FILE["mailu"] + ", service front"


def test_userland_proxy_fix_says_what_it_means_for_ipv6_on_this_docker(slab: Lab, tmp_path: Path) -> None:
    version = slab.client.version()["Version"]
    assert stackfix.daemon_version_note(version).startswith(f"on Docker {version} ")
    major = int(version.split(".")[0])
    assert ("before 27.0" in stackfix.daemon_version_note(version)) is (major < 27)
    fix = stackfix.userland_proxy(None, "/etc/docker/daemon.json", version)
    assert fix.setting == '"userland-proxy": false' and fix.file == "/etc/docker/daemon.json"
    assert fix.text.startswith('/etc/docker/daemon.json: `"userland-proxy": false`, then `systemctl restart docker`')


# ------------------------------------------------------------------ relay-incident, no vars


def plan_of(netns: str, state_dir: Path, *args: str) -> dict[str, dict[str, Any]]:
    a0, _ = netlab.veth(netns)
    r = netlab.lockdown(
        netns, state_dir, "run", "relay-incident", "--dry-run", "--json", "--var", f"interfaces={a0}", *args
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["live_check"] == "targets resolved against the live system"
    return {e["id"]: e for e in doc["plan"]}


@pytest.mark.netns
@pytest.mark.parametrize("kind", [stacks.MAILCOW, stacks.DMS, stacks.MAILU])
def test_dry_run_shows_the_stack_its_targets_and_why(
    slab: Lab, kind: str, netns: str, state_dir: Path
) -> None:
    shape = build(slab, kind)
    decoy = slab.run(BUSYBOX, SLEEPER, publish_smtp=True, labels={"com.docker.compose.service": "smtp"})
    plan = plan_of(netns, state_dir, "--var", f"project={shape.project}")
    title = f"{stacks.KINDS[kind].title} (Compose project {shape.project})"
    inbound = [c.name for c in shape.inbound]
    why = "; ".join(reasons(shape))
    for step, role, names in (
        ("hold-queue", "postfix", [shape.postfix.name]),
        ("pause", "inbound", inbound),
        ("container", "inbound", inbound),
        ("mail-logs", "postfix", [shape.postfix.name]),
    ):
        resolved = plan[step]["resolved"]
        assert resolved["containers"] == names, step
        assert resolved["stack"] == f"{title}, {role}: {', '.join(names)}"
        assert resolved["why"] == why
        assert (resolved["network"], resolved["gateway"]) == (shape.network, shape.gateway)
    assert plan["mail-logs"]["resolved"]["paths"] == list(
        dict.fromkeys([*stacks.KINDS[kind].log_files, "/var/log/mail/", "/var/log/mail.log"])
    )
    assert decoy.name not in json.dumps(plan)
    assert status(decoy) == status(shape.postfix) == "running"
    assert not (state_dir / "incidents").exists()


@pytest.mark.netns
def test_two_stacks_without_a_project_is_refused_naming_both(slab: Lab, netns: str, state_dir: Path) -> None:
    a = slab.run(BUSYBOX, SLEEPER, publish_smtp=True)
    b = slab.run(BUSYBOX, SLEEPER, publish_smtp=True)
    first, second = sorted([a, b], key=lambda c: c.name)
    a0, _ = netlab.veth(netns)
    label = f"{TEST_LABEL}={slab.owner}"
    r = netlab.lockdown(
        netns, state_dir, "run", "relay-incident", "--var", f"label={label}", "--var", f"interfaces={a0}"
    )
    assert r.returncode == 2, r.stderr
    plain = "publishes 25/tcp and no sign of mailcow, docker-mailserver or Mailu"
    assert r.stderr.strip().splitlines() == [
        f'lockdown: error: relay-incident.toml step 2 (pause): container = "stack": 2 mail stacks run here '
        f"with label {label}, choose one: plain Postfix (container {first.name}): {first.name}: {plain}; "
        f"plain Postfix (container {second.name}): {second.name}: {plain}",
        "  -> narrow to one Compose project with --var project=NAME, or name the container with "
        "--var container=NAME",
    ]
    assert status(a) == status(b) == "running"
    assert not (state_dir / "incidents").exists()


def contain(netns: str, state_dir: Path, shape: Shape, interface: str) -> dict[str, Any]:
    """``lockdown run relay-incident`` on the stack's Compose project, stripping ``interface``; its JSON."""
    r = netlab.lockdown(
        netns, state_dir, "run", "relay-incident", "--var", f"project={shape.project}",
        "--var", f"interfaces={interface}", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    assert doc["status"] == "contained", doc["steps"]
    return doc


@pytest.mark.netns
def test_mailu_run_pauses_front_and_smtp_records_the_gateway_and_restores_exactly(
    slab: Lab, netns: str, state_dir: Path
) -> None:
    shape = build(slab, stacks.MAILU)
    smtp = shape.postfix
    front = next(c for c in shape.inbound if c is not smtp)
    # Mailu's smtp publishes nothing (front does): the spam is queued from inside, as a relayed message would be.
    wait_postfix(smtp)
    code, out = smtp.exec_run(["sh", "-c", "printf 'Subject: spam\n\nBUY NOW\n' | sendmail victim@qq.com"])
    assert code == 0, out
    queue = wait_queue(smtp, 1)
    a0, a1 = netlab.veth(netns)
    netlab.ipn(netns, "addr", "add", "2001:db8:18::1/64", "dev", a0, "nodad")
    net_before = netlab.state(netns, [a0, a1])
    before = {c.name: state(c) for c in (smtp, front)}

    doc = contain(netns, state_dir, shape, a0)
    assert status(smtp) == status(front) == "paused"
    assert netlab.global_addresses(netns, a0) == []
    steps = {s["id"]: s for s in doc["steps"]}
    paused = [n for n in steps["pause"]["notes"] if "-> paused" in n]
    assert paused == [f"{c.name}: running -> paused (restart policy no)" for c in shape.inbound]
    assert steps["hold-queue"]["notes"][0] == (
        f"{smtp.name}: queue 1 deferred; saved 1 message(s) with postcat to evidence/queue/{smtp.name}/"
    )
    evidence = incident_dir(state_dir, doc["incident_id"]) / "evidence"
    recorded = json.loads((evidence / "docker" / "stack.json").read_text())
    assert recorded == expected_stack(shape)
    assert (evidence / "logs" / f"{front.name}.log").read_text().endswith("started\n")
    assert (evidence / "logs" / f"{smtp.name}.log").stat().st_size > 0

    r = netlab.lockdown(netns, state_dir, "restore", doc["incident_id"], "--reopen-anyway")  # still open on purpose
    assert r.returncode == 0, r.stderr
    assert {c.name: state(c) for c in (smtp, front)} == before
    netlab.assert_same_state(net_before, netlab.state(netns, [a0, a1]))
    assert postqueue(smtp) == dict.fromkeys(queue, "hold")  # held until `restore --release-queue`


@pytest.mark.netns
def test_mailcow_run_holds_in_postfix_mailcow_and_records_the_mailcow_network_gateway(
    slab: Lab, netns: str, state_dir: Path
) -> None:
    shape = build(slab, stacks.MAILCOW)
    pf = shape.postfix
    send_spam(host_port(pf), 2)  # through docker-proxy: Postfix sees the gateway, trusts IPV4_NETWORK, relays
    queue = wait_queue(pf, 2)
    a0, _ = netlab.veth(netns)
    before = state(pf)

    doc = contain(netns, state_dir, shape, a0)
    assert status(pf) == "paused"
    steps = {s["id"]: s for s in doc["steps"]}
    assert steps["hold-queue"]["notes"][0] == (
        f"{pf.name}: queue 2 deferred; saved 2 message(s) with postcat to evidence/queue/{pf.name}/"
    )
    evidence = incident_dir(state_dir, doc["incident_id"]) / "evidence"
    assert json.loads((evidence / "docker" / "stack.json").read_text()) == expected_stack(shape)
    log = (evidence / "logs" / f"{pf.name}.log").read_text()
    # The relay's trace: smtpd logs the gateway as the client of each relayed message.
    assert sum("client=" in ln and f"[{shape.gateway}]" in ln for ln in log.splitlines()) == 2, log[-2000:]

    r = netlab.lockdown(netns, state_dir, "restore", doc["incident_id"], "--reopen-anyway")  # still open on purpose
    assert r.returncode == 0, r.stderr
    assert state(pf) == before
    assert postqueue(pf) == dict.fromkeys(queue, "hold")


# ------------------------------------------------------------------ bad input, human output


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ("project=a b", "project: expected a Compose project name, got 'a b'"),
        ("project=x=y", "project: expected a Compose project name, got 'x=y'"),
        ("label==v", "label: expected KEY or KEY=VALUE without spaces, got '=v'"),
    ],
)
def test_bad_scoping_var_is_one_line_exit_2_and_nothing_runs(var: str, message: str, tmp_path: Path) -> None:
    r = run_cli("run", "relay-incident", "--dry-run", "--var", var, state_dir=tmp_path / "state")
    assert r.returncode == 2, r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("lockdown: error: ") and first.endswith(f"step 2 (pause): {message}"), first
    assert not (tmp_path / "state").exists()


def test_bad_role_names_the_choices(tmp_path: Path) -> None:
    pb = tmp_path / "bad-role.toml"
    pb.write_text('name = "bad-role"\n\n[[steps]]\nid = "p"\naction = "docker.pause"\ncontainer = "stack"\n'
                  'role = "frontdoor"\n')
    r = run_cli("run", str(pb), "--dry-run", state_dir=tmp_path / "state")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[0] == (
        f"lockdown: error: {pb}: step 1 (p): role: expected one of postfix, inbound, logs, got 'frontdoor'"
    )


def test_human_audit_names_the_stack_and_the_check(slab: Lab, tmp_path: Path) -> None:
    shape = build(slab, stacks.DMS, everywhere=True)
    daemon = tmp_path / "daemon.json"
    daemon.write_text("{}\n")
    r = run_cli("audit", "--no-container-logs", "--daemon-json", str(daemon), "--container", shape.postfix.name)
    assert r.returncode == 1, r.stderr
    n = shape.postfix.name
    lines = r.stdout.splitlines()
    assert lines[:3] == [
        f"stack: docker-mailserver (Compose project {shape.project}): Postfix in {n}, gateway {shape.gateway} (bridge)",
        f"  recognised by: {'; '.join(reasons(shape))}",
        f"  the knob: {stacks.KINDS[stacks.DMS].knob}",
    ]
    assert (
        f"  check:    grep PERMIT_DOCKER mailserver.env; docker exec {n} postconf -h mynetworks   "
        "# must not contain 172.16.0.0/12"
    ) in lines
