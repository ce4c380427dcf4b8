"""Crashes at every durable boundary, and at random moments: the promise is exact undo.

The CLI is killed from the test side (tests/crashlab.py), never through a
hook in lockdown. After every kill, ``restore --last`` must give back exactly
the state from before the run (sysctls read from /proc in the test's own
namespace, addresses and routes from ``ip -j``), exit 0, and ``status`` must
find the journal intact.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from tests import netlab
from tests.conftest import sh
from tests.crashlab import Zygote, boundaries, cli_then, lockdown_killed_at

KEYS = ("net.ipv4.ip_forward", "net.ipv4.icmp_echo_ignore_all")
PATHS = ["/proc/sys/" + key.replace(".", "/") for key in KEYS]


def sysctls(ns: str) -> dict[str, str]:
    """The namespace's sysctls, read from /proc in one process."""
    return dict(zip(KEYS, sh("ip", "netns", "exec", ns, "cat", *PATHS).stdout.split(), strict=True))


def sysctl_playbook(tmp: Path, before: dict[str, str]) -> Path:
    """One ``sysctl.set`` step per key, each flipping it."""
    steps = "".join(
        f'[[steps]]\nid = "s{i}"\naction = "sysctl.set"\nvalues = {{ "{key}" = "{"0" if value == "1" else "1"}" }}\n'
        for i, (key, value) in enumerate(before.items(), start=1)
    )
    path = tmp / "crash.toml"
    path.write_text(f'name = "crash"\n{steps}')
    return path


def incidents(state: Path) -> list[str]:
    d = state / "incidents"
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []


def restore_and_status(ns: str, state: Path, where: str, *, then: list[str] | None = None) -> dict[str, Any]:
    """``restore --last`` then ``status --json`` (and ``then``), the real CLI in one fresh process."""
    commands = [["restore", "--last"], ["@cat", *PATHS], ["status", "--json"]] + ([then] if then else [])
    restore, cat, status, *rest = cli_then(ns, state, *commands)
    assert restore["code"] == 0, f"{where}: restore --last exited {restore['code']}: {restore['stderr']}"
    assert status["code"] == 0, f"{where}: status exited {status['code']}: {status['stderr']}"
    for r in rest:
        assert r["code"] == 0, f"{where}: {then} exited {r['code']}: {r['stderr']}"
    doc: dict[str, Any] = json.loads(status["stdout"])
    doc["sysctls after restore"] = dict(zip(KEYS, cat["stdout"].split(), strict=True))
    return doc


INTACT: dict[str, object] = {"intact": True, "problem": None, "empty": False, "unreadable_lines": []}


