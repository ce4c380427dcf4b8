"""``lockdown guard`` on a real kernel (netns + veth) and a real Docker Engine.

The guard runs as the real CLI in a subprocess, inside the test's namespace
for netlink; its ``--json`` lines say when it listens and what it re-asserted.
State is read with ``ip -j``, /proc and ``docker inspect``, never through
lockdown's own code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import dockerlab, netlab
from tests.conftest import read_line, run_cli, unavailable, wait_for
from tests.dockerlab import Lab, status
from tests.netlab import get_sysctl, ipn, lockdown, nsexec, set_sysctl, state, veth


class GuardProc:
    """``lockdown guard ... --json`` in a subprocess; ``until`` reads its lines."""

    def __init__(
        self, state_dir: Path, *args: str, netns: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        cmd = [sys.executable, "-m", "lockdown", "guard", *args, "--json"]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        env = {
            **os.environ, "LOCKDOWN_STATE_DIR": str(state_dir), "SSH_CONNECTION": "", "SSH_CLIENT": "", **(env or {})
        }
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.events: list[dict[str, Any]] = []

    def until(self, event: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        """Read lines until one has ``event`` and every ``match`` item; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = read_line(self.proc, timeout=max(0.1, deadline - time.monotonic()))
            if not line:
                raise AssertionError(f"guard exited ({self.proc.wait()}): {self.proc.stderr.read()}")  # type: ignore[union-attr]
            doc = json.loads(line)
            self.events.append(doc)
            if doc["event"] == event and all(doc.get(k) == v for k, v in match.items()):
                return doc
        raise AssertionError(f"no {event} {match} within {timeout}s; saw {self.events}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def guards() -> Iterator[list[GuardProc]]:
    started: list[GuardProc] = []
    yield started
    for g in started:
        g.kill()


def test_run_says_how_to_keep_the_incident_guarded(netns: str, tmp_path: Path, state_dir: Path) -> None:
    a0, _a1 = netlab.veth_with_v6(netns)
    run = lockdown(netns, state_dir, "run", str(netlab.playbook(tmp_path, netlab.STRIP.format(dev=a0))))
    assert run.returncode == 0, run.stderr
    incident = netlab.incident_dir(state_dir).name
    assert f"\n  keep it contained (unless `lockdown serve` runs): lockdown guard {incident}\n" in run.stdout


def _run(netns: str, state_dir: Path, tmp_path: Path, dev: str) -> str:
    doc = netlab.run_strip(netns, state_dir, tmp_path, dev)
    assert doc["guard_command"] == f"lockdown guard {doc['incident_id']}"
    return str(doc["incident_id"])


# ------------------------------------------------------------------ IPv6, by hand


def test_address_added_by_hand_is_removed_only_on_the_stripped_interface(
    netns: str, tmp_path: Path, state_dir: Path, guards: list[GuardProc]
) -> None:
    a0, a1 = netlab.veth_with_v6(netns)
    ipn(netns, "addr", "add", "2001:db8:2::1/64", "dev", a1, "nodad")
    before = state(netns, [a0, a1])
    incident = _run(netns, state_dir, tmp_path, a0)
    guard = GuardProc(state_dir, incident, netns=netns)
    guards.append(guard)
    assert guard.until("guarding")["what"] == f"ipv6.strip on {a0}"
    guard.until("compared", source="net")

    ipn(netns, "addr", "add", "2001:db8:5::1/64", "dev", a1, "nodad")  # not targeted: left alone
    ipn(netns, "addr", "add", "2001:db8:5::1/64", "dev", a0, "nodad")
    drift = guard.until("drift")
    assert (drift["kind"], drift["step"], drift["target"]) == ("address", "strip", a0)
    assert drift["changed"] == f"2001:db8:5::1/64 (nodad) appeared on {a0}"
    assert drift["did"] == f"removed 2001:db8:5::1/64 from {a0}"
    assert drift["source"]["netlink"]["kind"] == "addr-new"
    assert drift["source"]["netlink"]["address"] == "2001:db8:5::1"
    assert 0 <= drift["latency_ms"] < 5000
    assert netlab.global_addresses(netns, a0) == []
    assert sorted(netlab.global_addresses(netns, a1)) == ["2001:db8:2::1/64", "2001:db8:5::1/64"]

    (entry,) = netlab.drifts(state_dir)
    assert entry["changed"] == drift["changed"] and entry["did"] == drift["did"]
    shown = run_cli("status", incident, state_dir=state_dir)
    assert shown.returncode == 0, shown.stderr
    assert "  drift: 1 re-assertion(s) by `lockdown guard`, last 1:" in shown.stdout
    assert f"[strip] 2001:db8:5::1/64 (nodad) appeared on {a0}: removed 2001:db8:5::1/64 from {a0}" in shown.stdout
    as_json = json.loads(run_cli("status", incident, "--json", state_dir=state_dir).stdout)
    assert as_json["drift"]["count"] == 1

    # Restore while the guard runs: the exact state before the run, and the guard lets go.
    ipn(netns, "addr", "del", "2001:db8:5::1/64", "dev", a1)
    restore = lockdown(netns, state_dir, "restore", incident)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    released = guard.until("released")
    assert released == {"event": "released", "incident_id": incident, "reason": "a restore has begun"}
    assert guard.until("done")["reason"] == "no incident left to guard"
    assert guard.proc.wait(timeout=30) == 0
    netlab.assert_same_state(before, state(netns, [a0, a1]))
    assert len(netlab.drifts(state_dir)) == 1, "the guard re-asserted against the restore"

    again = run_cli("guard", incident, state_dir=state_dir)
    assert again.returncode == 2
    assert again.stderr == (
        f"lockdown: error: incident {incident} has no active containment to guard "
        f"(not run, restored, or a restore has begun)\n  -> see `lockdown status {incident}`\n"
    )


def test_sysctl_set_back_is_set_again_on_the_timer(
    netns: str, tmp_path: Path, state_dir: Path, guards: list[GuardProc]
) -> None:
    """Writing accept_ra sends no netlink event: the slow timer finds it."""
    a0, _a1 = netlab.veth_with_v6(netns)
    # The link-locals' DAD ends with an address notification: one arriving after the sysctl
    # was set back made a netlink compare find it before the timer did.
    netlab.wait_link_local(netns, [a0, _a1])
    incident = _run(netns, state_dir, tmp_path, a0)
    guard = GuardProc(state_dir, "--all", "--timer", "0.3", netns=netns)
    assert guard.until("guarding") == {"event": "guarding", "incident_id": incident, "what": f"ipv6.strip on {a0}"}
    guards.append(guard)
    guard.until("compared", source="net")
    set_sysctl(netns, a0, "accept_ra", "2")
    drift = guard.until("drift")
    assert drift["changed"] == f"{a0}: accept_ra was set back to 2"
    assert drift["did"] == "set accept_ra to 0 again"
    assert drift["source"] == {"timer": "every 0.3 s"}
    assert get_sysctl(netns, a0, "accept_ra") == "0"
    assert guard.stop(signal.SIGINT) == 130
    assert guard.until("stopped") == {"event": "stopped", "reason": "SIGINT"}


def test_guard_killed_and_started_again_resumes(
    netns: str, tmp_path: Path, state_dir: Path, guards: list[GuardProc]
) -> None:
    a0, a1 = netlab.veth_with_v6(netns)
    before = state(netns, [a0, a1])
    incident = _run(netns, state_dir, tmp_path, a0)
    first = GuardProc(state_dir, incident, netns=netns)
    guards.append(first)
    first.until("compared", source="net")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    # While no guard runs: an address comes back and accept_ra is reset.
    ipn(netns, "addr", "add", "2001:db8:9::1/64", "dev", a0, "nodad")
    set_sysctl(netns, a0, "autoconf", "1")
    second = GuardProc(state_dir, incident, netns=netns)
    guards.append(second)
    got = {second.until("drift")["kind"], second.until("drift")["kind"]}
    assert got == {"address", "sysctl"}
    assert all(d["source"] == {"compare": "start"} for d in second.events if d["event"] == "drift")
    assert netlab.global_addresses(netns, a0) == []
    assert get_sysctl(netns, a0, "autoconf") == "0"
    # and it follows events again
    ipn(netns, "addr", "add", "2001:db8:9::2/64", "dev", a0, "nodad")
    assert second.until("drift")["did"] == f"removed 2001:db8:9::2/64 from {a0}"
    assert second.stop() == 0
    assert lockdown(netns, state_dir, "restore", incident).returncode == 0
    netlab.assert_same_state(before, state(netns, [a0, a1]))


RADVD_CONF = """
interface {dev} {{
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    prefix 2001:db8:ab::/64 {{
        AdvOnLink on;
        AdvAutonomous on;
    }};
}};
"""


def test_real_slaac_address_after_accept_ra_is_set_back_is_removed(
    netns: str, tmp_path: Path, state_dir: Path, guards: list[GuardProc]
) -> None:
    """radvd on one end of a veth pair advertises 2001:db8:ab::/64; the other end does SLAAC."""
    radvd = shutil.which("radvd") or ("/usr/sbin/radvd" if Path("/usr/sbin/radvd").exists() else None)
    if radvd is None:
        unavailable("radvd is not installed (scripts/install-deps)")
    host, router = veth(netns)
    nsexec(netns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    set_sysctl(netns, host, "accept_ra", "1")
    set_sysctl(netns, host, "autoconf", "1")
    netlab.wait_link_local(netns, [host, router])
    conf = tmp_path / "radvd.conf"
    conf.write_text(RADVD_CONF.format(dev=router))
    pidfile = tmp_path / "radvd.pid"
    nsexec(netns, "sysctl", "-qw", f"net.ipv6.conf.{router}.forwarding=1")
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", netns, str(radvd), "-n", "-C", str(conf), "-p", str(pidfile), "-m", "stderr"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        slaac = wait_for(lambda: netlab.global_addresses(netns, host), 30, "a SLAAC address from radvd")
        assert slaac[0].startswith("2001:db8:ab:") and slaac[0].endswith("/64")
        incident = _run(netns, state_dir, tmp_path, host)
        assert netlab.global_addresses(netns, host) == []
        guard = GuardProc(state_dir, incident, netns=netns)
        guards.append(guard)
        guard.until("compared", source="net")
        # as networkd does when it reconfigures a link
        set_sysctl(netns, host, "autoconf", "1")
        set_sysctl(netns, host, "accept_ra", "1")
        drift = guard.until("drift", kind="address", timeout=30)
        # "2001:db8:ab:...:.../64 (flags; valid 86399s, preferred 14399s) appeared on ...": lifetimes tick
        assert drift["changed"].startswith(f"{slaac[0]} (")
        assert drift["changed"].endswith(f"s) appeared on {host} (added by kernel SLAAC (router advertisement))")
        assert drift["did"] == f"removed {slaac[0]} from {host}"
        wanted = {f"{host}: accept_ra was set back to 1", f"{host}: autoconf was set back to 1"}

        def fixed() -> set[str]:
            return {d["changed"] for d in guard.events if d["event"] == "drift" and d["kind"] == "sysctl"}

        while fixed() != wanted:  # journaled before or after the address, as the events come
            guard.until("drift", kind="sysctl", timeout=10)
        assert get_sysctl(netns, host, "accept_ra") == "0"
        assert get_sysctl(netns, host, "autoconf") == "0"
        time.sleep(5)  # two more RAs: nothing comes back now
        assert netlab.global_addresses(netns, host) == []
        assert guard.stop() == 0
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


# ------------------------------------------------------------------ Docker


@pytest.fixture
def dlab(docker_engine: Any) -> Iterator[Lab]:
    with dockerlab.lab(docker_engine) as the_lab:
        yield the_lab


def _compose_labels(lab: Lab) -> dict[str, str]:
    return {"com.docker.compose.project": f"proj-{lab.owner}", "com.docker.compose.service": "smtp"}


def _pause_run(tmp_path: Path, state_dir: Path, name: str) -> str:
    pb = dockerlab.playbook(tmp_path, {"id": "pause", "action": "docker.pause", "container": name})
    run = run_cli("run", str(pb), "--json", state_dir=state_dir)
    assert run.returncode == 0, run.stdout + run.stderr
    return str(json.loads(run.stdout)["incident_id"])


@pytest.mark.parametrize("undo_it", ["unpause", "restart"])
def test_container_unpaused_or_restarted_is_paused_again(
    dlab: Lab, tmp_path: Path, state_dir: Path, guards: list[GuardProc], undo_it: str
) -> None:
    c = dlab.run(dockerlab.BUSYBOX, ["sleep", "600"], labels=_compose_labels(dlab))
    incident = _pause_run(tmp_path, state_dir, c.name)
    assert status(c) == "paused"
    guard = GuardProc(state_dir, incident)
    guards.append(guard)
    assert guard.until("guarding")["what"] == f"docker.pause of {c.name}"
    guard.until("compared", source="docker")
    subprocess.run(["docker", undo_it, c.name], check=True, capture_output=True)
    drift = guard.until("drift")
    assert drift["changed"] == f"{c.name} was running again"
    assert drift["did"] == f"paused {c.name} again"
    assert drift["source"]["docker"]["actor"] == c.id
    assert drift["source"]["docker"]["action"] in ("unpause", "start", "restart")
    assert drift["source"]["docker"]["attributes"]["name"] == c.name
    wait_for(lambda: status(c) == "paused", 10, "the container paused again")
    assert guard.stop() == 0
    # --reopen-anyway: the container still relays (the gate would keep it paused, exit 7)
    restore = run_cli("restore", incident, "--reopen-anyway", state_dir=state_dir)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert status(c) == "running"


def test_container_recreated_with_the_same_compose_labels_is_paused_and_restored(
    dlab: Lab, tmp_path: Path, state_dir: Path, guards: list[GuardProc]
) -> None:
    labels = _compose_labels(dlab)
    old = dlab.run(dockerlab.BUSYBOX, ["sleep", "600"], labels=labels)
    other = dlab.run(dockerlab.BUSYBOX, ["sleep", "600"])  # outside the incident
    incident = _pause_run(tmp_path, state_dir, old.name)
    guard = GuardProc(state_dir, incident)
    guards.append(guard)
    guard.until("compared", source="docker")
    old.remove(force=True)
    new = dlab.run(dockerlab.BUSYBOX, ["sleep", "600"], labels=labels)
    drift = guard.until("drift")
    assert drift["changed"] == (
        f"{old.name} ({old.id[:12]}, now gone) was recreated as {new.name} ({new.id[:12]}), running"
    )
    assert drift["did"] == f"paused {new.name}; restore resumes {new.id[:12]}"
    wait_for(lambda: status(new) == "paused", 10, "the recreated container paused")
    assert status(other) == "running"
    updates = [e for e in dockerlab.journal(state_dir, incident) if e["phase"] == "intent-update"]
    assert [u["undo"]["containers"][0]["id"] for u in updates] == [new.id]
    assert updates[0]["undo"]["containers"][0]["recreated_from"] == old.id
    # the new container, unpaused, is paused again too: it is the incident's container now
    subprocess.run(["docker", "unpause", new.name], check=True, capture_output=True)
    assert guard.until("drift")["did"] == f"paused {new.name} again"
    wait_for(lambda: status(new) == "paused", 10, "the recreated container paused again")
    assert guard.stop() == 0
    restore = run_cli("restore", incident, "--json", "--reopen-anyway", state_dir=state_dir)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    notes = json.loads(restore.stdout)["steps"][0]["notes"]
    assert notes == [f"{new.name}: paused -> running (recreated while contained; replaced {old.id[:12]})"]
    assert status(new) == "running"
    assert status(other) == "running"


def test_container_recreated_while_no_guard_ran_is_found_at_start(
    dlab: Lab, tmp_path: Path, state_dir: Path, guards: list[GuardProc]
) -> None:
    """The original is gone before the guard starts: its labels come from Docker's event log."""
    labels = _compose_labels(dlab)
    old = dlab.run(dockerlab.BUSYBOX, ["sleep", "600"], labels=labels)
    incident = _pause_run(tmp_path, state_dir, old.name)
    old.remove(force=True)
    new = dlab.run(dockerlab.BUSYBOX, ["sleep", "600"], labels=labels)
    guard = GuardProc(state_dir, incident)
    guards.append(guard)
    drift = guard.until("drift")
    assert drift["source"] == {"compare": "start"}
    assert drift["did"] == f"paused {new.name}; restore resumes {new.id[:12]}"
    guard.until("compared", source="docker")
    assert status(new) == "paused"
    assert guard.stop() == 0
    assert run_cli("restore", incident, "--reopen-anyway", state_dir=state_dir).returncode == 0
    assert status(new) == "running"


def test_guard_refuses_bad_input(state_dir: Path) -> None:
    both = run_cli("guard", "20260101T000000Z-x-0000", "--all", state_dir=state_dir)
    assert (both.returncode, both.stderr) == (2, "lockdown: error: give an INCIDENT or --all, not both\n")
    neither = run_cli("guard", state_dir=state_dir)
    assert neither.returncode == 2
    assert neither.stderr == (
        "lockdown: error: which incident? give its id or --all\n  -> list them with `lockdown incidents`\n"
    )


# ------------------------------------------------------------------ the lock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from lockdown.engine.lock import StateLock
lock = StateLock(Path(sys.argv[1]), sys.argv[2]).acquire()
lock.update("20260101T000000Z-held-0000")
print("held", flush=True)
time.sleep(float(sys.argv[3]))
lock.release()
"""


def _hold(state_dir: Path, operation: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state_dir), operation, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert read_line(proc) == "held\n"
    return proc


def test_restore_waits_for_a_guard_holding_the_lock_but_not_for_a_run(state_dir: Path) -> None:
    missing = "20260101T000000Z-none-0000"
    not_found = (
        f"lockdown: error: no incident {missing} in {state_dir}/incidents\n"
        "  -> list incidents with `lockdown incidents`, or pass --state-dir\n"
    )
    guard = _hold(state_dir, "guard", 0.5)
    # got the lock once the guard let go, then found no such incident: not "busy"
    waited = run_cli("restore", missing, state_dir=state_dir)
    assert (waited.returncode, waited.stderr) == (2, not_found)
    guard.wait()

    run = _hold(state_dir, "run", 30)
    try:
        busy = run_cli("restore", missing, state_dir=state_dir)
    finally:
        run.kill()
        run.wait()
    assert busy.returncode == 3
    assert busy.stderr.startswith(
        f"lockdown: error: run of incident 20260101T000000Z-held-0000 is in progress (pid {run.pid}) in {state_dir}\n"
    )

    stuck = _hold(state_dir, "guard", 30)
    try:
        t0 = time.monotonic()
        busy = run_cli("restore", missing, state_dir=state_dir)
        waited_s = time.monotonic() - t0
    finally:
        stuck.kill()
        stuck.wait()
    assert busy.returncode == 3 and waited_s >= 5
    assert busy.stderr.startswith(
        f"lockdown: error: guard of incident 20260101T000000Z-held-0000 is in progress (pid {stuck.pid})"
    )
