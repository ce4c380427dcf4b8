"""ipv6.strip on a real kernel: strip, restore, compare ``ip -j`` before and after.

Every test works on veth pairs inside its own namespace (the ``netns``
fixture deletes it, and everything in it, even when the test fails) with
2001:db8::/32 addresses. lockdown runs as the real CLI inside the namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import netlab
from tests.conftest import REPO, read_line, run_cli
from tests.crashlab import lockdown_killed_at
from tests.netlab import STRIP, get_sysctl, ipn, lockdown, set_sysctl, state, veth

pytestmark = pytest.mark.netns


def _setup(ns: str) -> tuple[str, str]:
    """One veth pair with a bit of everything the strip must give back.

    a0 gets: a nodad+noprefixroute address (plus the on-link route it then
    needs), an address with finite lifetimes, a plain one that goes through
    DAD with home+mngtmpaddr, and one that is the source of a route; routes
    via gateways in the main table (default included) and in table 100;
    accept_ra=2 as on a forwarding Docker host.
    """
    a0, a1 = veth(ns)
    ipn(ns, "addr", "add", "2001:db8:1::1/64", "dev", a0, "nodad", "noprefixroute")
    ipn(ns, "-6", "route", "add", "2001:db8:1::/64", "dev", a0, "metric", "512", "proto", "static")
    ipn(ns, "addr", "add", "2001:db8:2::1/64", "dev", a0, "nodad", "valid_lft", "600", "preferred_lft", "400")
    ipn(ns, "addr", "add", "2001:db8:3::1/64", "dev", a0, "home", "mngtmpaddr")
    ipn(ns, "addr", "add", "2001:db8:4::1/64", "dev", a0, "nodad")
    ipn(ns, "-6", "route", "add", "default", "via", "2001:db8:2::fe", "dev", a0)
    ipn(ns, "-6", "route", "add", "2001:db8:99::/48", "via", "2001:db8:1::fe", "dev", a0, "metric", "50")
    ipn(ns, "-6", "route", "add", "2001:db8:55::/48", "via", "2001:db8:4::fe", "dev", a0, "src", "2001:db8:4::1")
    ipn(ns, "-6", "route", "add", "2001:db8:77::/48", "via", "2001:db8:2::fe", "dev", a0, "table", "100")
    set_sysctl(ns, a0, "accept_ra", "2")
    return a0, a1




def test_strip_and_restore_gives_back_identical_state(netns: str, tmp_path: Path, state_dir: Path) -> None:
    a0, a1 = _setup(netns)
    before = state(netns, [a0, a1])
    pb = netlab.playbook(tmp_path, STRIP.format(dev=a0))

    run = lockdown(netns, state_dir, "run", str(pb), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "contained"
    assert netlab.global_addresses(netns, a0) == []
    link_local = [a for link in netlab.addresses(netns) if link["ifname"] == a0 for a in link["addr_info"]]
    assert [a["scope"] for a in link_local] == ["link"], "link-local must stay"
    assert get_sysctl(netns, a0, "accept_ra") == "0"
    assert get_sysctl(netns, a0, "autoconf") == "0"
    assert get_sysctl(netns, a1, "accept_ra") == before["sysctls"][f"{a1}/accept_ra"], "untargeted interface touched"
    notes = json.loads(run.stdout)["steps"][0]["notes"]
    assert any(
        n.startswith(f"{a0}: removed 4 address(es): 2001:db8:4::1/64 (nodad), 2001:db8:3::1/64 (home mngtmpaddr), "
                     "2001:db8:2::1/64 (nodad; valid ")
        for n in notes
    ), notes
    assert f"{a0}: SLAAC blocked (accept_ra 2 -> 0, autoconf 1 -> 0)" in notes
    # The kernel may drop the default route with the address; prove restore puts it back.
    ipn(netns, "-6", "route", "del", "default", "via", "2001:db8:2::fe", "dev", a0)

    restore = lockdown(netns, state_dir, "restore", "--last")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert "re-added 1 route(s): default via 2001:db8:2::fe" in restore.stdout
    assert "put back the source address of 1 route(s): 2001:db8:55::/48" in restore.stdout
    netlab.assert_same_state(before, state(netns, [a0, a1]))

    again = lockdown(netns, state_dir, "restore", "--last")
    assert again.returncode == 0, again.stderr
    assert "nothing to undo" in again.stdout
    netlab.assert_same_state(before, state(netns, [a0, a1]))


def test_default_targets_only_interfaces_with_global_addresses(netns: str, tmp_path: Path, state_dir: Path) -> None:
    a0, a1 = veth(netns)
    b0, b1 = veth(netns)
    ipn(netns, "addr", "add", "2001:db8:a::1/64", "dev", a0, "nodad")
    ipn(netns, "addr", "add", "2001:db8:b::1/64", "dev", b0, "nodad")
    ipn(netns, "addr", "add", "2001:db8:ffff::1/128", "dev", "lo")
    before = state(netns, [a0, a1, b0, b1])
    pb = netlab.playbook(tmp_path, '[[steps]]\nid = "strip"\naction = "ipv6.strip"\nkeep = ["2001:db8:b::/64"]\n')

    run = lockdown(netns, state_dir, "run", str(pb))
    assert run.returncode == 0, run.stderr
    intent = next(e for e in netlab.journal(state_dir) if e["phase"] == "intent")
    assert intent["resolved"] == {"interfaces": [a0], "strip": ["2001:db8:a::1/64"]}
    assert netlab.global_addresses(netns, a0) == []
    assert netlab.global_addresses(netns, b0) == ["2001:db8:b::1/64"], "kept address stripped"
    assert netlab.global_addresses(netns, "lo") == ["2001:db8:ffff::1/128"], "loopback stripped"
    assert get_sysctl(netns, b0, "accept_ra") == before["sysctls"][f"{b0}/accept_ra"], "kept interface touched"

    assert lockdown(netns, state_dir, "restore", "--last").returncode == 0
    netlab.assert_same_state(before, state(netns, [a0, a1, b0, b1]))


@pytest.mark.parametrize("crash_after", [2, 3])
def test_crash_at_journal_points_then_restore(
    netns: str, tmp_path: Path, state_dir: Path, crash_after: int
) -> None:
    """Killed (from the test side, tests/crashlab.py) before the journal line after seq
    ``crash_after``: after seq 2 the intent is journaled and the strip was made but not
    recorded as applied; after seq 3 it is ``applied`` and the run never ended."""
    a0, a1 = _setup(netns)
    before = state(netns, [a0, a1])
    pb = netlab.playbook(tmp_path, STRIP.format(dev=a0))

    run = lockdown_killed_at(netns, state_dir, crash_after + 1, "run", str(pb), journal_writes_only=True)
    assert run.returncode == -signal.SIGKILL
    phases = [e["phase"] for e in netlab.journal(state_dir)]
    assert phases == ["run-start", "intent", "applied"][:crash_after]
    assert netlab.global_addresses(netns, a0) == []

    restore = lockdown(netns, state_dir, "restore", "--last")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    netlab.assert_same_state(before, state(netns, [a0, a1]))


# The real CLI, SIGKILLed by itself right after the step deleted its second address: the fault
# is injected from the test side (the step no longer sleeps, so there is no window to hit).
KILL_MID_APPLY = """
import os, signal, sys
from lockdown import netlink
real, deleted = netlink.delete_address, []
def delete_then_die(*args, **kwargs):
    result = real(*args, **kwargs)
    deleted.append(args)
    if len(deleted) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
