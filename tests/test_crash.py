"""Crashes at every durable boundary, and at random moments: the promise is exact undo.

The CLI is killed from the test side (tests/crashlab.py), never through a
hook in lockdown; each command runs in a process of its own, forked from a
zygote that imported the CLI once. After every kill, ``restore --last`` must give back exactly
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
from tests.crashlab import Zygote

KEYS = ("net.ipv4.ip_forward", "net.ipv4.icmp_echo_ignore_all")
PATHS = ["/proc/sys/" + key.replace(".", "/") for key in KEYS]


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


def restore_and_status(z: Zygote, where: str) -> dict[str, Any]:
    """``restore --last``, the sysctls from /proc, then ``status --json``: the real CLI, fresh processes."""
    code, out, err = z.run("restore", "--last")
    assert code == 0, f"{where}: restore --last exited {code}: {out}{err}"
    values = dict(zip(KEYS, z.cat(*PATHS).split(), strict=True))
    code, out, err = z.run("status", "--json")
    assert code == 0, f"{where}: status exited {code}: {err}"
    doc: dict[str, Any] = json.loads(out)
    doc["sysctls after restore"] = values
    return doc


INTACT: dict[str, object] = {"intact": True, "problem": None, "empty": False, "unreadable_lines": []}


def test_run_killed_at_every_boundary_is_restored_exactly(netns: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    z = Zygote(netns, state, tmp_path)
    try:
        before = dict(zip(KEYS, z.cat(*PATHS).split(), strict=True))
        pb = sysctl_playbook(tmp_path, before)
        assert z.run("run", str(pb))[0] == 0  # the state dir exists before counting: same boundaries each time
        assert restore_and_status(z, "first run")["sysctls after restore"] == before
        total = z.boundaries("run", str(pb))
        assert total >= 20, f"only {total} boundaries counted: the harness no longer sees the journal"
        assert restore_and_status(z, "counted run")["sysctls after restore"] == before
        for at in range(1, total + 1):
            where = f"run killed before boundary {at} of {total}"
            known = set(incidents(state))
            code, _, err = z.run("run", str(pb), crash_at=at)
            assert code == -signal.SIGKILL, f"{where}: exited {code}: {err}"
            new = sorted(set(incidents(state)) - known)
            assert len(new) <= 1, f"{where}: {new}"
            doc = restore_and_status(z, where)
            assert doc["sysctls after restore"] == before, where
            if new:  # --last is the incident this run created, not an older one from the same second
                assert doc["incident_id"] == new[0], where
            assert {k: doc["journal"][k] for k in INTACT} == INTACT, f"{where}: {doc['journal']}"
            assert doc["containment_active"] is False, where
    finally:
        z.close()


def test_restore_killed_at_every_boundary_can_run_again(netns: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    z = Zygote(netns, state, tmp_path)
    try:
        before = dict(zip(KEYS, z.cat(*PATHS).split(), strict=True))
        pb = sysctl_playbook(tmp_path, before)
        assert z.run("run", str(pb))[0] == 0
        total = z.boundaries("restore", "--last")
        assert z.cat(*PATHS).split() == list(before.values())
        assert total >= 10, f"only {total} boundaries counted"
        for at in range(1, total + 1):
            where = f"restore killed before boundary {at} of {total}"
            assert z.run("run", str(pb))[0] == 0
            assert z.cat(*PATHS).split() != list(before.values())
            code, _, err = z.run("restore", "--last", crash_at=at)
            assert code == -signal.SIGKILL, f"{where}: exited {code}: {err}"
            doc = restore_and_status(z, where)
            assert doc["sysctls after restore"] == before, where
            assert {k: doc["journal"][k] for k in INTACT} == INTACT, f"{where}: {doc['journal']}"
            assert doc["containment_active"] is False, where
    finally:
        z.close()


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
            code, _, err = z.reap(pid)
            assert code in (0, -signal.SIGKILL), f"{where}: run exited {code}: {err}"
            killed += code == -signal.SIGKILL
            changed += z.cat(*STRESS_PATHS).split() != list(before.values())
            code, out, err = z.run("restore", "--last")
            assert code == 0, f"{where}: restore --last exited {code}: {err}"
            assert z.cat(*STRESS_PATHS).split() == list(before.values()), f"{where}: not restored: {out}{err}"
        code, out, err = z.run("incidents", "--json")
        assert code == 0, err
        listed = json.loads(out)["incidents"]
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
            code, _, err = z.reap(pid)
            assert code in (0, -signal.SIGKILL), f"{where}: run exited {code}: {err}"
            code, _, err = z.run("restore", "--last")
            assert code == 0, f"{where}: restore --last exited {code}: {err}"
            netlab.assert_same_state(before, netlab.state(netns, [a0, a1]))
    finally:
        z.close()
