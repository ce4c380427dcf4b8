"""The guard loses its event sources and gets them back: it compares again, then follows events.

Docker: restarting the shared dockerd would disturb every other test, so the
guard talks to the real daemon through a relay the test owns
(``tests/dockerproxy.py``, ``DOCKER_HOST=unix://...``). Cutting the relay is,
to the guard, a daemon that went away; the container is unpaused through the
real socket meanwhile, where the guard cannot see it.

netlink: a socket cannot be cut from outside, but the kernel drops
notifications (ENOBUFS) when its receive queue overflows. The guard is
stopped (SIGSTOP) while ``ip -batch`` floods address changes in the test's
namespace, then continued.

State is read with ``docker inspect``, ``ip -j``, /proc and the journal.
"""

from __future__ import annotations

import os
import re
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
from tests.conftest import read_line, run_cli, wait_for
from tests.dockerlab import Lab, status
from tests.dockerproxy import DockerRelay, short_dir
from tests.netlab import drifts, ipn, lockdown, state, veth
from tests.test_guard import GuardProc, _pause_run, _run
from tests.test_serve import Server
from tests.test_serve_guard import logged, write_config

#: The docker CLI of the test talks to the real daemon, never through the relay.
REAL_DOCKER = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
#: How long the relay stays cut: long enough for several reconnect attempts.
AWAY_S = 3.0


@pytest.fixture
def guard_procs() -> Iterator[list[GuardProc]]:
    started: list[GuardProc] = []
    yield started
    for g in started:
        if g.proc.poll() is None:
            os.kill(g.proc.pid, signal.SIGCONT)  # a test that failed while it was stopped
        g.kill()


@pytest.fixture
def lab(docker_engine: Any) -> Iterator[Lab]:
    with dockerlab.lab(docker_engine) as the_lab:
        yield the_lab


