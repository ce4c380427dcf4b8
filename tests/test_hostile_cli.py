"""Hostile input to playbooks and ``report --log`` through the real CLI (issue 13, items 6, 15, 16).

Each case: one precise message, exit 2 (never 70), nothing run, no raw
control character on the terminal.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

ESC = "\x1b"


def error(r: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in r.stderr.splitlines() if line.startswith("lockdown: error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0].removeprefix("lockdown: error: ")


def clean(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode != 70, r.stderr
    assert "internal error" not in r.stderr
    assert ESC not in r.stdout + r.stderr


# ----------------------------------------------------------------- playbooks (item 15)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", "invalid TOML: tables or arrays nested deeper than 32 levels"),
        ("a = " + "{b = " * 200 + "1" + "}" * 200 + "\n", "tables or arrays nested deeper than 32 levels"),
    ],
    ids=["arrays-5000", "inline-tables-200"],
)
def test_deeply_nested_toml_is_bad_input(tmp_path: Path, body: str, message: str) -> None:
    pb = tmp_path / "deep.toml"
    pb.write_text('name = "deep"\n' + body)
    state = tmp_path / "state"
    for args in (("playbooks", "validate", str(pb)), ("run", str(pb), "--dry-run"), ("run", str(pb))):
        r = run_cli(*args, state_dir=state)
        clean(r)
        assert r.returncode == 2, (args, r.stderr)
        assert error(r) == f"{pb}: {message}"
    assert not state.exists()


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ('"../../x"', "'../../x'"),
        ('"a\\nb.json"', "'a\\nb.json'"),
        ('"{{other}}"', "'{other}'"),
        ('"/etc/passwd"', "'/etc/passwd'"),
        ('"{where}"', "'../up.json'"),
        ('"a\\u001b[2Jb.json"', "'a\\x1b[2Jb.json'"),
    ],
)
def test_bad_evidence_file_names_fail_validation_before_anything_runs(
    tmp_path: Path, value: str, shown: str
) -> None:
    pb = tmp_path / "names.toml"
    pb.write_text(
        'name = "names"\n[vars]\nwhere = "../up.json"\n'
        '[[steps]]\nid = "w"\naction = "wait"\nseconds = 0\n'
        f'[[steps]]\nid = "snap"\naction = "snapshot.host"\nfile = {value}\n'
    )
    state = tmp_path / "state"
    expected = (
        f"{pb}: step 2 (snap): file: expected a relative file name of letters, digits and ._@+=- "
        f"(like host.json), got {shown}"
    )
    for args in (("playbooks", "validate", str(pb)), ("run", str(pb), "--dry-run"), ("run", str(pb))):
        r = run_cli(*args, state_dir=state)
        clean(r)
        assert r.returncode == 2, (args, r.stderr)
        assert error(r) == expected
    assert not state.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names.toml"]


def test_good_evidence_file_names_still_run(tmp_path: Path) -> None:
    pb = tmp_path / "ok.toml"
    pb.write_text('name = "ok"\n[[steps]]\naction = "snapshot.host"\nfile = "host/before.json"\n')
    r = run_cli("run", str(pb), "--json", state_dir=tmp_path / "state")
    assert r.returncode == 0, r.stderr
    (incident,) = (tmp_path / "state" / "incidents").iterdir()
    assert (incident / "evidence" / "host" / "before.json").is_file()


# ----------------------------------------------------------------- report --log (item 16)


def test_report_log_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "mail.fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        t0 = time.monotonic()
        r = run_cli("report", "--log", str(path), timeout=30)
        assert time.monotonic() - t0 < 30
        clean(r)
        assert r.returncode == 2, r.stderr
        if path == tmp_path:
            assert error(r) == f"{path} is a directory: give log files"
        else:
            assert error(r) == f"{path} is not a regular file: give log files"
        assert r.stderr.endswith("  -> e.g. --log /var/log/mail.log\n")


# ----------------------------------------------------------------- terminal escapes (item 6)


def test_escape_sequences_in_log_lines_never_reach_the_terminal(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(
        b"Nov 22 23:45:01 mx postfix/smtpd[123]: ABC123: client=unknown[172.17.0.1]\n"
        b"Nov 22 23:45:01 mx postfix/qmgr[124]: ABC123: from=<a@ev\x1b[31mil.com>, size=100, nrcpt=1 (queue active)\n"
        b"Nov 22 23:45:02 mx postfix/smtp[125]: ABC123: to=<v@q\x1b]0;pwn\x07q.com>, relay=mx.qq.com[192.0.2.1]:25, "
        b"delay=1, status=sent (250 ok)\n"
    )
    r = run_cli("report", "--log", str(log))
    assert r.returncode == 0, r.stderr
    clean(r)
    assert "\x07" not in r.stdout
    assert "ev\\x1b[31mil.com  1" in r.stdout
    assert "q\\x1b]0;pwn\\x07q.com  1" in r.stdout
    # --json keeps the value, escaped by the JSON encoder
    r = run_cli("report", "--log", str(log), "--json")
    assert r.returncode == 0, r.stderr
    assert ESC not in r.stdout and "\\u001b[31m" in r.stdout


def test_escape_sequences_in_an_error_message_are_escaped(tmp_path: Path) -> None:
    name = tmp_path / "x\x1b[2K\r✓ all good.toml"
    r = run_cli("playbooks", "validate", str(name))
    clean(r)
    assert r.returncode == 2
    assert error(r) == f"{tmp_path}/x\\x1b[2K\\r✓ all good.toml: no such playbook file"


def test_escape_sequences_in_a_journaled_error_never_reach_the_terminal(tmp_path: Path) -> None:
    """A step error quoting a container name (here planted in a hash-consistent journal) is shown escaped."""
    from tests.test_verify_hostile import chained, run_start

    incident = "20261122T234500Z-relay-incident-0bad"
    where = tmp_path / "state" / "incidents" / incident
    where.mkdir(parents=True)
    name = "mail\x1b]0;owned\x07\x1b[2K\r✓ contained"
    journal, head = chained(
        [
            run_start([{"number": 1, "id": "pause", "action": "docker.pause"}]),
            {"phase": "intent", "step": "pause", "action": "docker.pause", "time": "2026-11-22T23:45:01Z"},
            {"phase": "failed", "step": "pause", "action": "docker.pause", "time": "2026-11-22T23:45:02Z",
             "error": f"no container named {name!s}"},
        ]
    )
    (where / "journal.jsonl").write_bytes(journal)
    (where / "journal.head").write_text(head)
    (where / "incident.json").write_text('{"playbook": {"name": "relay-incident"}, "trigger": {"kind": "cli"}}')
    r = run_cli("status", incident, state_dir=tmp_path / "state")
    assert r.returncode == 0, r.stderr
    clean(r)
    assert "\x07" not in r.stdout and "\r" not in r.stdout
    assert "  pause: no container named mail\\x1b]0;owned\\x07\\x1b[2K\\r✓ contained" in r.stdout.splitlines()