netlink.delete_address = delete_then_die
from lockdown.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_in_the_middle_of_apply_then_restore(netns: str, tmp_path: Path, state_dir: Path) -> None:
    """A real SIGKILL half-way through the deletions: sysctls and two of four addresses changed."""
    a0, a1 = _setup(netns)
    before = state(netns, [a0, a1])
    pb = netlab.playbook(tmp_path, STRIP.format(dev=a0))
    env = dict(os.environ, LOCKDOWN_STATE_DIR=str(state_dir), SSH_CONNECTION="", SSH_CLIENT="")
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", KILL_MID_APPLY, "run", str(pb)],
        env=env, cwd=REPO, capture_output=True, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(netlab.global_addresses(netns, a0)) == 2, "not killed half-way"
    assert get_sysctl(netns, a0, "accept_ra") == "0"
    phases = [e["phase"] for e in netlab.journal(state_dir)]
    assert phases == ["run-start", "intent"], "killed after the step finished"

    status = lockdown(netns, state_dir, "status", "--json")
    assert json.loads(status.stdout)["containment_active"] is True
    restore = lockdown(netns, state_dir, "restore", "--last")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    netlab.assert_same_state(before, state(netns, [a0, a1]))


def test_restore_after_an_address_was_readded_by_hand(netns: str, tmp_path: Path, state_dir: Path) -> None:
    a0, a1 = _setup(netns)
    before = state(netns, [a0, a1])
    pb = netlab.playbook(tmp_path, STRIP.format(dev=a0))
    assert lockdown(netns, state_dir, "run", str(pb)).returncode == 0
    ipn(netns, "addr", "add", "2001:db8:1::1/64", "dev", a0, "nodad", "noprefixroute")

    restore = lockdown(netns, state_dir, "restore", "--last")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert f"{a0}: already present: 2001:db8:1::1/64" in restore.stdout
    assert f"{a0}: re-added 3 address(es)" in restore.stdout
    netlab.assert_same_state(before, state(netns, [a0, a1]))


