"""The engine against the real kernel: sysctls inside a network namespace made by the test.

Every test compares the namespace's state before and after; none trusts a
return value alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import AS_NOBODY, run_cli, sh

KEYS = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.icmp_echo_ignore_all"]


def read(ns: str) -> dict[str, str]:
    out = {}
    for key in KEYS:
        path = "/proc/sys/" + key.replace(".", "/")
        out[key] = sh("ip", "netns", "exec", ns, "cat", path).stdout.strip()
    return out


def flipped(values: dict[str, str]) -> dict[str, str]:
    return {k: "0" if v == "1" else "1" for k, v in values.items()}


def playbook(tmp_path: Path, targets: dict[str, str], extra: str = "") -> Path:
    steps = ""
    for i, (key, value) in enumerate(targets.items(), start=1):
        steps += f'[[steps]]\nid = "s{i}"\naction = "sysctl.set"\nvalues = {{ "{key}" = "{value}" }}\n\n'
    path = tmp_path / "pb.toml"
    path.write_text(f'name = "engine-test"\n\n[[steps]]\nid = "host"\naction = "snapshot.host"\n\n{steps}{extra}')
    return path


def incident_ids(state: Path) -> list[str]:
    d = state / "incidents"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def status(state: Path, incident: str) -> dict[str, object]:
    r = run_cli("status", incident, "--json", state_dir=state)
    assert r.returncode == 0, r.stderr
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


def test_run_then_restore_gives_the_state_before(netns: str, tmp_path: Path, state_dir: Path) -> None:
    before = read(netns)
    target = flipped(before)
    r = run_cli("run", str(playbook(tmp_path, target)), "--json", netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "contained"
    assert [s["id"] for s in doc["steps"]] == ["host", "s1", "s2", "s3"]
    assert {s["state"] for s in doc["steps"]} == {"ok"}
    assert all(isinstance(s["seconds"], float) for s in doc["steps"])
    assert read(netns) == target
    incident = doc["incident_id"]
    st_doc = status(state_dir, incident)
    assert st_doc["containment_active"] is True
    assert st_doc["journal"]["intact"] is True  # type: ignore[index]
    host = json.loads((state_dir / "incidents" / incident / "evidence" / "host.json").read_text())
    assert host["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()

    r = run_cli("restore", incident, netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert read(netns) == before
    assert status(state_dir, incident)["containment_active"] is False

    r = run_cli("restore", incident, netns=netns, state_dir=state_dir)
    assert r.returncode == 0
    assert "nothing to undo" in r.stdout
    assert read(netns) == before


def test_modes_of_incident_files(netns: str, tmp_path: Path, state_dir: Path) -> None:
    r = run_cli("run", str(playbook(tmp_path, flipped(read(netns)))), netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    (incident,) = incident_ids(state_dir)
    base = state_dir / "incidents" / incident
    for path in [base, base / "evidence"]:
        assert path.stat().st_mode & 0o777 == 0o700, path
    for path in [base / "journal.jsonl", base / "manifest.json", base / "evidence" / "host.json"]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    run_cli("restore", incident, netns=netns, state_dir=state_dir)


def test_restore_after_manual_revert(netns: str, tmp_path: Path, state_dir: Path) -> None:
    before = read(netns)
    r = run_cli("run", str(playbook(tmp_path, flipped(before))), netns=netns, state_dir=state_dir)
    assert r.returncode == 0
    for key, value in before.items():
        sh("ip", "netns", "exec", netns, "sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}")
    (incident,) = incident_ids(state_dir)
    r = run_cli("restore", incident, "--json", netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "restored"
    notes = [n for s in doc["steps"] for n in s["notes"]]
    assert sorted(notes) == sorted(f"{k} already {v}" for k, v in before.items())
    assert read(netns) == before


def test_torn_last_line_is_repaired_and_restorable(netns: str, tmp_path: Path, state_dir: Path) -> None:
    before = read(netns)
    r = run_cli("run", str(playbook(tmp_path, flipped(before))), netns=netns, state_dir=state_dir)
    assert r.returncode == 0
    (incident,) = incident_ids(state_dir)
    journal = state_dir / "incidents" / incident / "journal.jsonl"
    with open(journal, "ab") as fh:
        fh.write(b'{"seq": 11, "phase": "inte')
    doc = status(state_dir, incident)
    assert doc["journal"]["intact"] is True  # type: ignore[index]
    assert "incomplete line" in str(doc["journal"]["problem"])  # type: ignore[index]
    r = run_cli("restore", incident, netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert read(netns) == before
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    repair = [e for e in entries if e["phase"] == "repair"]
    assert len(repair) == 1 and repair[0]["discarded_text"] == '{"seq": 11, "phase": "inte'
    assert status(state_dir, incident)["journal"]["problem"] is None  # type: ignore[index]


EDITED = "a line was edited, inserted or removed"


def _tamper_edit(journal: Path) -> None:
    lines = journal.read_text().splitlines()
    entry = json.loads(lines[3])
    entry["time"] = "2000-01-01T00:00:00.000000Z"
    lines[3] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    journal.write_text("\n".join(lines) + "\n")


def _tamper_remove_middle(journal: Path) -> None:
    lines = journal.read_text().splitlines()
    del lines[4]
    journal.write_text("\n".join(lines) + "\n")


def _tamper_remove_last(journal: Path) -> None:
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-2]) + "\n")


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_tamper_edit, "journal line 5 (seq 5) does not chain to the line before it: " + EDITED),
        (_tamper_remove_middle, "journal line 5 (seq 6) does not chain to the line before it: " + EDITED),
        (_tamper_remove_last, "journal head does not match any line: the journal was truncated or rewritten"),
    ],
)
def test_tampered_journal_is_detected(netns: str, tmp_path: Path, state_dir: Path, tamper: object,
                                      problem: str) -> None:
    before = read(netns)
    r = run_cli("run", str(playbook(tmp_path, flipped(before))), netns=netns, state_dir=state_dir)
    assert r.returncode == 0
    (incident,) = incident_ids(state_dir)
    tamper(state_dir / "incidents" / incident / "journal.jsonl")  # type: ignore[operator]
    r = run_cli("status", incident, "--json", state_dir=state_dir)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == f"lockdown: error: incident {incident} is damaged: journal: {problem}"
    doc = json.loads(r.stdout)
    assert doc["journal"] == {
        "intact": False, "problem": problem, "lines": doc["journal"]["lines"], "empty": False, "unreadable_lines": [],
    }
    r = run_cli("restore", incident, netns=netns, state_dir=state_dir)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        f"lockdown: error: incident {incident}: {problem}; "
        "refusing to restore from a journal that may have been altered"
    )
    assert read(netns) != before, "a refused restore changes nothing"
    r = run_cli("restore", incident, "--force", netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert read(netns) == before


HOLD_LOCK = """
import sys, time
from pathlib import Path
from lockdown.engine.lock import StateLock
lock = StateLock(Path(sys.argv[1]), "run").acquire()
lock.update("20261122T234500Z-relay-incident-3f2a")
print("locked", flush=True)
time.sleep(30)
"""


def test_second_run_or_restore_is_busy(netns: str, tmp_path: Path, state_dir: Path) -> None:
    before = read(netns)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(state_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        r = run_cli("run", str(playbook(tmp_path, flipped(before))), netns=netns, state_dir=state_dir)
        assert r.returncode == 3
        assert r.stderr.splitlines()[0] == (
            f"lockdown: error: run of incident 20261122T234500Z-relay-incident-3f2a is in progress "
            f"(pid {holder.pid}) in {state_dir}"
        )
        assert read(netns) == before
        assert incident_ids(state_dir) == []
    finally:
        holder.kill()
        holder.wait()
    r = run_cli("run", str(playbook(tmp_path, flipped(before))), netns=netns, state_dir=state_dir)
    assert r.returncode == 0, "the lock is released when its holder dies"
    (incident,) = incident_ids(state_dir)
    run_cli("restore", incident, netns=netns, state_dir=state_dir)
    assert read(netns) == before


def test_sigterm_finishes_the_current_step_and_stops(netns: str, tmp_path: Path, state_dir: Path) -> None:
    before = read(netns)
    target = flipped(before)
    keys = list(target)
    pb = tmp_path / "slow.toml"
    pb.write_text(
        f'[[steps]]\nid = "a"\naction = "sysctl.set"\nvalues = {{ "{keys[0]}" = "{target[keys[0]]}" }}\n'
        '[[steps]]\nid = "pause"\naction = "wait"\nseconds = 1.5\n'
        f'[[steps]]\nid = "b"\naction = "sysctl.set"\nvalues = {{ "{keys[1]}" = "{target[keys[1]]}" }}\n'
    )
    env = dict(os.environ, LOCKDOWN_STATE_DIR=str(state_dir))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "lockdown", "run", str(pb), "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ids = incident_ids(state_dir)
        journal = state_dir / "incidents" / ids[0] / "journal.jsonl" if ids else None
        if journal and journal.exists() and '"step":"pause"' in journal.read_text():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "SIGTERM: stopping after the current step" in err
    doc = json.loads(out)
    assert doc["status"] == "interrupted"
    assert [(s["id"], s["state"]) for s in doc["steps"]] == [("a", "ok"), ("pause", "ok")]
    now = read(netns)
    assert now[keys[0]] == target[keys[0]] and now[keys[1]] == before[keys[1]]
    r = run_cli("restore", "--last", netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert read(netns) == before


def test_step_failure_aborts_and_stays_restorable(netns: str, tmp_path: Path, state_dir: Path) -> None:
    before = read(netns)
    target = flipped(before)
    keys = list(target)
    pb = tmp_path / "fail.toml"
    pb.write_text(
        f'[[steps]]\nid = "a"\naction = "sysctl.set"\nvalues = {{ "{keys[0]}" = "{target[keys[0]]}" }}\n'
        '[[steps]]\nid = "bad"\naction = "sysctl.set"\nvalues = { "net.ipv4.conf.all.rp_filter" = "abc" }\n'
        f'[[steps]]\nid = "b"\naction = "sysctl.set"\nvalues = {{ "{keys[1]}" = "{target[keys[1]]}" }}\n'
    )
    r = run_cli("run", str(pb), "--json", netns=netns, state_dir=state_dir)
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["status"] == "failed"
    assert [(s["id"], s["state"]) for s in doc["steps"]] == [("a", "ok"), ("bad", "failed")]
    assert doc["steps"][1]["error"] == "cannot set sysctl net.ipv4.conf.all.rp_filter to 'abc': Invalid argument"
    assert read(netns)[keys[0]] == target[keys[0]]
    r = run_cli("restore", doc["incident_id"], netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert read(netns) == before




def test_missing_privileges_is_exit_4_and_changes_nothing(netns: str) -> None:
    import shutil
    import tempfile

    before = read(netns)
    tmp_path = Path(tempfile.mkdtemp(prefix="lkd-privs-", dir="/tmp"))
    try:
        _check_privileges(netns, tmp_path, before)
    finally:
        shutil.rmtree(tmp_path)


def _check_privileges(netns: str, tmp_path: Path, before: dict[str, str]) -> None:
    state = tmp_path / "st"
    state.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chown(state, 65534, 65534)
    pb = playbook(tmp_path, flipped(before))
    os.chmod(pb, 0o644)
    r = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", AS_NOBODY, "run", str(pb), "--state-dir", str(state)],
        capture_output=True, text=True, cwd=str(Path(__file__).parent.parent),
    )
    assert r.returncode == 4, r.stderr
    assert r.stderr.splitlines()[0] == f"lockdown: error: {pb} step 2 (s1) (sysctl.set) needs root"
    assert read(netns) == before
    assert list(state.iterdir()) == []
    # --dry-run still shows the plan without the privileges, and says the targets were not resolved.
    r = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", AS_NOBODY, "run", str(pb), "--dry-run", "--json",
         "--state-dir", str(state)],
        capture_output=True, text=True, cwd=str(Path(__file__).parent.parent),
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "dry-run" and len(doc["plan"]) == 4
    assert doc["live_check"] == (
        f"targets not resolved: {pb} step 2 (s1) (sysctl.set) needs root (run it with sudo, as root)"
    )
    assert read(netns) == before
    assert list(state.iterdir()) == []


def test_dry_run_with_docker_down_still_shows_the_plan(tmp_path: Path, state_dir: Path, need_root: None) -> None:
    """"What would this do?" is asked exactly when Docker misbehaves: the plan comes, and says why
    the targets were not resolved; nothing is written."""
    r = run_cli(
        "run", "relay-incident", "--dry-run", "--json", "--var", "interfaces=lkd-none",
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}, state_dir=state_dir,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "dry-run" and "docker.pause" in [e["action"] for e in doc["plan"]]
    assert doc["live_check"].startswith("targets not resolved: ") and "Docker" in doc["live_check"]
    assert not state_dir.exists() or list(state_dir.iterdir()) == []
