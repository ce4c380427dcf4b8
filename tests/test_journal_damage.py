"""Damaged, empty and odd incidents: shown for what they are, restorable, never an internal error.

Each test makes a real incident (a ``sysctl.set`` run in the test's own
namespace), damages its files the way a crash, a full disk or an intruder
would, then checks the CLI's exact words and exit codes and the namespace's
real sysctls.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli, sh

KEYS = ("net.ipv4.ip_forward", "net.ipv4.icmp_echo_ignore_all")
PATHS = ["/proc/sys/" + key.replace(".", "/") for key in KEYS]
GENESIS = "0" * 64


def sysctls(ns: str) -> list[str]:
    return sh("ip", "netns", "exec", ns, "cat", *PATHS).stdout.split()


def contained(ns: str, tmp: Path, state: Path) -> tuple[str, Path, list[str]]:
    """Run a two-step ``sysctl.set`` playbook: (incident id, its directory, the sysctls before)."""
    before = sysctls(ns)
    steps = "".join(
        f'[[steps]]\nid = "s{i}"\naction = "sysctl.set"\nvalues = {{ "{key}" = "{"0" if v == "1" else "1"}" }}\n'
        for i, (key, v) in enumerate(zip(KEYS, before, strict=True), start=1)
    )
    pb = tmp / "pb.toml"
    pb.write_text(f'name = "damage"\n{steps}')
    r = run_cli("run", str(pb), "--json", netns=ns, state_dir=state)
    assert r.returncode == 0, r.stderr
    incident = json.loads(r.stdout)["incident_id"]
    assert sysctls(ns) != before
    return incident, state / "incidents" / incident, before


def lines_of(path: Path) -> list[bytes]:
    return (path / "journal.jsonl").read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes], tail: bytes = b"") -> None:
    (path / "journal.jsonl").write_bytes(b"".join(line + b"\n" for line in lines) + tail)


def nested(depth: int) -> bytes:
    return b'{"phase":"run-end","x":' + b"[" * depth + b"]" * depth + b"}"


def error(r: object) -> str:
    return r.stderr.splitlines()[0]  # type: ignore[attr-defined,no-any-return]


# ----------------------------------------------------------------- unreadable lines


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda lines: [*lines[:2], b"garbage", *lines[3:]],
         "journal line 3: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        (lambda lines: [*lines[:-1], nested(974)], "journal line 6: nested deeper than 64 levels"),
        (lambda lines: [*lines[:-1], b"[1, 2]"], "journal line 6 is not an object"),
    ],
    ids=["garbage", "nested-974-deep", "not-an-object"],
)
def test_unreadable_line_is_named_steps_still_shown_and_force_restores(
    netns: str, tmp_path: Path, state_dir: Path, damage: object, problem: str
) -> None:
    """Line 3 is s1's ``applied``, line 6 the ``run-end``: the intents (lines 2 and 4) stay readable."""
    incident, path, before = contained(netns, tmp_path, state_dir)
    lines = lines_of(path)
    assert len(lines) == 6
    write_lines(path, damage(lines))  # type: ignore[operator]

    r = run_cli("status", incident, state_dir=state_dir)
    assert r.returncode == 1, r.stderr
    assert f"  journal: BROKEN: {problem}" in r.stdout.splitlines()
    assert "journal: intact" not in r.stdout
    assert error(r) == f"lockdown: error: incident {incident} is damaged: journal: {problem}"
    doc = json.loads(run_cli("status", incident, "--json", state_dir=state_dir).stdout)
    assert doc["journal"]["intact"] is False
    assert doc["journal"]["unreadable_lines"] == [int(problem.split()[2].rstrip(":"))]
    assert [s["id"] for s in doc["steps"]] == ["s1", "s2"]
    assert doc["containment_active"] is True

    r = run_cli("restore", incident, netns=netns, state_dir=state_dir)
    assert r.returncode == 1
    assert error(r) == (
        f"lockdown: error: incident {incident}: {problem}; "
        "refusing to restore from a journal that may have been altered"
    )
    assert sysctls(netns) != before, "a refused restore changes nothing"
    r = run_cli("restore", incident, "--force", netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert f"lockdown: warning: {problem}" in r.stderr
    assert sysctls(netns) == before


def test_force_restore_with_a_torn_last_line_after_damage(netns: str, tmp_path: Path, state_dir: Path) -> None:
    """The very damage ``--force`` exists for: a broken chain that also ends in a torn line."""
    incident, path, before = contained(netns, tmp_path, state_dir)
    lines = lines_of(path)
    write_lines(path, [*lines[:2], b"not json", *lines[3:5]], tail=b'{"seq":6,"phase":"run-e')
    r = run_cli("restore", incident, "--force", netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert sysctls(netns) == before
    entries = [json.loads(x) for x in lines_of(path)[5:]]
    assert entries[0]["phase"] == "repair" and entries[0]["discarded_text"] == '{"seq":6,"phase":"run-e'
    assert entries[-1]["phase"] == "restore-end" and entries[-1]["status"] == "restored"


# ----------------------------------------------------------------- the head


def test_head_one_line_behind_is_accepted_at_the_first_line(netns: str, tmp_path: Path, state_dir: Path) -> None:
    """A crash right after the first journal line leaves the head at GENESIS: not tampering."""
    incident, path, _ = contained(netns, tmp_path, state_dir)
    first = lines_of(path)[0]
    write_lines(path, [first])
    (path / "journal.head").write_text(GENESIS)
    doc = json.loads(run_cli("status", incident, "--json", state_dir=state_dir).stdout)
    assert doc["journal"] == {"intact": True, "problem": None, "lines": 1, "empty": False, "unreadable_lines": []}
    r = run_cli("restore", incident, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"incident {incident}: nothing to undo\n"


def test_head_two_lines_behind_is_reported(netns: str, tmp_path: Path, state_dir: Path) -> None:
    incident, path, before = contained(netns, tmp_path, state_dir)
    lines = lines_of(path)
    (path / "journal.head").write_text(hashlib.sha256(lines[-3]).hexdigest())
    r = run_cli("status", incident, "--json", state_dir=state_dir)
    assert r.returncode == 1
    assert json.loads(r.stdout)["journal"]["problem"] == (
        "journal has 2 line(s) after its recorded head: lines were appended without the journal"
    )
    (path / "journal.head").write_text(hashlib.sha256(lines[-2]).hexdigest())
    r = run_cli("restore", incident, netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert sysctls(netns) == before


# ----------------------------------------------------------------- empty incidents


@pytest.mark.parametrize("files", ["nothing", "empty-journal", "only-incident-json"])
def test_incident_without_journal_is_empty_not_tampered(state_dir: Path, files: str) -> None:
    """Left by an older version killed at the wrong moment, or made by hand."""
    incident = "20261130T195214Z-relay-incident-3f2a"
    path = state_dir / "incidents" / incident
    os.makedirs(path / "evidence")
    if files == "empty-journal":
        (path / "journal.jsonl").write_bytes(b"")
        (path / "journal.head").write_text(GENESIS)
    if files == "only-incident-json":
        (path / "incident.json").write_text(json.dumps({"incident_id": incident, "playbook": {"name": "relay"}}))

    r = run_cli("status", incident, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert "  journal: empty: nothing was changed (the incident has no journal line)" in r.stdout.splitlines()
    assert "  containment active: no" in r.stdout.splitlines()
    r = run_cli("restore", "--last", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"incident {incident}: empty: nothing was changed (the incident has no journal line)\n"
    assert "altered" not in r.stderr
    r = run_cli("incidents", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].split() == [incident, "-", "-", "-", "empty"]


def test_a_symlink_among_incidents_is_not_listed(tmp_path: Path, state_dir: Path) -> None:
    real = "20261130T195214.180831Z-relay-incident-3f2a"
    os.makedirs(state_dir / "incidents" / real)
    (tmp_path / "elsewhere").mkdir()
    (state_dir / "incidents" / "20991231T235959Z-relay-incident-beef").symlink_to(tmp_path / "elsewhere")
    r = run_cli("incidents", "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert [i["incident_id"] for i in json.loads(r.stdout)["incidents"]] == [real]
    r = run_cli("restore", "--last", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"incident {real}: empty: nothing was changed (the incident has no journal line)\n"


# ----------------------------------------------------------------- incident.json


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[]", "incident.json: expected an object, got list"),
        (
            b'{"incident_id": "2026',
            "incident.json: not valid JSON (Unterminated string starting at: line 1 column 17 (char 16))",
        ),
        (b"[" * 5000 + b"]" * 5000, "incident.json: nested deeper than 64 levels"),
    ],
    ids=["list", "truncated", "deep"],
)
def test_malformed_incident_json_is_shown_as_damaged(
    netns: str, tmp_path: Path, state_dir: Path, content: bytes, problem: str
) -> None:
    incident, path, before = contained(netns, tmp_path, state_dir)
    (path / "incident.json").write_bytes(content)
    other = state_dir / "incidents" / "20200101T000000Z-other-abcd"
    other.mkdir()

    r = run_cli("incidents", "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    listed = {i["incident_id"]: i for i in json.loads(r.stdout)["incidents"]}
    assert list(listed) == [other.name, incident]
    assert listed[incident]["damage"] == problem and listed[incident]["containment_active"] is True
    assert listed[other.name]["empty"] is True and listed[other.name]["damage"] is None
    r = run_cli("incidents", state_dir=state_dir)
    assert r.stdout.splitlines()[-1].split() == [incident, "contained", "-", "ACTIVE", "DAMAGED"]

    r = run_cli("status", incident, state_dir=state_dir)
    assert r.returncode == 1
    assert f"  incident.json: DAMAGED: {problem}" in r.stdout.splitlines()
    assert error(r) == f"lockdown: error: incident {incident} is damaged: {problem}"
    r = run_cli("restore", "--last", netns=netns, state_dir=state_dir)
    assert r.returncode == 1
    assert error(r) == (
        f"lockdown: error: incident {incident}: {problem}; refusing to restore an incident whose files "
        "may have been altered"
    )
    assert sysctls(netns) != before
    r = run_cli("restore", "--last", "--force", netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert sysctls(netns) == before


# ----------------------------------------------------------------- ids and their order


def test_new_id_sorts_after_the_newest_even_when_the_clock_says_otherwise(
    netns: str, tmp_path: Path, state_dir: Path
) -> None:
    """An incident from 'the future' (a clock stepped back since): the new one still sorts last,
    and ``--last`` / ``status`` pick it."""
    future = "20991231T235959Z-old-abcd"
    os.makedirs(state_dir / "incidents" / future)
    incident, _, before = contained(netns, tmp_path, state_dir)
    assert incident.startswith("20991231T235959.000001Z-damage-"), incident
    r = run_cli("status", "--json", state_dir=state_dir)
    assert json.loads(r.stdout)["incident_id"] == incident
    r = run_cli("restore", "--last", netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert sysctls(netns) == before
    listed = json.loads(run_cli("incidents", "--json", state_dir=state_dir).stdout)["incidents"]
    assert [i["incident_id"] for i in listed] == [future, incident]


def test_incident_id_with_a_trailing_newline_is_refused(state_dir: Path) -> None:
    os.makedirs(state_dir / "incidents")
    r = run_cli("status", "20261130T195214Z-relay-incident-3f2a\n", state_dir=state_dir)
    assert r.returncode == 2
    assert error(r) == (
        "lockdown: error: invalid incident id '20261130T195214Z-relay-incident-3f2a\\n': "
        "expected something like 20261122T234500Z-relay-incident-3f2a"
    )


# ----------------------------------------------------------------- one reader


HELD_UNDO = {"containers": [{"container": "lkd-mail", "held": ["4A1B2C3D4E"], "already_held": []}]}


def held_queue_incident(state: Path) -> str:
    """An incident whose queue hold was kept by a restore without --release-queue, written
    through lockdown's own journal writer (the hash chain is valid)."""
    from lockdown.record.journal import Journal

    incident = "20261130T195214.180831Z-relay-incident-3f2a"
    path = state / "incidents" / incident
    os.makedirs(path / "evidence")
    (path / "playbook.toml").write_text('[[steps]]\nid = "hold"\naction = "postfix.hold_queue"\n')
    (path / "incident.json").write_text(json.dumps({"incident_id": incident, "playbook": {"name": "relay"}}))
    (path / "manifest.json").write_text('{"files": []}')
    journal = Journal.create(path)
    plan = [{"number": 1, "id": "hold", "action": "postfix.hold_queue", "describe": "hold", "params": {}}]
    journal.append("run-start", incident=incident, plan=plan)
    journal.append("intent", step="hold", action="postfix.hold_queue", params={}, resolved={}, undo=HELD_UNDO)
    journal.append("applied", step="hold", action="postfix.hold_queue", notes=[], result={}, seconds=0.1)
    journal.append("run-end", status="contained", steps={"hold": "ok"})
    journal.append("restore-end", status="restored", steps={"hold": "held"}, decisions=[])
    journal.close()
    return incident


def test_status_metrics_and_case_json_agree_on_a_held_queue(tmp_path: Path, state_dir: Path) -> None:
    """The queue is still held after that restore: containment is active, and the step is held."""
    from lockdown.triggers.dispatch import Metrics

    incident = held_queue_incident(state_dir)
    r = run_cli("status", incident, "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["containment_active"], doc["restore_status"]) == (True, "restored")
    assert doc["held"] == [{"id": "hold", "action": "postfix.hold_queue", "decision": "release-queue"}]
    r = run_cli("status", incident, state_dir=state_dir)
    assert "  containment active: YES (1 step(s) held until you decide, see below)" in r.stdout.splitlines()

    assert "lockdown_containment_active 1" in Metrics(state_dir).render().splitlines()

    bundle = tmp_path / "b.tar.gz"
    r = run_cli("export", incident, "-o", str(bundle), "--no-report", "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["containment_active"] is True
    import tarfile

    with tarfile.open(bundle) as tar:
        member = tar.extractfile(f"{incident}/case.json")
        assert member is not None
        case = json.loads(member.read())
    assert case["containment_active"] is True
    assert [(s["id"], s["state"]) for s in case["timeline"]["steps"]] == [("hold", "applied")]
    r = run_cli("verify", str(bundle))
    assert r.returncode == 0, r.stdout + r.stderr


NFT_UNDO = {"family": "inet", "table": "lockdown_t", "chain": "block"}
GATE_TRANSCRIPT = [
    "<- 220 mail ESMTP Postfix",
    "EHLO lockdown-restore.example -> 250",
    "MAIL FROM:<lockdown-gate@example.org> -> 250 2.1.0 Ok",
    "RCPT TO:<lockdown-gate@example.com> -> 250 2.1.5 Ok",
    "RSET -> 250",
    "QUIT -> 221",
]


def gated_incident(state: Path) -> str:
    """An incident whose nft.block restore's gate kept (the relay accepted), through lockdown's journal writer."""
    from lockdown.record.journal import Journal

    incident = "20261130T195214.180832Z-relay-incident-surgical-3f2b"
    path = state / "incidents" / incident
    os.makedirs(path / "evidence")
    (path / "playbook.toml").write_text('[[steps]]\nid = "block"\naction = "nft.block"\n')
    (path / "incident.json").write_text(json.dumps({"incident_id": incident, "playbook": {"name": "surgical"}}))
    (path / "manifest.json").write_text('{"files": []}')
    journal = Journal.create(path)
    plan = [{"number": 1, "id": "block", "action": "nft.block", "describe": "block", "params": {}}]
    journal.append("run-start", incident=incident, plan=plan)
    resolved = {"containers": ["lkd-mail"], "container_ids": ["c0ffee"]}
    journal.append("intent", step="block", action="nft.block", params={}, resolved=resolved, undo=NFT_UNDO)
    journal.append("applied", step="block", action="nft.block", notes=[], result={}, seconds=0.1)
    journal.append("run-end", status="contained", steps={"block": "ok"})
    target = {"container": "lkd-mail", "address": "172.17.0.2", "port": 25, "transcript": GATE_TRANSCRIPT}
    journal.append(
        "gate", verdict="open", reason="the relay is open", targets=[target], fixes=["x"], gated=["block"],
        kept=["block"],
    )
    journal.append("restore-end", status="restored", steps={"block": "gated"}, decisions=[])
    journal.close()
    return incident


def test_status_dry_run_metrics_and_case_json_show_a_gated_step_like_a_held_one(
    tmp_path: Path, state_dir: Path
) -> None:
    from lockdown.triggers.dispatch import Metrics

    incident = gated_incident(state_dir)
    r = run_cli("status", incident, "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["containment_active"], doc["restore_status"]) == (True, "restored")
    assert doc["held"] == [{"id": "block", "action": "nft.block", "decision": "reopen-anyway"}]
    assert doc["steps"][0]["gated"] == "open"
    r = run_cli("status", incident, state_dir=state_dir)
    assert "  containment active: YES (1 step(s) held until you decide, see below)" in r.stdout.splitlines()
    assert "applied (held: reopen-anyway)" in r.stdout

    r = run_cli("restore", incident, "--dry-run", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == [
        f"restore of {incident} would, newest first:",
        "  would-gate  block                  nft.block",
    ]
    assert "block (nft.block) is held: reopens a path from outside: undone only if the relay probe" in r.stdout

    rendered = Metrics(state_dir).render().splitlines()
    assert "lockdown_containment_active 1" in rendered
    assert 'lockdown_steps_held{decision="reopen-anyway"} 1' in rendered

    bundle = tmp_path / "b.tar.gz"
    r = run_cli("export", incident, "-o", str(bundle), "--no-report", "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    import tarfile

    with tarfile.open(bundle) as tar:
        member = tar.extractfile(f"{incident}/case.json")
        assert member is not None
        case = json.loads(member.read())
    assert case["containment_active"] is True
    (gate,) = case["timeline"]["gates"]
    assert (gate["verdict"], gate["kept"]) == ("open", ["block"])
    assert gate["transcript"] == [{"container": "lkd-mail", "lines": GATE_TRANSCRIPT}]
    r = run_cli("verify", str(bundle))
    assert r.returncode == 0, r.stdout + r.stderr


def test_damaged_journal_exports_and_verifies_without_an_internal_error(tmp_path: Path, state_dir: Path) -> None:
    incident = held_queue_incident(state_dir)
    path = state_dir / "incidents" / incident
    lines = lines_of(path)
    write_lines(path, [*lines[:2], nested(974), *lines[3:]])
    bundle = tmp_path / "b.tar.gz"
    r = run_cli("export", incident, "-o", str(bundle), "--no-report", state_dir=state_dir)
    assert r.returncode == 1, r.stderr
    assert "internal error" not in r.stderr
    r = run_cli("verify", str(bundle))
    assert r.returncode == 1
    assert error(r) == "lockdown: error: journal.jsonl: journal line 3: nested deeper than 64 levels"