# A stand-in for systemd-networkd (comm is cut to 15 characters, as the real
# one's is): after the strip, it re-adds an old and a new address.
FAKE_NETWORKD = r"""
import ctypes, subprocess, sys, time
ctypes.CDLL(None).prctl(15, b"systemd-networkd", 0, 0, 0)  # PR_SET_NAME
dev = sys.argv[1]
subprocess.run(["ip", "addr", "add", "2001:db8:1::1/64", "dev", dev, "nodad"], check=True)
subprocess.run(["ip", "addr", "add", "2001:db8:7::1/64", "dev", dev, "nodad"], check=True)
time.sleep(120)
"""


def test_address_that_comes_back_is_stripped_again_by_the_guard(
    netns: str, tmp_path: Path, state_dir: Path
) -> None:
    """The run no longer waits a second to look again: `lockdown guard` strips what a network
    manager re-adds later, names the suspect, and restore gives back only what the run removed."""
    a0, a1 = veth(netns)
    ipn(netns, "addr", "add", "2001:db8:1::1/64", "dev", a0, "nodad")
    before = state(netns, [a0, a1])
    pb = netlab.playbook(tmp_path, STRIP.format(dev=a0))
    run = lockdown(netns, state_dir, "run", str(pb), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert not [n for n in doc["steps"][0]["notes"] if "later" in n]
    incident = doc["incident_id"]
    env = {**os.environ, "LOCKDOWN_STATE_DIR": str(state_dir)}
    guard = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "lockdown", "guard", incident, "--json"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    manager = None
    try:
        while json.loads(read_line(guard))["event"] != "compared":
            pass
        manager = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", FAKE_NETWORKD, a0])
        drifts = []
        while len(drifts) < 2:
            event = json.loads(read_line(guard))
            if event["event"] == "drift":
                drifts.append(event)
        assert manager.poll() is None, "the fake manager died before the guard named it"
    finally:
        for proc in (manager, guard):
            if proc is not None:
                proc.kill()
                proc.wait()
    assert sorted(d["changed"] for d in drifts) == [  # one event may find both
        f"2001:db8:1::1/64 (nodad) appeared on {a0}",
        f"2001:db8:7::1/64 (nodad) appeared on {a0}",
    ]
    assert all(f"systemd-networkd (pid {manager.pid})" in d["source"]["suspects"] for d in drifts)
    assert netlab.global_addresses(netns, a0) == []

    assert lockdown(netns, state_dir, "restore", "--last").returncode == 0
    # What the run removed comes back; what drift added (2001:db8:7::1) does not.
    netlab.assert_same_state(before, state(netns, [a0, a1]))


def _guard_playbook(tmp_path: Path, dev: str, extra: str = "") -> Path:
    return netlab.playbook(
        tmp_path,
        f'[vars]\nkeep = []\n\n[[steps]]\nid = "strip"\naction = "ipv6.strip"\ninterfaces = ["{dev}"]\n'
        f'keep = "{{keep}}"\n{extra}',
        name="guard",
    )


def test_lockout_guard_refuses_to_cut_the_operators_session(netns: str, tmp_path: Path, state_dir: Path) -> None:
    a0, a1 = _setup(netns)
    before = state(netns, [a0, a1])
    pb = _guard_playbook(tmp_path, a0)
    ssh = {"SSH_CONNECTION": "2001:db8:ffff::9 53422 2001:db8:3::1 22"}

    refused = lockdown(netns, state_dir, "run", str(pb), env=ssh)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"lockdown: error: {pb} step 1 (strip): 2001:db8:3::1/64 on {a0} carries the operator's SSH session "
        "(SSH_CONNECTION, from 2001:db8:ffff::9 port 53422); stripping it would cut this connection\n"
        "  -> keep it with --var keep=2001:db8:3::1/128, or rerun with --force to strip it anyway"
    )
    assert not (state_dir / "incidents").exists() or not any((state_dir / "incidents").iterdir())
    netlab.assert_same_state(before, state(netns, [a0, a1]))

    # SSH_CLIENT has no server address: the kernel's source address towards the client is used.
    ipn(netns, "-6", "route", "add", "2001:db8:ffff::/64", "via", "2001:db8:4::fe", "dev", a0,
        "src", "2001:db8:4::1", "metric", "10")
    before = state(netns, [a0, a1])
    refused = lockdown(netns, state_dir, "run", str(pb), env={"SSH_CLIENT": "2001:db8:ffff::9 53422 22"})
    assert refused.returncode == 2
    assert f"2001:db8:4::1/64 on {a0} carries the operator's SSH session (SSH_CLIENT," in refused.stderr
    netlab.assert_same_state(before, state(netns, [a0, a1]))

    # Way out 1: keep the session's address (through --var here).
    kept = lockdown(netns, state_dir, "run", str(pb), "--var", "keep=2001:db8:3::1/128", env=ssh)
    assert kept.returncode == 0, kept.stderr
    assert netlab.global_addresses(netns, a0) == ["2001:db8:3::1/64"]
    assert lockdown(netns, state_dir, "restore", "--last").returncode == 0
    netlab.assert_same_state(netlab.unordered(before), netlab.unordered(state(netns, [a0, a1])))
    # Start the next check from the order the kernel has now.
    before = state(netns, [a0, a1])

    # Way out 2: --force, which the step reports.
    forced = lockdown(netns, state_dir, "run", str(pb), "--force", env=ssh)
    assert forced.returncode == 0, forced.stderr
    assert (
        f"--force: stripping 2001:db8:3::1/64 from {a0} although the operator's SSH session "
        "(SSH_CONNECTION, from 2001:db8:ffff::9 port 53422) runs over it"
    ) in forced.stdout
    assert netlab.global_addresses(netns, a0) == []
    assert lockdown(netns, state_dir, "restore", "--last").returncode == 0
    netlab.assert_same_state(before, state(netns, [a0, a1]))

    # keep_operator_session = false switches the guard off.
    off = _guard_playbook(tmp_path, a0, "keep_operator_session = false\n")
    unguarded = lockdown(netns, state_dir, "run", str(off), env=ssh)
    assert unguarded.returncode == 0, unguarded.stderr
    assert lockdown(netns, state_dir, "restore", "--last").returncode == 0
    netlab.assert_same_state(before, state(netns, [a0, a1]))


