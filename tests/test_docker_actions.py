"""The Docker actions against a real Docker Engine, through the real CLI.

Each test creates its own containers (``lkd-xxxxxx``, label ``lkd.test``)
from the local images, removes them in ``finally`` even on failure, and
compares real state (``docker inspect`` State, ``postqueue -j``, evidence
bytes against ``docker logs``) before and after. ``auto`` tests narrow the
search with a per-test ``label`` so that other people's containers that
publish port 25 on this host are never candidates; the one test without the
label only checks a refusal that cannot change anything.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from lockdown.actions.postfix_hold import POSTCONF_PARAMS
from tests import netlab
from tests.bridge import mynetworks
from tests.conftest import run_cli
from tests.dockerlab import (
    BUSYBOX,
    STOP_START_CHANGES,
    TEST_LABEL,
    Lab,
    host_port,
    incident_dir,
    journal,
    lab,
    playbook,
    postqueue,
    run_cli_measured,
    send_spam,
    sha256_of_command,
    sha256_of_file,
    state,
    status,
    wait_queue,
)

pytestmark = pytest.mark.docker

SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; echo started; echo to-stderr >&2; while :; do sleep 1; done"]


@pytest.fixture
def dlab(docker_engine: Any) -> Iterator[Lab]:
    with lab(docker_engine) as the_lab:
        yield the_lab


def run_ok(*args: str, state_dir: Path) -> dict[str, Any]:
    r = run_cli(*args, "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def error_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return r.stderr.strip().splitlines()


# ------------------------------------------------------------------ pause / stop


def test_pause_then_restore_gives_the_same_state(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    # No other step keeps the path closed, so restore's gate cannot probe a paused container: the tests of
    # exact restore pass --reopen-anyway (the gate itself: tests/test_gate.py).
    c = dlab.run(BUSYBOX, SLEEPER, publish_smtp=True)
    before = state(c)
    pb = playbook(tmp_path, {"id": "pause", "action": "docker.pause", "container": c.name})
    doc = run_ok("run", str(pb), state_dir=state_dir)
    assert doc["status"] == "contained"
    assert status(c) == "paused"
    notes = doc["steps"][0]["notes"]
    assert notes[0] == f"{c.name}: running -> paused (restart policy no)"
    assert notes[1].startswith(f"docker-proxy on the host keeps accepting TCP on 127.0.0.1:{host_port(c)}->25/tcp")
    assert "ipv6.strip" in notes[1]
    intent = next(e for e in journal(state_dir, doc["incident_id"]) if e["phase"] == "intent")
    assert intent["resolved"] == {"containers": [c.name], "container_ids": [c.id]}
    assert intent["undo"]["containers"][0]["status"] == "running"
    assert intent["undo"]["containers"][0]["restart_policy"]["Name"] in ("", "no")

    restored = run_ok("restore", doc["incident_id"], "--reopen-anyway", state_dir=state_dir)
    assert restored["status"] == "restored"
    # Pause/unpause starts no new process: the whole State comes back, nothing excluded.
    assert state(c) == before
    again = run_ok("restore", doc["incident_id"], state_dir=state_dir)
    assert again["status"] == "nothing-to-do"
    assert state(c) == before


def test_already_paused_container_stays_paused(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.run(BUSYBOX, SLEEPER)
    c.pause()
    before = state(c)
    pb = playbook(tmp_path, {"action": "docker.pause", "container": c.name})
    doc = run_ok("run", str(pb), state_dir=state_dir)
    assert doc["steps"][0]["notes"] == [f"{c.name} already paused: left as it is, and restore will leave it so"]
    restored = run_ok("restore", doc["incident_id"], "--reopen-anyway", state_dir=state_dir)
    assert restored["steps"][0]["notes"] == [f"{c.name} was paused before the run: left as it is"]
    assert state(c) == before


def test_stop_then_restore_starts_it_again(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.run(BUSYBOX, SLEEPER, restart_policy={"Name": "unless-stopped"})
    before = state(c)
    pb = playbook(tmp_path, {"action": "docker.stop", "container": c.name, "timeout": 5})
    doc = run_ok("run", str(pb), state_dir=state_dir)
    stopped = state(c)
    assert stopped["Status"] == "exited" and stopped["ExitCode"] == 0  # the trap ran: SIGTERM, not SIGKILL
    run_ok("restore", doc["incident_id"], "--reopen-anyway", state_dir=state_dir)
    after = state(c)
    # A stop/start round trip runs a new process: only its pid and times may differ.
    assert after["Pid"] != before["Pid"] and after["StartedAt"] > before["StartedAt"]
    for key in STOP_START_CHANGES:
        before.pop(key), after.pop(key)
    assert after == before
    again = run_ok("restore", doc["incident_id"], state_dir=state_dir)
    assert again["status"] == "nothing-to-do"


def test_all_and_service_targets(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    a = dlab.run(BUSYBOX, SLEEPER, publish_smtp=True)
    b = dlab.run(BUSYBOX, SLEEPER, publish_smtp=True)
    service = dlab.run(BUSYBOX, SLEEPER, labels={"com.docker.compose.service": f"smtp-{dlab.owner}"})
    before = {c.name: state(c) for c in (a, b, service)}
    label = f"{TEST_LABEL}={dlab.owner}"
    pb = playbook(
        tmp_path,
        {"id": "both", "action": "docker.pause", "container": "all", "label": label},
        {"id": "svc", "action": "docker.pause", "container": f"service:smtp-{dlab.owner}"},
    )
    doc = run_ok("run", str(pb), state_dir=state_dir)
    assert {status(c) for c in (a, b, service)} == {"paused"}
    view = run_ok("status", doc["incident_id"], state_dir=state_dir)
    params = {s["id"]: s["params"] for s in view["steps"]}
    assert sorted(params["both"]["containers"]) == sorted([a.name, b.name])
    assert params["svc"]["containers"] == [service.name]
    run_ok("restore", doc["incident_id"], "--reopen-anyway", state_dir=state_dir)
    assert {c.name: state(c) for c in (a, b, service)} == before


# ------------------------------------------------------------------ the queue


def hold_playbook(tmp_path: Path, name: str) -> Path:
    return playbook(
        tmp_path,
        {"id": "hold", "action": "postfix.hold_queue", "container": name},
        {"id": "pause", "action": "docker.pause", "container": name},
    )


def test_hold_then_release_queue(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.postfix()
    send_spam(host_port(c), 1, tag="held-by-admin")
    (admin_held,) = wait_queue(c, 1)
    assert c.exec_run(["postsuper", "-h", admin_held]).exit_code == 0  # on hold before lockdown came
    send_spam(host_port(c), 3)
    queue = wait_queue(c, 4)
    spam = sorted(q for q in queue if q != admin_held)

    doc = run_ok("run", str(hold_playbook(tmp_path, c.name)), state_dir=state_dir)
    assert status(c) == "paused"
    inc = incident_dir(state_dir, doc["incident_id"]) / "evidence" / "queue" / c.name
    listed = [json.loads(line) for line in (inc / "postqueue.jsonl").read_text().splitlines()]
    assert sorted(item["queue_id"] for item in listed) == sorted(queue)
    assert {item["queue_id"]: item["queue_name"] for item in listed} == {
        **dict.fromkeys(spam, "deferred"), admin_held: "hold"}  # where each message was before the hold
    for qid in spam:  # copied right after the hold, in the same exec: from the hold queue
        text = (inc / f"{qid}.txt").read_text()
        assert text.startswith(f"*** ENVELOPE RECORDS hold/{qid} ***")
        assert "BUY NOW spam" in text and text.rstrip().endswith(f"*** MESSAGE FILE END hold/{qid} ***")
    postconf = (inc / "postconf.txt").read_text().splitlines()  # the report's local domains
    assert f"mynetworks = {mynetworks()}" in postconf  # what dlab.postfix() configured
    assert sorted(line.split(" =")[0] for line in postconf) == sorted(POSTCONF_PARAMS)
    intent = next(e for e in journal(state_dir, doc["incident_id"]) if e["phase"] == "intent")
    assert intent["undo"]["containers"][0]["held"] == spam
    assert intent["undo"]["containers"][0]["already_held"] == [admin_held]

    # Restore without the decision: unpaused, but the spam stays on hold and is listed.
    r = run_cli("restore", doc["incident_id"], "--reopen-anyway", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert status(c) == "running"
    assert postqueue(c) == dict.fromkeys(queue, "hold")
    assert (
        f"hold (postfix.hold_queue) is held: 3 message(s) held in {c.name}. "
        f"`lockdown restore {doc['incident_id']} --release-queue` puts exactly these back in the queue"
    ) in r.stdout
    assert f"`lockdown queue purge {doc['incident_id']}` deletes them" in r.stdout
    view = run_ok("status", doc["incident_id"], state_dir=state_dir)
    assert view["held"] == [{"id": "hold", "action": "postfix.hold_queue", "decision": "release-queue"}]
    again = run_ok("restore", doc["incident_id"], state_dir=state_dir)  # --json, run again: still held
    assert [s["state"] for s in again["steps"]] == ["held"]
    assert again["held"] == [
        {
            "id": "hold",
            "action": "postfix.hold_queue",
            "decision": "release-queue",
            "summary": f"3 message(s) held in {c.name}. `lockdown restore {doc['incident_id']} --release-queue` "
            "puts exactly these back in the queue for delivery; "
            f"`lockdown queue purge {doc['incident_id']}` deletes them (copies are in evidence/queue/)",
        }
    ]
    assert postqueue(c) == dict.fromkeys(queue, "hold")

    released = run_ok("restore", doc["incident_id"], "--release-queue", state_dir=state_dir)
    assert [s["state"] for s in released["steps"]] == ["undone"]
    after = postqueue(c)
    assert {after[q] for q in spam} <= {"deferred", "active", "incoming"}  # back in the queue
    assert after[admin_held] == "hold"  # exactly the recorded ids, not the admin's
    assert run_ok("restore", doc["incident_id"], "--release-queue", state_dir=state_dir)["status"] == "nothing-to-do"


def test_hold_after_the_pause_resumes_the_container_for_the_hold_and_pauses_it_again(
    dlab: Lab, tmp_path: Path, state_dir: Path
) -> None:
    """relay-incident's order (issue 17.5): pause first, hold later with resume_paused."""
    c = dlab.postfix()
    send_spam(host_port(c), 2)
    spam = sorted(wait_queue(c, 2))
    pb = playbook(
        tmp_path,
        {"id": "pause", "action": "docker.pause", "container": c.name},
        {"id": "hold", "action": "postfix.hold_queue", "container": c.name, "resume_paused": True},
    )
    doc = run_ok("run", str(pb), state_dir=state_dir)
    assert doc["status"] == "contained", doc
    assert status(c) == "paused"
    notes = doc["steps"][1]["notes"]
    assert notes[1].endswith("; 2 message(s) held by this step")
    assert notes[2].startswith(f"{c.name} was paused: resumed for the hold, paused again after ")
    entries = journal(state_dir, doc["incident_id"])
    intent = next(e for e in entries if e["phase"] == "intent" and e["step"] == "hold")
    assert intent["undo"]["containers"][0] == {
        "id": c.id, "name": c.name, "held": [], "already_held": [], "resume": True,
    }
    update = next(e for e in entries if e["phase"] == "intent-update" and e["step"] == "hold")
    assert update["undo"]["containers"][0]["held"] == spam  # journaled before postsuper -h
    assert postqueue_paused(c) == dict.fromkeys(spam, "hold")
    # The pause is undone first, so the release can exec.
    released = run_ok("restore", doc["incident_id"], "--release-queue", "--reopen-anyway", state_dir=state_dir)
    assert [(s["id"], s["state"]) for s in released["steps"]] == [("pause", "undone"), ("hold", "undone")]
    assert status(c) == "running"
    assert set(postqueue(c).values()) <= {"deferred", "active", "incoming"}


