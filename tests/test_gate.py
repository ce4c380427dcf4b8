"""Restore's gate (issue 17.3) against a real Postfix that relays for the Docker networks.

The container publishes 25 on every address, so docker-proxy carries the
bot's IPv6 (from a test namespace) into it as the bridge gateway, which
Postfix trusts (``mynetworks`` with 172.16.0.0/12, as in the postmortem, or with
the bridge's own subnet where this engine put it elsewhere: ``dockerlab.mynetworks``).
Containment pauses it and drops inbound IPv6 to the published port in
lockdown's own nftables table. The gate must keep that table while the relay
is open, unpause first (the probe needs Postfix running, and that is safe
while the table closes the path), reopen once Postfix is fixed, and never
send DATA. Crashes are injected from the test side (tests/crashlab.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import crashlab
from tests.bridge import mynetworks
from tests.conftest import REPO, run_cli
from tests.dockerlab import BUSYBOX, POSTFIX, Lab, journal, lab, playbook, v6_host_port, wait_smtp
from tests.test_nft_block import (  # noqa: F401 - fixtures
    Bot,
    bot,
    lockdown_tables,
    need_nft,
    no_stray_table,
    published_everywhere,
    published_port,
    smtp_relay,
)

pytestmark = pytest.mark.docker

RCPT = "lockdown-gate@example.com"


@pytest.fixture
def dlab(docker_engine: Any) -> Iterator[Lab]:
    with lab(docker_engine) as the_lab:
        yield the_lab


def open_relay(dlab: Lab) -> tuple[Any, int]:
    c = published_everywhere(dlab, POSTFIX, environment={"POSTFIX_MYNETWORKS": mynetworks()})
    wait_smtp(published_port(c))
    port = v6_host_port(c)  # the bots' port: docker-proxy's on ::
    # runc can fail to freeze a container whose Postfix is still forking its daemons
    # ("unable to freeze"): let it settle before the first pause.
    time.sleep(1)
    return c, port


def contain(c: Any, tmp_path: Path, state_dir: Path, tables: list[str]) -> str:
    """Pause the container and drop inbound IPv6 to its published port; returns the incident id."""
    pb = playbook(
        tmp_path,
        {"id": "pause", "action": "docker.pause", "container": c.name},
        {"id": "block", "action": "nft.block", "container": c.name, "family": "ip6", "direction": "inbound"},
    )
    r = run_cli("run", str(pb), "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    incident: str = json.loads(r.stdout)["incident_id"]
    applied = next(e for e in journal(state_dir, incident) if e["phase"] == "applied" and e["step"] == "block")
    tables.append(applied["result"]["table"])
    return incident


def container_status(c: Any) -> str:
    c.reload()
    return str(c.attrs["State"]["Status"])


def bridge_address(c: Any) -> str:
    c.reload()
    return str(c.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"])


def gateway(c: Any) -> str:
    c.reload()
    return str(c.attrs["NetworkSettings"]["Networks"]["bridge"]["Gateway"])


def status_json(incident: str, state_dir: Path) -> dict[str, Any]:
    r = run_cli("status", incident, "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def test_gate_keeps_the_path_closed_while_the_relay_is_open_and_reopens_once_fixed(
    dlab: Lab, bot: Bot, tmp_path: Path, state_dir: Path, no_stray_table: list[str]  # noqa: F811 - fixtures
) -> None:
    need_nft()
    c, port = open_relay(dlab)
    assert smtp_relay(bot.ns, bot.host6, port) == "250"  # the open relay, through docker-proxy
    incident = contain(c, tmp_path, state_dir, no_stray_table)
    table = no_stray_table[-1]
    assert container_status(c) == "paused" and table in lockdown_tables()

    # The plan says which steps the gate decides, and changes nothing.
    r = run_cli("restore", incident, "--dry-run", "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    dry = json.loads(r.stdout)
    assert [(s["id"], s["state"]) for s in dry["steps"]] == [("pause", "would-undo"), ("block", "would-gate")]
    assert [(h["id"], h["decision"]) for h in dry["held"]] == [("block", "reopen-anyway")]
    assert container_status(c) == "paused"

    # Misconfigured: the relay accepts the outside recipient, so the block stays; the pause is undone first.
    r = run_cli("restore", incident, state_dir=state_dir, timeout=300)
    address, gw = bridge_address(c), gateway(c)
    assert r.returncode == 7, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == (
        f"lockdown: error: restore of {incident} kept block in place: the relay is open: {c.name} at "
        f"{address}:25 accepted RCPT TO:<{RCPT}> from the Docker gateway"
    )
    assert lines[1].startswith("  -> fix: ipv6-relay-path: ")  # the audit's findings, most severe first
    fix = f"postfix-trusts-gateway: main.cf: `mynetworks = 127.0.0.0/8` (was `mynetworks = {mynetworks()}`)"
    assert fix in lines[1], lines[1]
    assert lines[1].endswith(
        f"then `lockdown restore {incident}` probes again (`--reopen-anyway` reopens the path anyway)"
    )
    assert f"  relay probe: open: the relay is open: {c.name} at {address}:25" in r.stdout
    assert f"    {c.name}: RCPT TO:<{RCPT}> -> 250 2.1.5 Ok" in r.stdout
    assert container_status(c) == "running"
    assert table in lockdown_tables()
    assert smtp_relay(bot.ns, bot.host6, port).startswith("failed:")  # the path stays closed

    # Shown like a held step: status, and the probe in the journal and the evidence.
    view = status_json(incident, state_dir)
    assert view["containment_active"] is True
    assert view["held"] == [{"id": "block", "action": "nft.block", "decision": "reopen-anyway"}]
    steps = {s["id"]: s for s in view["steps"]}
    assert steps["block"]["gated"] == "open" and steps["pause"]["state"] == "undone"
    (gate,) = [e for e in journal(state_dir, incident) if e["phase"] == "gate"]
    assert gate["verdict"] == "open" and gate["kept"] == ["block"] and gate["gated"] == ["block"]
    assert gate["targets"][0]["transcript"][2:] == [
        "MAIL FROM:<lockdown-gate@example.org> -> 250 2.1.0 Ok",
        f"RCPT TO:<{RCPT}> -> 250 2.1.5 Ok",
        "RSET -> 250",
        "QUIT -> 221",
    ]
    manifest = json.loads((state_dir / "incidents" / incident / "manifest.json").read_text())
    names = [f["path"] for f in manifest["files"]]
    assert f"evidence/gate/restore-gate-{gate['seq']}.json" in names

    # Never DATA: Postfix's own summary of the probe's session.
    logs = c.logs().decode()
    sessions = [line for line in logs.splitlines() if f"disconnect from unknown[{gw}]" in line]
    probe_line = sessions[-1]
    assert probe_line.endswith("ehlo=1 mail=1 rcpt=1 rset=1 quit=1 commands=5"), probe_line
    assert "data=" not in probe_line

    # Fixed: the gateway is no longer trusted, the probe is refused, the path reopens.
    assert c.exec_run(["postconf", "-e", "mynetworks=127.0.0.0/8"]).exit_code == 0
    assert c.exec_run(["postfix", "reload"]).exit_code == 0
    r = run_cli("restore", incident, state_dir=state_dir, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "  relay probe: closed: the relay refused RCPT TO:<lockdown-gate@example.com>" in r.stdout
    assert table not in lockdown_tables()
    assert smtp_relay(bot.ns, bot.host6, port).startswith("554")  # reachable again, and refusing
    assert status_json(incident, state_dir)["containment_active"] is False


def test_reopen_anyway_undoes_everything_without_a_probe(
    dlab: Lab, bot: Bot, tmp_path: Path, state_dir: Path, no_stray_table: list[str]  # noqa: F811 - fixtures
) -> None:
    need_nft()
    c, port = open_relay(dlab)
    incident = contain(c, tmp_path, state_dir, no_stray_table)
    r = run_cli("restore", incident, "--reopen-anyway", "--json", state_dir=state_dir, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["gate"] is None and doc["held"] == []
    assert [(s["id"], s["state"]) for s in doc["steps"]] == [("pause", "undone"), ("block", "undone")]
    assert no_stray_table[-1] not in lockdown_tables()
    assert container_status(c) == "running"
    assert smtp_relay(bot.ns, bot.host6, port) == "250"  # the operator's choice: the hole is back
    assert not [e for e in journal(state_dir, incident) if e["phase"] == "gate"]


def test_a_probe_that_cannot_decide_keeps_the_path_closed(
    dlab: Lab, tmp_path: Path, state_dir: Path, no_stray_table: list[str], need_root: None  # noqa: F811
) -> None:
    """Something answers 220 and then hangs up on EHLO: neither open nor closed, so kept."""
    need_nft()
    c = published_everywhere(dlab, BUSYBOX, ["nc", "-ll", "-p", "25", "-e", "echo", "220 not postfix"])
    incident = contain(c, tmp_path, state_dir, no_stray_table)
    r = run_cli("restore", incident, state_dir=state_dir, timeout=300)
    assert r.returncode == 7, r.stdout + r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith(
        f"lockdown: error: restore of {incident} kept block in place: the probe could not decide: {c.name}: "
    ), first
    assert no_stray_table[-1] in lockdown_tables()
    (gate,) = [e for e in journal(state_dir, incident) if e["phase"] == "gate"]
    assert gate["verdict"] == "undecided" and gate["kept"] == ["block"]


def killed_restore(state_dir: Path, at: int, incident: str) -> int:
    """``lockdown restore INCIDENT`` in a fresh interpreter, SIGKILLed before durable boundary ``at``."""
    env = crashlab._env(state_dir, LKD_CRASH_AT=str(at), LKD_CRASH_COUNT=str(state_dir / "count"))
    cmd = [sys.executable, "-c", crashlab.WRAPPER, "restore", incident]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300).returncode


def test_restore_killed_at_every_boundary_with_a_gate_is_exact_on_the_next_restore(
    dlab: Lab, bot: Bot, tmp_path: Path, state_dir: Path, no_stray_table: list[str]  # noqa: F811 - fixtures
) -> None:
    need_nft()
    c, port = open_relay(dlab)
    c.reload()
    before = c.attrs["State"]
    incident = contain(c, tmp_path, state_dir, no_stray_table)
    assert killed_restore(state_dir, 0, incident) == 7  # counts the boundaries of a gated restore
    total = int((state_dir / "count").read_text())
    assert total >= 8
    run_cli("restore", incident, "--reopen-anyway", state_dir=state_dir, timeout=300)
    for at in range(1, total + 1):
        incident = contain(c, tmp_path, state_dir, no_stray_table)
        table = no_stray_table[-1]
        code = killed_restore(state_dir, at, incident)
        assert code == -9, f"boundary {at}: the restore was not killed (exit {code})"
        r = run_cli("restore", incident, state_dir=state_dir, timeout=300)
        assert r.returncode == 7, f"boundary {at}: {r.stdout}{r.stderr}"
        assert container_status(c) == "running" and table in lockdown_tables(), f"boundary {at}"
        assert smtp_relay(bot.ns, bot.host6, port).startswith("failed:"), f"boundary {at}"
        view = status_json(incident, state_dir)
        assert view["journal"]["intact"] is True, f"boundary {at}: {view['journal']}"
        assert view["held"] == [{"id": "block", "action": "nft.block", "decision": "reopen-anyway"}]
        r = run_cli("restore", incident, "--reopen-anyway", state_dir=state_dir, timeout=300)
        assert r.returncode == 0, f"boundary {at}: {r.stdout}{r.stderr}"
        assert table not in lockdown_tables(), f"boundary {at}"
        c.reload()
        assert {k: c.attrs["State"][k] for k in ("Status", "Pid", "StartedAt")} == {
            k: before[k] for k in ("Status", "Pid", "StartedAt")
        }, f"boundary {at}"