@pytest.fixture
def relay() -> Iterator[DockerRelay]:
    where = short_dir()
    try:
        with DockerRelay(where / "lkd-docker.sock") as the_relay:
            yield the_relay
    finally:
        shutil.rmtree(where, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def docker_real(*args: str) -> None:
    subprocess.run(["docker", *args], check=True, capture_output=True, env=REAL_DOCKER)


def paused(c: Any) -> bool:
    return bool(dockerlab.state(c)["Paused"])


def test_docker_away_then_back_is_compared_again_and_the_container_paused_again(
    lab: Lab, relay: DockerRelay, tmp_path: Path, state_dir: Path, guard_procs: list[GuardProc]
) -> None:
    c = lab.run(dockerlab.BUSYBOX, ["sleep", "600"])
    incident = _pause_run(tmp_path, state_dir, c.name)  # through the real socket
    guard = GuardProc(state_dir, incident, env={"DOCKER_HOST": relay.docker_host})
    guard_procs.append(guard)
    assert guard.until("compared", source="docker")["reason"] == "start"
    assert relay.open_connections >= 1, "the guard does not talk to Docker through the relay"

    # An event before the cut: the stream is reopened with `since` it, and replays it.
    docker_real("unpause", c.name)
    assert guard.until("drift")["did"] == f"paused {c.name} again"
    wait_for(lambda: paused(c), 10, "the container paused again")

    relay.cut()
    lost = guard.until("lost")
    assert lost == {
        "event": "lost", "source": "docker", "reason": "the event stream ended (daemon restarted?)"
    }
    docker_real("unpause", c.name)  # the guard cannot see this one
    cpu0, t0 = cpu_seconds(guard.proc.pid), time.monotonic()
    time.sleep(AWAY_S)
    busy = (cpu_seconds(guard.proc.pid) - cpu0) / (time.monotonic() - t0)
    assert busy < 0.05, f"the guard used {busy:.0%} of a CPU while Docker was away"
    assert not paused(c), "the guard paused the container while Docker was cut off from it"

    relay.restore()
    back = guard.until("reconnected", timeout=15)
    assert back["source"] == "docker"
    away = re.fullmatch(r"reconnected to Docker after (\d+\.\d) s away", back["reason"])
    assert away is not None, back
    assert AWAY_S <= float(away[1]) < AWAY_S + 10
    drift = guard.until("drift")
    assert drift["source"] == {"compare": back["reason"]}
    assert (drift["kind"], drift["target"]) == ("container", c.name)
    assert drift["changed"] == f"{c.name} was running again"
    assert drift["did"] == f"paused {c.name} again"
    guard.until("compared", source="docker", reason=back["reason"])
    assert paused(c)

    # Still following events after the reconnect (and the replayed unpause added no drift).
    docker_real("unpause", c.name)
    assert guard.until("drift")["source"]["docker"]["action"] == "unpause"
    wait_for(lambda: paused(c), 10, "the container paused again after the reconnect")
    assert guard.stop() == 0
    entries = [e for e in dockerlab.journal(state_dir, incident) if e["phase"] == "drift"]
    assert [e["source"].get("compare", "event") for e in entries] == ["event", back["reason"], "event"]
    assert {e["target"] for e in entries} == {c.name}
    assert [d for d in guard.events if d["event"] == "lost"] == [lost], "one loss, one line"

    restore = run_cli("restore", incident, "--reopen-anyway", state_dir=state_dir, env=REAL_DOCKER)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert status(c) == "running"


def test_the_guard_prints_a_line_when_docker_is_lost_and_one_when_it_is_back(
    lab: Lab, relay: DockerRelay, tmp_path: Path, state_dir: Path
) -> None:
    c = lab.run(dockerlab.BUSYBOX, ["sleep", "600"])
    incident = _pause_run(tmp_path, state_dir, c.name)
    env = {**os.environ, "LOCKDOWN_STATE_DIR": str(state_dir), "DOCKER_HOST": relay.docker_host}
    guard = subprocess.Popen(
        [sys.executable, "-m", "lockdown", "guard", incident],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert read_line(guard) == f"guarding {incident}: docker.pause of {c.name}\n"
        assert read_line(guard) == (
            f"{incident}: docker state compared with the journal (start); following events\n"
        )
        relay.cut()
        assert read_line(guard) == (
            "docker: lost: the event stream ended (daemon restarted?); "
            "retrying, containment unchecked until it is back\n"
        )
        time.sleep(1)
        relay.restore()
        back = read_line(guard, timeout=15)
        assert re.fullmatch(
            r"docker: reconnected to Docker after \d+\.\d s away; comparing the live state with the journal again\n",
            back,
        ), back
        assert read_line(guard).startswith(f"{incident}: docker state compared with the journal (reconnected ")
        guard.send_signal(signal.SIGTERM)
        assert guard.wait(timeout=30) == 0
        assert guard.stdout is not None and guard.stdout.read() == "stopped: SIGTERM\n"  # no second "lost"
        assert paused(c)
    finally:
        guard.kill()
        guard.wait()


def test_serve_logs_docker_lost_and_reconnected_and_pauses_the_container_again(
    lab: Lab, relay: DockerRelay, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = lab.run(dockerlab.BUSYBOX, ["sleep", "600"])
    incident = _pause_run(tmp_path, state_dir, c.name)
    monkeypatch.setenv("DOCKER_HOST", relay.docker_host)  # serve's environment, not the docker CLI's
    srv = Server(write_config(tmp_path, state_dir), state_dir, None).start()
    try:
        wait_for(lambda: logged(state_dir, "guard-compared", incident_id=incident, source="docker"), what="start")
        relay.cut()
        (lost,) = wait_for(lambda: logged(state_dir, "guard-lost"), what="guard-lost")
        assert (lost["source"], lost["reason"]) == ("docker", "the event stream ended (daemon restarted?)")
        docker_real("unpause", c.name)
        time.sleep(1)
        relay.restore()
        (back,) = wait_for(lambda: logged(state_dir, "guard-reconnected"), what="guard-reconnected")
        assert back["source"] == "docker" and back["reason"].startswith("reconnected to Docker after ")
        wait_for(lambda: paused(c), 15, "the container paused again")
        (entry,) = wait_for(lambda: drifts(state_dir, incident), what="the drift entry")
        assert entry["source"] == {"compare": back["reason"]}
        assert entry["did"] == f"paused {c.name} again"
        assert srv.stop()[0] == 0
        # the guard itself rode out the outage: never stopped, never started again
        assert (len(logged(state_dir, "guard-start")), logged(state_dir, "guard-stopped")) == (1, [])
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.communicate()


def _flood(netns: str, tmp_path: Path, dev: str, n: int) -> None:
    """``n`` addresses added and deleted on ``dev`` in one ``ip -batch``: thousands of notifications."""
    lines = [f"addr add 2001:db8:77::{i:x}/64 dev {dev} nodad" for i in range(1, n + 1)]
    lines += [f"addr del 2001:db8:77::{i:x}/64 dev {dev}" for i in range(1, n + 1)]
    batch = tmp_path / "flood.batch"
    batch.write_text("\n".join(lines) + "\n")
    ipn(netns, "-batch", str(batch))


def test_netlink_overrun_is_compared_again_and_the_address_it_hid_removed(
    netns: str, tmp_path: Path, state_dir: Path, guard_procs: list[GuardProc]
) -> None:
    a0, a1 = veth(netns)
    ipn(netns, "addr", "add", "2001:db8:1::1/64", "dev", a0, "nodad")
    ipn(netns, "addr", "add", "2001:db8:2::1/64", "dev", a1, "nodad")
    before = state(netns, [a0, a1])
    incident = _run(netns, state_dir, tmp_path, a0)
    guard = GuardProc(state_dir, incident, netns=netns)  # `ip netns exec` execs: same pid
    guard_procs.append(guard)
    guard.until("compared", source="net")

    os.kill(guard.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: Path(f"/proc/{guard.proc.pid}/stat").read_text().split(") ")[1][0] == "T", 5, "stopped")
        _flood(netns, tmp_path, a1, 3000)  # the untargeted interface: left as it was
        ipn(netns, "addr", "add", "2001:db8:99::1/64", "dev", a0, "nodad")  # its notification is dropped
    finally:
        os.kill(guard.proc.pid, signal.SIGCONT)

    back = guard.until("reconnected")
    assert back == {
        "event": "reconnected", "source": "net",
        "reason": "the kernel dropped netlink notifications (receive queue overflowed, ENOBUFS); socket reopened",
    }
    drift = guard.until("drift")
    assert drift["source"] == {"compare": back["reason"]}
    assert drift["changed"] == f"2001:db8:99::1/64 (nodad) appeared on {a0}"
    assert drift["did"] == f"removed 2001:db8:99::1/64 from {a0}"
    guard.until("compared", source="net", reason=back["reason"])
    assert netlab.global_addresses(netns, a0) == []
    assert netlab.global_addresses(netns, a1) == ["2001:db8:2::1/64"]
    assert [e["did"] for e in drifts(state_dir)] == [f"removed 2001:db8:99::1/64 from {a0}"]

    # and it follows events again on the new socket
    ipn(netns, "addr", "add", "2001:db8:99::2/64", "dev", a0, "nodad")
    assert guard.until("drift")["source"]["netlink"]["kind"] == "addr-new"
    assert guard.stop() == 0
    assert lockdown(netns, state_dir, "restore", incident).returncode == 0
    netlab.assert_same_state(before, state(netns, [a0, a1]))