def test_queue_purge_deletes_exactly_the_held_ids(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.postfix()
    send_spam(host_port(c), 1, tag="held-by-admin")
    (admin_held,) = wait_queue(c, 1)
    c.exec_run(["postsuper", "-h", admin_held])
    send_spam(host_port(c), 2)
    spam = sorted(q for q in wait_queue(c, 3) if q != admin_held)
    pb = playbook(tmp_path, {"id": "hold", "action": "postfix.hold_queue", "container": c.name})
    doc = run_ok("run", str(pb), state_dir=state_dir)
    incident = doc["incident_id"]

    shown = run_ok("queue", "show", incident, state_dir=state_dir)
    assert shown["steps"][0]["containers"][0]["live"] == dict.fromkeys(spam, "hold")

    purged = run_ok("queue", "purge", incident, state_dir=state_dir)
    assert purged["steps"][0]["containers"][0]["deleted"] == spam
    assert postqueue(c) == {admin_held: "hold"}
    update = [e for e in journal(state_dir, incident) if e["phase"] == "intent-update"]
    assert update[-1]["reason"] == "queue purge" and update[-1]["deleting"] == spam
    assert update[-1]["undo"]["containers"][0]["purged"] == spam

    r = run_cli("restore", incident, "--release-queue", "--reopen-anyway", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert f"{c.name}: 2 message(s) were deleted by `lockdown queue purge`" in r.stdout
    assert postqueue(c) == {admin_held: "hold"}


def test_hold_on_a_paused_container_says_why(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.postfix()
    c.pause()
    pb = playbook(tmp_path, {"id": "hold", "action": "postfix.hold_queue", "container": c.name})
    r = run_cli("run", str(pb), "--json", state_dir=state_dir)
    assert r.returncode == 1, r.stderr
    step = json.loads(r.stdout)["steps"][0]
    assert step["error"] == (
        f"container {c.name} is paused: Docker refuses exec in a paused container (HTTP 409 Conflict), "
        "so its queue cannot be read or changed (hold the queue before pausing (put postfix.hold_queue "
        "before docker.pause, or after it with resume_paused = true once another step closed the outside path), "
        "or unpause it first (`lockdown restore` of the pause, or `docker unpause`))"
    )
    failed = [e for e in journal(state_dir, json.loads(r.stdout)["incident_id"]) if e["phase"] == "failed"]
    assert failed[0]["before_intent"] is True
    assert status(c) == "paused"


def test_hold_without_postfix_fails_the_step_and_the_playbook_decides(
    dlab: Lab, tmp_path: Path, state_dir: Path
) -> None:
    c = dlab.run(BUSYBOX, SLEEPER)
    pb = playbook(
        tmp_path,
        {"id": "hold", "action": "postfix.hold_queue", "container": c.name, "on_error": "continue"},
        {"id": "pause", "action": "docker.pause", "container": c.name},
    )
    r = run_cli("run", str(pb), "--json", state_dir=state_dir)
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["status"] == "partial"
    assert [s["state"] for s in doc["steps"]] == ["failed", "ok"]
    assert doc["steps"][0]["error"].startswith(f"no Postfix in container {c.name}: postqueue not found")
    assert status(c) == "paused"
    run_ok("restore", doc["incident_id"], "--reopen-anyway", state_dir=state_dir)
    assert status(c) == "running"


# ------------------------------------------------------------------ logs and files


def test_logs_of_a_paused_container_match_docker_logs(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.run(BUSYBOX, ["sh", "-c", "for i in $(seq 1 500); do echo out $i; echo err $i >&2; done; sleep 600"])
    deadline = time.monotonic() + 30
    while b"err 500" not in c.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    c.pause()
    pb = playbook(tmp_path, {"id": "log", "action": "logs.container", "container": c.name})
    doc = run_ok("run", str(pb), state_dir=state_dir)
    saved = incident_dir(state_dir, doc["incident_id"]) / "evidence" / "logs" / f"{c.name}.log"
    size, digest = sha256_of_command(["docker", "logs", "-t", c.name])
    assert saved.stat().st_size == size and sha256_of_file(saved) == digest
    text = saved.read_text()
    assert "Z out 1\n" in text and "Z err 500\n" in text
    manifest = json.loads((incident_dir(state_dir, doc["incident_id"]) / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == f"evidence/logs/{c.name}.log")
    assert entry["sha256"] == digest and entry["size"] == size
    # since: a window that starts after every line was written holds nothing.
    later = playbook(tmp_path, {"action": "logs.container", "container": c.name, "since": str(int(time.time()) + 5)})
    doc2 = run_ok("run", str(later), state_dir=state_dir)
    assert (incident_dir(state_dir, doc2["incident_id"]) / "evidence" / "logs" / f"{c.name}.log").read_bytes() == b""


def _docker_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_logs_since_takes_rfc3339_and_durations(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.run(BUSYBOX, ["sh", "-c", "echo early; sleep 2; echo late >&2; sleep 600"])
    deadline = time.monotonic() + 30
    while b"late" not in c.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    stamps = dict(reversed(line.split(" ", 1)) for line in c.logs(timestamps=True).decode().splitlines())
    middle = (_docker_time(stamps["early"]) + _docker_time(stamps["late"])) / 2
    # The same instant written as docker-mailserver v14 would (RFC 3339), in another time zone.
    rfc3339 = datetime.fromtimestamp(middle, timezone(timedelta(hours=2))).isoformat()
    assert rfc3339.endswith("+02:00")
    pb = playbook(
        tmp_path,
        {"id": "late", "action": "logs.container", "container": c.name, "since": rfc3339},
        {"id": "hour", "action": "logs.container", "container": c.name, "since": "1h"},
        {"id": "plain", "action": "logs.container", "container": c.name, "timestamps": False},
    )
    doc = run_ok("run", str(pb), state_dir=state_dir)
    inc = incident_dir(state_dir, doc["incident_id"])
    # The three steps write the same evidence name: the manifest tells them apart, in order.
    manifest = json.loads((inc / "manifest.json").read_text())
    files = [f for f in manifest["files"] if f["path"].startswith("evidence/logs/")]
    assert [f["step"] for f in files] == ["late", "hour", "plain"]
    contents = {f["step"]: (inc / f["path"]).read_text() for f in files}
    assert contents["late"] == f"{stamps['late']} late\n"
    assert contents["hour"] == f"{stamps['early']} early\n{stamps['late']} late\n"
    assert contents["plain"] == "early\nlate\n"


@pytest.mark.slow
def test_large_log_is_streamed_with_bounded_memory(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    size_mb = 200
    line = "0123456789" * 19  # 190 characters + newline: a long mail log line
    c = dlab.run(BUSYBOX, ["sh", "-c", f"yes {line} | head -c {size_mb * 1000 * 1000}"])
    assert c.wait(timeout=300)["StatusCode"] == 0
    pb = playbook(tmp_path, {"id": "log", "action": "logs.container", "container": c.name})
    rc, out, err, peak = run_cli_measured("run", str(pb), "--json", state_dir=state_dir)
    assert rc == 0, err
    doc = json.loads(out)
    saved = incident_dir(state_dir, doc["incident_id"]) / "evidence" / "logs" / f"{c.name}.log"
    size, digest = sha256_of_command(["docker", "logs", "-t", c.name])
    assert size > size_mb * 1000 * 1000  # the payload plus a timestamp per line
    assert saved.stat().st_size == size
    assert sha256_of_file(saved) == digest
    assert peak < 100 * 1024 * 1024, f"peak RSS {peak / 2**20:.0f} MiB"


def test_logs_files_from_a_paused_container_and_the_host(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.postfix()
    c.pause()
    host_dir = tmp_path / "hostlogs"
    (host_dir / "sub").mkdir(parents=True)
    (host_dir / "mail.log").write_bytes(b"host line 1\n" * 1000)
    (host_dir / "sub" / ".hidden").write_bytes(b"x")
    (host_dir / "link").symlink_to("/etc/passwd")
    pb = playbook(
        tmp_path,
        {
            "id": "files",
            "action": "logs.files",
            "container": c.name,
            "host_paths": [str(host_dir), str(tmp_path / "absent.log")],
        },
    )
    doc = run_ok("run", str(pb), state_dir=state_dir)
    evidence = incident_dir(state_dir, doc["incident_id"]) / "evidence" / "files"
    notes = doc["steps"][0]["notes"]
    assert f"not found (skipped): {c.name}:/var/log/mail/, host:{tmp_path / 'absent.log'}" in notes
    with tarfile.open(evidence / c.name / "var" / "log" / "mail.log.tar") as tar:
        member = tar.getmember("mail.log")
        data = tar.extractfile(member)
        assert data is not None and b"postfix/master" in data.read()
    index = json.loads((evidence / c.name / "index.json").read_text())
    assert index["paths"]["/var/log/mail/"] == {"missing": True}
    host_copy = evidence / "host" / str(host_dir).strip("/")
    assert (host_copy / "mail.log").read_bytes() == (host_dir / "mail.log").read_bytes()
    assert (host_copy / "sub" / "x.hidden").read_bytes() == b"x"
    assert not (host_copy / "link").exists()
    host_index = json.loads((evidence / "host-index.json").read_text())
    assert host_index["paths"][str(host_dir / "link")] == {"symlink": "/etc/passwd", "mode": oct(0o120777)}
    assert status(c) == "paused"


def test_logs_files_default_paths_cover_docker_mailserver(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.run(BUSYBOX, SLEEPER)
    line = "2026-01-01T00:00:00.000000+00:00 mail postfix/smtpd[1]: client=unknown[172.17.0.1]"
    setup = f"mkdir -p /var/log/mail && echo '{line}' > /var/log/mail/mail.log && echo x > /var/log/mail/mail.err"
    assert c.exec_run(["sh", "-c", setup]).exit_code == 0
    c.pause()
    pb = playbook(tmp_path, {"id": "files", "action": "logs.files", "container": c.name})
    doc = run_ok("run", str(pb), state_dir=state_dir)
    assert doc["status"] == "contained"  # a missing default path is not a failure
    notes = doc["steps"][0]["notes"]
    assert notes[-1] == f"not found (skipped): {c.name}:/var/log/mail.log"
    evidence = incident_dir(state_dir, doc["incident_id"]) / "evidence" / "files" / c.name
    with tarfile.open(evidence / "var" / "log" / "mail.tar") as tar:
        assert sorted(tar.getnames()) == ["mail", "mail/mail.err", "mail/mail.log"]
        data = tar.extractfile("mail/mail.log")
        assert data is not None and data.read().decode() == line + "\n"
    index = json.loads((evidence / "index.json").read_text())
    assert index["paths"]["/var/log/mail.log"] == {"missing": True}
    assert index["paths"]["/var/log/mail/"]["evidence"] == f"evidence/files/{c.name}/var/log/mail.tar"
    assert status(c) == "paused"


def test_inspect_records_ports_with_host_ip(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.run(BUSYBOX, SLEEPER, publish_smtp=True)
    c.exec_run(["sh", "-c", "echo changed > /etc/motd"])
    pb = playbook(tmp_path, {"action": "docker.inspect", "container": c.name})
    doc = run_ok("run", str(pb), state_dir=state_dir)
    base = incident_dir(state_dir, doc["incident_id"]) / "evidence" / "docker"
    assert json.loads((base / c.name / "inspect.json").read_text())["Id"] == c.id
    net = json.loads((base / c.name / "network.json").read_text())
    assert net["ports"] == [
        {
            "container_port": "25/tcp", "published": True, "host_ip": "127.0.0.1",
            "host_port": str(host_port(c)), "all_ipv4": False, "all_ipv6": False,
        }
    ]
    assert {"Kind": 0, "Path": "/etc/motd"} in json.loads((base / c.name / "diff.json").read_text()) or {
        "Kind": 1, "Path": "/etc/motd"
    } in json.loads((base / c.name / "diff.json").read_text())
    top = json.loads((base / c.name / "top.json").read_text())
    assert any("sleep" in " ".join(p) for p in top["Processes"])
    assert "ServerVersion" in json.loads((base / "info.json").read_text())
    assert "ApiVersion" in json.loads((base / "version.json").read_text())


# ------------------------------------------------------------------ Mailu


@pytest.mark.netns
def test_mailu_playbook_pauses_front_and_smtp_and_restore_gives_them_back(
    dlab: Lab, netns: str, tmp_path: Path, state_dir: Path
) -> None:
    """The shipped relay-incident-mailu, whole, against a Compose-labelled front and smtp.

    A unique project label keeps every other container on this host out of
    ``service:front`` / ``service:smtp``; the IPv6 strip runs on a veth in
    the test's namespace (the CLI runs inside it, Docker is reached through
    its socket as usual).
    """
    project = f"com.docker.compose.project={dlab.owner}"

    def compose(service: str) -> dict[str, str]:
        return {"com.docker.compose.project": dlab.owner, "com.docker.compose.service": service}

    smtp = dlab.postfix(labels=compose("smtp"))
    front = dlab.run(BUSYBOX, SLEEPER, publish_smtp=True, labels=compose("front"))
    decoy = dlab.run(BUSYBOX, SLEEPER, labels={"com.docker.compose.service": "smtp"})  # another project's smtp
    send_spam(host_port(smtp), 2)
    queue = wait_queue(smtp, 2)
    a0, a1 = netlab.veth(netns)
    netlab.ipn(netns, "addr", "add", "2001:db8:4d::1/64", "dev", a0, "nodad")
    net_before = netlab.state(netns, [a0, a1])
    before = {c.name: state(c) for c in (smtp, front, decoy)}

    r = netlab.lockdown(
        netns, state_dir, "run", "relay-incident-mailu",
        "--var", f"label={project}", "--var", f"interfaces={a0}", "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    incident = doc["incident_id"]
    assert doc["status"] == "contained", doc["steps"]
    assert status(smtp) == status(front) == "paused"
    assert status(decoy) == "running"
    evidence = incident_dir(state_dir, incident) / "evidence"
    # Both logs, read while paused, are exactly what `docker logs -t` gives (nothing can log while frozen).
    for c in (front, smtp):
        saved = evidence / "logs" / f"{c.name}.log"
        assert sha256_of_command(["docker", "logs", "-t", c.name]) == (saved.stat().st_size, sha256_of_file(saved))
    assert " started\n" in (evidence / "logs" / f"{front.name}.log").read_text()
    assert postqueue_paused(smtp) == dict.fromkeys(queue, "hold")
    assert netlab.global_addresses(netns, a0) == []
    steps = {s["id"]: s for s in doc["steps"]}
    assert steps["hold-queue"]["notes"][0] == (
        f"{smtp.name}: queue 2 deferred; saved 2 message(s) with postcat to evidence/queue/{smtp.name}/"
    )
    assert steps["hold-queue"]["notes"][1].endswith("; 2 message(s) held by this step")
    assert steps["pause-front"]["notes"][0] == f"{front.name}: running -> paused (restart policy no)"
    assert steps["pause-front"]["notes"][1].startswith(
        f"docker-proxy on the host keeps accepting TCP on 127.0.0.1:{host_port(front)}->25/tcp"
    )
    view = run_ok("status", incident, state_dir=state_dir)
    targets = {s["id"]: s["params"].get("containers") for s in view["steps"]}
    assert targets["hold-queue"] == targets["pause-smtp"] == targets["smtp-log"] == [smtp.name]
    assert targets["pause-front"] == targets["front-log"] == [front.name]
    with tarfile.open(evidence / "files" / smtp.name / "etc" / "postfix" / "main.cf.tar") as tar:
        main_cf = tar.extractfile("main.cf")
        assert main_cf is not None and b"mynetworks" in main_cf.read()
    ports = json.loads((evidence / "docker" / front.name / "network.json").read_text())["ports"]
    assert [(p["host_ip"], p["container_port"]) for p in ports] == [("127.0.0.1", "25/tcp")]

    # Restore: both unpaused, the strip undone, the spam listed as held with both decisions.
    r = netlab.lockdown(netns, state_dir, "restore", incident, "--reopen-anyway")
    assert r.returncode == 0, r.stderr
    assert (
        f"hold-queue (postfix.hold_queue) is held: 2 message(s) held in {smtp.name}. "
        f"`lockdown restore {incident} --release-queue` puts exactly these back in the queue for delivery; "
        f"`lockdown queue purge {incident}` deletes them (copies are in evidence/queue/)"
    ) in r.stdout
    assert {c.name: state(c) for c in (smtp, front, decoy)} == before
    netlab.assert_same_state(net_before, netlab.state(netns, [a0, a1]))
    assert postqueue(smtp) == dict.fromkeys(queue, "hold")
    released = run_ok("restore", incident, "--release-queue", state_dir=state_dir)
    assert [s["state"] for s in released["steps"]] == ["undone"]
    assert set(postqueue(smtp).values()) <= {"deferred", "active", "incoming"}


def postqueue_paused(container: Any) -> dict[str, str]:
    """``postqueue -j`` of a paused container (exec is refused while paused: unpause, read, pause)."""
    container.unpause()
    try:
        return postqueue(container)
    finally:
        container.pause()


# ------------------------------------------------------------------ targeting errors


def test_auto_with_no_candidate_lists_the_running_ones(dlab: Lab, tmp_path: Path, state_dir: Path) -> None:
    c = dlab.run(BUSYBOX, SLEEPER)  # running, but publishes nothing
    label = f"{TEST_LABEL}={dlab.owner}"
    pb = playbook(tmp_path, {"id": "pause", "action": "docker.pause", "label": label})
    r = run_cli("run", str(pb), state_dir=state_dir)
    assert r.returncode == 2, r.stderr
    assert error_lines(r) == [
        f'lockdown: error: {pb} step 1 (pause): container = "auto": no running container with label {label} '
        f"publishes port 25/tcp; running containers: {c.name} (running)",
        '  -> name the container: container = "NAME" (or container = "service:NAME" for Compose services)',
    ]
    assert status(c) == "running"
    assert not (state_dir / "incidents").exists()


def test_a_hint_after_lockdown_run_is_a_flag_the_operator_can_type(
    dlab: Lab, tmp_path: Path, state_dir: Path
) -> None:
    """The container comes from a var: on the command line the way out is ``--var``, not TOML."""
    c = dlab.run(BUSYBOX, SLEEPER)
    label = f"{TEST_LABEL}={dlab.owner}"
    pb = tmp_path / "var-target.toml"
    pb.write_text(
        '[vars]\ncontainer = "auto"\n\n[[steps]]\nid = "pause"\naction = "docker.pause"\n'
        f'container = "{{container}}"\nlabel = "{label}"\n'
    )
    for extra in ((), ("--dry-run",)):
        r = run_cli("run", str(pb), *extra, state_dir=state_dir)
        assert r.returncode == 2, r.stderr
        assert error_lines(r) == [
            f'lockdown: error: {pb} step 1 (pause): container = "auto": no running container with label {label} '
            f"publishes port 25/tcp; running containers: {c.name} (running)",
            "  -> name the container: --var container=NAME (or --var container=service:NAME for Compose services)",
        ]
    assert status(c) == "running"
    assert not (state_dir / "incidents").exists()


def test_auto_with_two_candidates_names_both_and_changes_nothing(
    dlab: Lab, tmp_path: Path, state_dir: Path
) -> None:
    a = dlab.run(BUSYBOX, SLEEPER, publish_smtp=True)
    b = dlab.run(BUSYBOX, SLEEPER, publish_smtp=True)
    label = f"{TEST_LABEL}={dlab.owner}"
    first, second = sorted([a, b], key=lambda x: x.name)
    pb = playbook(tmp_path, {"id": "pause", "action": "docker.pause", "container": "auto", "label": label})
    r = run_cli("run", str(pb), state_dir=state_dir)
    assert r.returncode == 2, r.stderr
    assert error_lines(r) == [
        f'lockdown: error: {pb} step 1 (pause): container = "auto": 2 running containers with label {label} '
        f"publish port 25/tcp, choose one: {first.name} (running; 127.0.0.1:{host_port(first)}->25/tcp); "
        f"{second.name} (running; 127.0.0.1:{host_port(second)}->25/tcp)",
        '  -> set container = "NAME", or container = "all" to act on every one of them',
    ]
    # Without the label, other containers on this host may be candidates too; ours are named.
    unlabelled = playbook(tmp_path, {"id": "pause", "action": "docker.pause"})
    r = run_cli("run", str(unlabelled), state_dir=state_dir)
    assert r.returncode == 2, r.stderr
    assert "running containers publish port 25/tcp, choose one:" in r.stderr
    assert a.name in r.stderr and b.name in r.stderr
    assert status(a) == status(b) == "running"
    assert not (state_dir / "incidents").exists()


def test_container_not_found_is_exit_2(tmp_path: Path, state_dir: Path, docker_engine: Any) -> None:
    pb = playbook(tmp_path, {"id": "pause", "action": "docker.pause", "container": "lkd-no-such-container"})
    r = run_cli("run", str(pb), state_dir=state_dir)
    assert r.returncode == 2
    assert error_lines(r) == [
        f"lockdown: error: {pb} step 1 (pause): no such container 'lkd-no-such-container'",
        '  -> check the name with `docker ps -a`, or use container = "auto" or container = "service:NAME"',
    ]
    assert not (state_dir / "incidents").exists()


def test_daemon_unreachable_is_exit_5(tmp_path: Path, state_dir: Path) -> None:
    pb = playbook(tmp_path, {"id": "pause", "action": "docker.pause", "container": "mailserver"})
    r = run_cli("run", str(pb), state_dir=state_dir, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert r.returncode == 5
    lines = error_lines(r)
    assert lines[0].startswith(
        "lockdown: error: cannot connect to the Docker daemon: the Docker daemon at unix:///nonexistent.sock "
        "is unreachable ("
    )
    assert lines[1] == "  -> start it (systemctl start docker), or point DOCKER_HOST at the right socket"
    assert not state_dir.exists()
    r = run_cli("queue", "show", "20260101T000000Z-x-0000", state_dir=state_dir)
    assert r.returncode == 2  # no such incident: checked before Docker is needed


def test_socket_permission_denied_is_exit_4(tmp_path: Path, docker_engine: Any) -> None:
    import os
    import shutil

    sock = "/var/run/docker.sock"
    if not os.path.exists(sock) or os.stat(sock).st_mode & 0o006:
        pytest.skip(f"{sock} is missing or open to everyone")
    pb = playbook(tmp_path, {"id": "pause", "action": "docker.pause", "container": "mailserver"})
    os.chmod(tmp_path, 0o755)
    os.chmod(pb, 0o644)
    state = tmp_path / "nobody-state"
    # The interpreter lives under /root (0700): nobody may read it, but not write the socket.
    cmd = [
        shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
        "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
        sys.executable, "-m", "lockdown", "run", str(pb), "--state-dir", str(state),
    ]
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert r.returncode == 4, r.stderr
    assert error_lines(r) == [
        "lockdown: error: cannot connect to the Docker daemon: permission denied on the Docker socket "
        "unix:///var/run/docker.sock",
        "  -> run as root or as a member of the docker group",
    ]
    assert not state.exists()


def test_container_removed_mid_run_is_journaled_and_restorable(
    dlab: Lab, tmp_path: Path, state_dir: Path
) -> None:
    doomed = dlab.run(BUSYBOX, SLEEPER)
    survivor = dlab.run(BUSYBOX, SLEEPER)
    before = state(survivor)
    pb = playbook(
        tmp_path,
        {"id": "pause-doomed", "action": "docker.pause", "container": doomed.name},
        {"id": "pause-survivor", "action": "docker.pause", "container": survivor.name},
        {"id": "wait", "action": "wait", "seconds": 4},
        {"id": "log", "action": "logs.container", "container": doomed.name},
    )
    env = {"LOCKDOWN_STATE_DIR": str(state_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockdown", "run", str(pb), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**__import__("os").environ, **env},
    )
    try:
        deadline = time.monotonic() + 60
        while status(survivor) != "paused":
            assert time.monotonic() < deadline and proc.poll() is None, "the run never paused the survivor"
            time.sleep(0.1)
        doomed.remove(force=True)  # during the wait step
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    doc = json.loads(out)
    assert doc["status"] == "failed"
    log = doc["steps"][-1]
    assert log["state"] == "failed"
    assert log["error"] == (
        f"cannot inspect {doomed.name}: container {doomed.name} disappeared during the run (removed?) "
        "(everything journaled so far stays restorable: `lockdown restore INCIDENT`)"
    )
    assert any(e["phase"] == "failed" and e["step"] == "log" for e in journal(state_dir, doc["incident_id"]))
    restored = run_ok("restore", doc["incident_id"], "--reopen-anyway", state_dir=state_dir)
    assert restored["status"] == "restored"
    notes = {s["id"]: s["notes"] for s in restored["steps"]}
    assert notes["pause-doomed"] == [f"{doomed.name} ({doomed.id[:12]}) no longer exists: nothing to unpause"]
    assert state(survivor) == before


def test_daemon_errors_translate_once() -> None:
    """A daemon dying mid-session raises requests' ConnectionError, which is not a DockerException."""
    import docker
    import requests

    from lockdown import dockerapi
    from lockdown.errors import ActionError, BadInput, PrivilegeError, Unavailable

    assert not isinstance(requests.exceptions.ConnectionError("x"), docker.errors.DockerException)

    def boom(exc: BaseException) -> Any:
        def fn() -> None:
            raise exc

        return fn

    cases = [
        (requests.exceptions.ConnectionError("Connection aborted"), Unavailable),
        (docker.errors.DockerException("Error while fetching server API version"), Unavailable),
        (requests.exceptions.ConnectionError("[Errno 13] Permission denied"), PrivilegeError),
        (docker.errors.NotFound("No such container: x"), BadInput),
    ]
    for exc, expected in cases:
        with pytest.raises(expected):
            dockerapi.docker_call("do it", boom(exc))
    with pytest.raises(ActionError, match="disappeared during the run"):
        dockerapi.docker_call("do it", boom(docker.errors.NotFound("No such container: x")), vanished="x")

    def broken_stream() -> Iterator[bytes]:
        yield b"first chunk"
        raise requests.exceptions.ChunkedEncodingError("eof")

    got: list[bytes] = []
    with pytest.raises(Unavailable):
        got.extend(dockerapi._guard_stream("read", broken_stream(), "x"))
    assert got == [b"first chunk"]


def test_postcat_stream_splitting_survives_any_chunking() -> None:
    from lockdown.actions.postfix_hold import _split_framed

    nonce = b"0123456789abcdef0123456789abcdef"
    stream = (
        b"\n" + nonce + b" BEGIN AAA111\nline one\nline two without newline"
        + b"\n" + nonce + b" END AAA111 0\n"
        + b"\n" + nonce + b" BEGIN BBB222\n" + b"x" * 5000 + b"\n"
        + b"\n" + nonce + b" END BBB222 1\n"
    )
    for size in (1, 3, 7, 33, 34, 35, 100, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        got: dict[str, bytes] = {}
        codes: dict[str, int | None] = {}
        for qid, data, rc in _split_framed(iter(chunks), nonce):
            if data is None and rc is None:
                got[qid] = b""
            elif data is not None:
                got[qid] += data
            else:
                codes[qid] = rc
        assert got == {"AAA111": b"line one\nline two without newline", "BBB222": b"x" * 5000 + b"\n"}, size
        assert codes == {"AAA111": 0, "BBB222": 1}
    # The shell's own complaint, outside any section, is kept apart (it names why nothing ran).
    for size in (1, 5, 200):
        text = b"sh: 1: postqueue: not found\n"
        events = list(_split_framed(iter([text[i : i + size] for i in range(0, len(text), size)]), nonce))
        assert {e[0] for e in events} == {""} and b"".join(e[1] or b"" for e in events) == text


def test_demux_of_docker_stream_frames_survives_any_chunking() -> None:
    import struct

    from lockdown.dockerapi import _Demux

    payloads = [b"a" * 10, b"", b"line\n", b"z" * 70000]
    stream = b"".join(struct.pack(">BxxxL", 1 + i % 2, len(p)) + p for i, p in enumerate(payloads))
    for size in (1, 5, 8, 9, 1000, len(stream)):
        demux = _Demux()
        out = io.BytesIO()
        for i in range(0, len(stream), size):
            out.write(demux.feed(stream[i : i + size]))
        assert out.getvalue() == b"".join(payloads) and demux.complete, size


# ------------------------------------------------------------------ shared targeting


def test_every_docker_action_takes_the_shared_container_params() -> None:
    from lockdown.actions import REGISTRY, get_action
    from lockdown.actions.containers import ContainerAction, ContainerParams

    docker_actions = sorted(n for n in REGISTRY if issubclass(get_action(n), ContainerAction))
    assert docker_actions == [
        "docker.inspect", "docker.pause", "docker.stop", "logs.container", "logs.files", "nft.block",
        "postfix.hold_queue",
    ]
    for name in docker_actions:
        assert issubclass(get_action(name).Params, ContainerParams), name


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"action": "docker.pause", "container": " "}, "container: empty; expected a name or id, \"auto\" (the one "
         "running container publishing port 25), \"all\" (every such container) or \"service:NAME\" (Compose "
         "service label, e.g. Mailu \"service:smtp\")"),
        ({"action": "postfix.hold_queue", "label": "=x"}, "label: expected KEY or KEY=VALUE without spaces, got '=x'"),
        ({"action": "docker.stop", "timeout": 601}, "timeout: expected 0 to 600 seconds, got 601"),
        ({"action": "logs.container", "since": "yesterday"}, "since: expected a duration (\"24h\", \"90m\", \"7d\"), "
         "Unix seconds or an RFC 3339 time, got 'yesterday'"),
        ({"action": "logs.files", "paths": ["var/log"]}, "paths[0]: expected an absolute path, got 'var/log'"),
    ],
)
def test_params_errors_name_the_key(tmp_path: Path, step: dict[str, Any], message: str) -> None:
    """ParamError raised by a Params dataclass: exit 2, the file, the step and the key."""
    pb = playbook(tmp_path, {"id": "s", **step})
    r = run_cli("playbooks", "validate", str(pb))
    assert r.returncode == 2, r.stdout + r.stderr
    assert error_lines(r)[0] == f"lockdown: error: {pb}: step 1 (s): {message}"