def test_run_killed_at_every_boundary_is_restored_exactly(netns: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = sysctls(netns)
    pb = sysctl_playbook(tmp_path, before)
    assert [r["code"] for r in cli_then(netns, state, ["run", str(pb)], ["restore", "--last"])] == [0, 0]
    total = boundaries(netns, state, tmp_path, "run", str(pb))
    assert sysctls(netns) != before
    restore_and_status(netns, state, "clean run")
    assert sysctls(netns) == before
    assert total >= 20, f"only {total} boundaries counted: the harness no longer sees the journal"
    for at in range(1, total + 1):
        where = f"run killed before boundary {at} of {total}"
        known = set(incidents(state))
        r = lockdown_killed_at(netns, state, at, "run", str(pb))
        assert r.returncode == -signal.SIGKILL, f"{where}: exited {r.returncode}: {r.stderr}"
        new = sorted(set(incidents(state)) - known)
        assert len(new) <= 1, f"{where}: {new}"
        doc = restore_and_status(netns, state, where)
        assert doc["sysctls after restore"] == before, where
        if new:  # --last is the incident this run created, not an older one from the same second
            assert doc["incident_id"] == new[0], where
        assert {k: doc["journal"][k] for k in INTACT} == INTACT, f"{where}: {doc['journal']}"
        assert doc["containment_active"] is False, where


def test_restore_killed_at_every_boundary_can_run_again(netns: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = sysctls(netns)
    pb = sysctl_playbook(tmp_path, before)
    assert cli_then(netns, state, ["run", str(pb)])[0]["code"] == 0
    total = boundaries(netns, state, tmp_path, "restore", "--last")
    assert sysctls(netns) == before
    assert total >= 10, f"only {total} boundaries counted"
    assert cli_then(netns, state, ["run", str(pb)])[0]["code"] == 0
    for at in range(1, total + 1):
        where = f"restore killed before boundary {at} of {total}"
        assert sysctls(netns) != before, where
        r = lockdown_killed_at(netns, state, at, "restore", "--last")
        assert r.returncode == -signal.SIGKILL, f"{where}: exited {r.returncode}: {r.stderr}"
        last = at == total
        doc = restore_and_status(netns, state, where, then=None if last else ["run", str(pb)])
        # (the next round's run came after the restore, the reading of /proc and status)
        assert {k: doc["journal"][k] for k in INTACT} == INTACT, f"{where}: {doc['journal']}"
        assert doc["sysctls after restore"] == before, where
        assert doc["containment_active"] is False, where


STRESS_KEYS = (
    "net.ipv4.ip_forward",
    "net.ipv4.icmp_echo_ignore_all",
    "net.ipv6.conf.all.forwarding",
    "net.ipv4.icmp_echo_ignore_broadcasts",
)
STRESS_PATHS = ["/proc/sys/" + key.replace(".", "/") for key in STRESS_KEYS]


def stress_rng() -> tuple[random.Random, int]:
    """A seeded generator; LKD_STRESS_SEED replays a failure (the seed is in every message)."""
    seed = int(os.environ.get("LKD_STRESS_SEED") or time.time_ns() % 2**32)
    return random.Random(seed), seed


def test_stress_run_sigkill_at_random_restore_last(netns: str, tmp_path: Path) -> None:
    """100 rounds of run, SIGKILL at a random moment of its work, ``restore --last``, in one
    state dir: each restore must give back the state from before, whichever incident was newest."""
    rng, seed = stress_rng()
    cycles = int(os.environ.get("LKD_STRESS_CYCLES", "100"))
    state = tmp_path / "state"
    z = Zygote(netns, state, tmp_path)
    try:
        before = dict(zip(STRESS_KEYS, z.cat(*STRESS_PATHS).split(), strict=True))
        pb = sysctl_playbook(tmp_path, before)
        t0 = time.monotonic()
        assert z.run("run", str(pb))[0] == 0
        work = time.monotonic() - t0
        assert z.run("restore", "--last")[0] == 0
        assert z.cat(*STRESS_PATHS).split() == list(before.values())
        killed = changed = 0
        for cycle in range(1, cycles + 1):
            where = f"cycle {cycle} of {cycles} (LKD_STRESS_SEED={seed}, a run takes {work:.3f}s)"
            pid = z.start("run", str(pb))
            time.sleep(rng.uniform(0, work * 1.1))
            os.kill(pid, signal.SIGKILL)  # a child that already exited is a zombie until reaped: harmless
            code, log = z.reap(pid)
            assert code in (0, -signal.SIGKILL), f"{where}: run exited {code}: {log}"
            killed += code == -signal.SIGKILL
            changed += z.cat(*STRESS_PATHS).split() != list(before.values())
            code, log = z.run("restore", "--last")
            assert code == 0, f"{where}: restore --last exited {code}: {log}"
            assert z.cat(*STRESS_PATHS).split() == list(before.values()), f"{where}: not restored: {log}"
        code, log = z.run("incidents", "--json")
        assert code == 0, log
        listed = json.loads(log)["incidents"]
    finally:
        z.close()
    assert killed >= cycles // 3, f"only {killed} of {cycles} runs were killed (seed {seed})"
    assert changed >= cycles // 10, f"only {changed} kills left something to restore (seed {seed})"
    assert [i["incident_id"] for i in listed] == incidents(state)  # creation order is id order
    assert all(i["journal_intact"] and not i["containment_active"] for i in listed), listed


def test_stress_ipv6_strip_sigkill_at_random_restore_last(netns: str, tmp_path: Path) -> None:
    """A few rounds on ``ipv6.strip``: addresses, routes and SLAAC sysctls come back exactly."""
    from tests.test_ipv6_strip import STRIP, _setup

    rng, seed = stress_rng()
    a0, a1 = _setup(netns)
    before = netlab.state(netns, [a0, a1])
    pb = netlab.playbook(tmp_path, STRIP.format(dev=a0))
    state = tmp_path / "state"
    z = Zygote(netns, state, tmp_path)
    try:
        t0 = time.monotonic()
        assert z.run("run", str(pb))[0] == 0
        work = time.monotonic() - t0
        assert z.run("restore", "--last")[0] == 0
        netlab.assert_same_state(before, netlab.state(netns, [a0, a1]))
        for cycle in range(1, 4):
            where = f"cycle {cycle} (LKD_STRESS_SEED={seed}, a run takes {work:.3f}s)"
            pid = z.start("run", str(pb))
            time.sleep(rng.uniform(0, work))
            os.kill(pid, signal.SIGKILL)
            code, log = z.reap(pid)
            assert code in (0, -signal.SIGKILL), f"{where}: run exited {code}: {log}"
            code, log = z.run("restore", "--last")
            assert code == 0, f"{where}: restore --last exited {code}: {log}"
            netlab.assert_same_state(before, netlab.state(netns, [a0, a1]))
    finally:
        z.close()