# A process named sshd holding an accepted connection to [2001:db8:3::1]:22,
# and a separate client holding the other end (from 2001:db8:4::1).
FAKE_SSH = r"""
import ctypes, encodings.idna, json, socket, sys, time
role = sys.argv[1]
if role == "sshd":
    ctypes.CDLL(None).prctl(15, b"sshd", 0, 0, 0)  # PR_SET_NAME
    srv = socket.socket(socket.AF_INET6)
    srv.bind(("2001:db8:3::1", 22))
    srv.listen(4)
    print(json.dumps({"ready": True}), flush=True)
    conn, peer = srv.accept()
    print(json.dumps({"peer_port": peer[1]}), flush=True)
else:
    c = socket.socket(socket.AF_INET6)
    c.bind(("2001:db8:4::1", 0))
    c.connect(("2001:db8:3::1", 22))
time.sleep(120)
"""


def test_lockout_guard_sees_an_established_sshd_connection(netns: str, tmp_path: Path, state_dir: Path) -> None:
    """No SSH_* variables (sudo drops them): an established sshd connection over the address still counts."""
    a0, a1 = _setup(netns)
    before = state(netns, [a0, a1])  # waits for DAD: sshd cannot bind a tentative address
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-c", FAKE_SSH]
    sshd = subprocess.Popen([*cmd, "sshd"], stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert json.loads(read_line(sshd)) == {"ready": True}
        client = subprocess.Popen([*cmd, "client"])
        port = json.loads(read_line(sshd))["peer_port"]
        pb = _guard_playbook(tmp_path, a0)

        refused = lockdown(netns, state_dir, "run", str(pb))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.strip() == (
            f"lockdown: error: {pb} step 1 (strip): 2001:db8:3::1/64 on {a0} carries the operator's SSH session "
            f"(established sshd connection, pid {sshd.pid}, from 2001:db8:4::1 port {port}); "
            "stripping it would cut this connection\n"
            "  -> keep it with --var keep=2001:db8:3::1/128, or rerun with --force to strip it anyway"
        )
        netlab.assert_same_state(before, state(netns, [a0, a1]))

        kept = lockdown(netns, state_dir, "run", str(pb), "--var", "keep=2001:db8:3::1/128")
        assert kept.returncode == 0, kept.stdout + kept.stderr
        assert netlab.global_addresses(netns, a0) == ["2001:db8:3::1/64"]
        assert lockdown(netns, state_dir, "restore", "--last").returncode == 0
        netlab.assert_same_state(netlab.unordered(before), netlab.unordered(state(netns, [a0, a1])))
    finally:
        for p in (sshd, client):
            if p is not None:
                p.kill()
                p.wait()


# Established and TIME_WAIT connections over IPv4 and IPv6 loopback, then what the
# lockout guard's two readers (sock_diag, and /proc/net as the fallback) list.
DIAG_VS_PROC = r"""
import json, socket
from lockdown import hostfacts
socks = []
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    srv = socket.socket(family)
    srv.bind((host, 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    for _ in range(3):  # closed by the client first: the client side stays in TIME_WAIT
        c = socket.create_connection((host, port))
        a, _ = srv.accept()
        c.close()
        a.close()
    c = socket.create_connection((host, port))
    a, _ = srv.accept()
    socks += [srv, c, a]
diag = sorted(hostfacts._established_by_diag())
proc = sorted(
    (r[2], r[4], r[5], r[8]) for r in hostfacts._proc_net_rows("/proc/self/net", only=("tcp", "01"))
)
tw = sum(1 for r in hostfacts._proc_net_rows("/proc/self/net") if r[6] == "TIME_WAIT")
print(json.dumps({"diag": diag, "proc": proc, "time_wait": tw}))
"""


def test_lockout_guard_reads_established_sockets_from_the_kernel_as_proc_lists_them(netns: str) -> None:
    """sock_diag (kernel-filtered by state) lists exactly the established sockets /proc/net lists."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", DIAG_VS_PROC],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    got = json.loads(out.stdout)
    assert got["time_wait"] == 6  # the flood's leftovers are there, and not listed below
    assert len(got["diag"]) == 4  # both ends of one IPv4 and one IPv6 connection
    assert got["diag"] == got["proc"]
    assert {row[0] for row in got["diag"]} == {"127.0.0.1", "::1"}


# The action classes driven directly, with a real context and evidence store,
# so that undo can be called twice on the same record (the runner would say
# "nothing to undo" the second time and never call it).
DIRECT = """
import json, sys
from pathlib import Path
from lockdown.actions.base import StepContext
from lockdown.actions.ipv6_strip import Ipv6Strip, Params
from lockdown.record.store import EvidenceStore

mode, dev, workdir = sys.argv[1:4]
d = Path(workdir)
ctx = StepContext("i", d, "strip", "ipv6.strip", EvidenceStore(d), amend=lambda record: None)
if mode == "strip":
    action = Ipv6Strip(Params(interfaces=[dev]))
    action.preflight()
    record = action.prepare(ctx)
    action.apply(ctx, record)
    (d / "record.json").write_text(json.dumps(record))
else:
    Ipv6Strip.undo(ctx, json.loads((d / "record.json").read_text()))
print(json.dumps(ctx.notes))
"""


def test_undo_twice_on_the_same_record_changes_nothing_the_second_time(netns: str, tmp_path: Path) -> None:
    a0, a1 = _setup(netns)
    before = state(netns, [a0, a1])

    def direct(mode: str) -> list[str]:
        out = netlab.nsexec(netns, sys.executable, "-c", DIRECT, mode, a0, str(tmp_path)).stdout
        notes: list[str] = json.loads(out)
        return notes

    direct("strip")
    assert netlab.global_addresses(netns, a0) == []
    first = direct("undo")
    assert any(n.startswith(f"{a0}: re-added 4 address(es)") for n in first), first
    netlab.assert_same_state(before, state(netns, [a0, a1]))

    on_a0 = [r for r in before["routes"] if r.get("dev") == a0 and r.get("table") != "local"]
    assert len(on_a0) == 9  # prefix routes of 3 addresses, fe80::/64, the static on-link route, 4 via gateways
    second = direct("undo")
    assert second == [
        f"{a0}: already present: 2001:db8:1::1/64, 2001:db8:2::1/64, 2001:db8:3::1/64, 2001:db8:4::1/64",
        f"{len(on_a0)} route(s) already present",
        f"{a0}: accept_ra already 2",
        f"{a0}: autoconf already 1",
    ], second
    netlab.assert_same_state(before, state(netns, [a0, a1]))


# The strip between an alert's preflight and its cut: the preflight's survey is reused by
# prepare, and an address removed by someone else in between must not come back with restore.
RACE = """
import json, subprocess, sys
from pathlib import Path
from lockdown.actions.base import StepContext
from lockdown.actions.ipv6_strip import Ipv6Strip, Params
from lockdown.record.store import EvidenceStore

dev, workdir, gone = sys.argv[1:4]
d = Path(workdir)
amended, latest = [], []
def amend(record, **why):
    amended.append(why)
    latest.append(json.loads(json.dumps(record)))  # what the journal's intent-update holds
ctx = StepContext("i", d, "strip", "ipv6.strip", EvidenceStore(d), amend=amend)
action = Ipv6Strip(Params(interfaces=[dev]))
action.preflight()
subprocess.run(["ip", "addr", "del", gone, "dev", dev], check=True)  # after the survey, before the cut
record = action.prepare(ctx)
planned = [a["address"] + "/" + str(a["prefixlen"]) for i in record["interfaces"] for a in i["addresses"]]
action.apply(ctx, record)
Ipv6Strip.undo(ctx, latest[-1])  # as restore does: the record as last amended
print(json.dumps({"planned": planned, "amended": amended, "notes": ctx.notes}))
"""


def test_an_address_gone_between_preflight_and_cut_is_left_out_of_the_restore(netns: str, tmp_path: Path) -> None:
    a0, a1 = _setup(netns)
    state(netns, [a0, a1])  # waits for DAD
    gone = "2001:db8:2::1/64"
    out = json.loads(netlab.nsexec(netns, sys.executable, "-c", RACE, a0, str(tmp_path), gone).stdout)
    assert gone in out["planned"]  # prepare took the preflight's survey, from before the removal
    assert out["amended"] == [{"already_gone": f"{gone} on {a0}"}]  # journaled before the next change
    assert f"{a0}: {gone} was already gone; left out of the restore" in out["notes"]
    assert sorted(netlab.global_addresses(netns, a0)) == ["2001:db8:1::1/64", "2001:db8:3::1/64", "2001:db8:4::1/64"]


def test_interface_deleted_before_restore(netns: str, tmp_path: Path, state_dir: Path) -> None:
    a0, a1 = _setup(netns)
    before = state(netns, [a0, a1])
    b0, _ = veth(netns)
    ipn(netns, "addr", "add", "2001:db8:b::1/64", "dev", b0, "nodad")
    pb = netlab.playbook(tmp_path, f'[[steps]]\nid = "strip"\naction = "ipv6.strip"\ninterfaces = ["{a0}", "{b0}"]\n')
    assert lockdown(netns, state_dir, "run", str(pb)).returncode == 0
    ipn(netns, "link", "del", b0)

    restore = lockdown(netns, state_dir, "restore", "--last")
    assert restore.returncode == 6, restore.stdout + restore.stderr
    gone = f"interface {b0} is gone: cannot restore 2001:db8:b::1/64 or its sysctls"
    assert f"could not restore everything: {gone}" in restore.stdout
    assert "restore of " in restore.stderr and "is partial: undo failed for strip" in restore.stderr
    after = state(netns, [a0, a1])
    netlab.assert_same_state(before, after)  # b0/b1 were created after `before` was read

    # Running restore again restores nothing more and still says what is missing.
    again = lockdown(netns, state_dir, "restore", "--last")
    assert again.returncode == 6
    assert gone in again.stdout
    netlab.assert_same_state(before, state(netns, [a0, a1]))


def test_bad_parameters_are_named(tmp_path: Path, state_dir: Path) -> None:
    pb = netlab.playbook(tmp_path, '[[steps]]\nid = "strip"\naction = "ipv6.strip"\nkeep = ["nope"]\n')
    res = run_cli("run", str(pb), state_dir=state_dir)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"lockdown: error: {pb}: step 1 (strip): keep[0]: "
        "expected an address or CIDR like 2001:db8::1/128, got 'nope'"
    )


def test_unknown_interface_is_refused_before_anything_changes(netns: str, tmp_path: Path, state_dir: Path) -> None:
    veth(netns)
    pb = netlab.playbook(tmp_path, STRIP.format(dev="lkd-nonesuch"))
    res = lockdown(netns, state_dir, "run", str(pb))
    assert res.returncode == 2
    assert res.stderr.startswith(
        f"lockdown: error: {pb} step 1 (strip): interfaces: no interface named 'lkd-nonesuch' (have: lo, "
    )


NETLINK_PROBE = """
import json
from lockdown import netlink
print(json.dumps({
    "addresses": [a.as_dict() for a in netlink.dump_addresses(netlink.AF_INET6)],
    "routes": [r.as_dict() for r in netlink.dump_routes(netlink.AF_INET6, include_local=True)],
}))
"""


def test_netlink_dumps_agree_with_ip_json(netns: str) -> None:
    """lockdown.netlink reads what ``ip -j`` reads (flags above 0xff, lifetimes, tables)."""
    _setup(netns)
    netlab.wait_settled(netns)
    out = netlab.nsexec(netns, sys.executable, "-c", NETLINK_PROBE).stdout
    ours = json.loads(out)
    theirs = {
        (link["ifname"], a["local"], a["prefixlen"]): a for link in netlab.addresses(netns) for a in link["addr_info"]
    }
    assert len(ours["addresses"]) == len(theirs)
    for a in ours["addresses"]:
        ip = theirs[(a["ifname"], a["address"], a["prefixlen"])]
        assert a["scope_name"] == ip["scope"]
        for flag in ("nodad", "noprefixroute", "mngtmpaddr", "home", "tentative"):
            assert (flag in a["flag_names"]) == bool(ip.get(flag)), (flag, a, ip)
        assert abs(a["valid"] - ip["valid_life_time"]) <= 2
        assert abs(a["preferred"] - ip["preferred_life_time"]) <= 2
    theirs_routes = {
        (r["dst"], r.get("gateway"), r.get("dev"), r.get("table", "main"), r["metric"])
        for r in netlab.routes(netns)
    }
    table_names = {254: "main", 255: "local"}
    ours_routes = {
        (r["dst"].removesuffix("/128") if r["dst_len"] == 128 else r["dst"], r["gateway"], r["dev"],
         table_names.get(r["table"], str(r["table"])), r["metric"])
        for r in ours["routes"]
    }
    assert ours_routes == theirs_routes


# ------------------------------------------------------------ a host with IPv6 disabled


def _ipv6_disabled_netns(ns: str) -> tuple[str, str]:
    """disable_ipv6=1 for all and default, set inside the test's netns only (the host's own
    sysctls are never touched); the veth pair made afterwards inherits it."""
    for conf in ("all", "default"):
        netlab.nsexec(ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")
    a0, a1 = veth(ns)
    assert get_sysctl(ns, a0, "disable_ipv6") == "1"
    return a0, a1


def test_host_with_ipv6_disabled_has_nothing_to_strip_and_says_why(
    netns: str, tmp_path: Path, state_dir: Path
) -> None:
    a0, a1 = _ipv6_disabled_netns(netns)
    before = state(netns, [a0, a1])
    pb = netlab.playbook(tmp_path, '[[steps]]\nid = "strip"\naction = "ipv6.strip"\n')

    plan = lockdown(netns, state_dir, "run", str(pb), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "        -> ipv6_disabled: net.ipv6.conf.all.disable_ipv6=1" in plan.stdout.splitlines()

    run = lockdown(netns, state_dir, "run", str(pb), "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["status"] == "contained"
    assert doc["steps"][0]["state"] == "ok" and doc["steps"][0]["error"] is None
    assert doc["steps"][0]["notes"] == [
        "IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6=1): no interface can hold an IPv6 "
        "address, so there is nothing to strip and no IPv6 path into docker-proxy; nothing changed"
    ]
    netlab.assert_same_state(before, state(netns, [a0, a1]))
    restore = lockdown(netns, state_dir, "restore", "--last")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    netlab.assert_same_state(before, state(netns, [a0, a1]))


def test_named_interface_with_ipv6_disabled_is_left_as_it_is(netns: str, tmp_path: Path, state_dir: Path) -> None:
    a0, a1 = _ipv6_disabled_netns(netns)
    set_sysctl(netns, a0, "accept_ra", "2")  # what a strip would set to 0 on an interface with IPv6
    before = state(netns, [a0, a1])
    run = lockdown(netns, state_dir, "run", str(netlab.playbook(tmp_path, STRIP.format(dev=a0))), "--json")
    assert run.returncode == 0, run.stderr
    notes = json.loads(run.stdout)["steps"][0]["notes"]
    assert notes == [
        f"{a0}: IPv6 is disabled (net.ipv6.conf.{a0}.disable_ipv6=1): no IPv6 address to strip; left as it is"
    ]
    assert get_sysctl(netns, a0, "accept_ra") == "2"
    netlab.assert_same_state(before, state(netns, [a0, a1]))
