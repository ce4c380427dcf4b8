"""Evidence bundles: ``lockdown export`` and ``lockdown verify`` on real incidents.

The incidents come from the real CLI: a playbook that snapshots the host and
sets ``net.ipv6.conf.lo.disable_ipv6`` inside a network namespace made by the
test, so a bundle is taken while containment is active and again after
restore. Tampered bundles are rebuilt member by member; every failure is
asserted by its exact message and exit code. Malicious tarballs are built by
hand with tarfile and verify is run in an empty directory that must stay empty.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pty
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AS_NOBODY, REPO, run_cli, sh, unavailable, unique

SYSCTL = "net.ipv6.conf.lo.disable_ipv6"
PLAYBOOK = f"""
name = "evidence-test"
description = "Snapshot, change one namespaced sysctl, snapshot again."

[[steps]]
id = "host-before"
action = "snapshot.host"
file = "host-before.json"

[[steps]]
id = "no-v6"
action = "sysctl.set"
values = {{ "{SYSCTL}" = "1" }}

[[steps]]
id = "host-after"
action = "snapshot.host"
file = "host-after.json"
"""
HINT_MARK = "\n  -> "
Member = tuple[tarfile.TarInfo, bytes | None]


# ----------------------------------------------------------------- helpers


def lockdown(*args: str, cwd: Path | None = None, state_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, from any working directory."""
    env = dict(os.environ)
    env.pop("LOCKDOWN_STATE_DIR", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if state_dir is not None:
        env["LOCKDOWN_STATE_DIR"] = str(state_dir)
    cmd = [sys.executable, "-m", "lockdown", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def error(r: subprocess.CompletedProcess[str]) -> str:
    """The one ``lockdown: error:`` message on stderr, without its hint."""
    lines = [line for line in r.stderr.splitlines() if line.startswith("lockdown: error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0].removeprefix("lockdown: error: ")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sysctl(ns: str) -> str:
    return sh("ip", "netns", "exec", ns, "cat", "/proc/sys/" + SYSCTL.replace(".", "/")).stdout.strip()


def write_sidecar(bundle: Path, digest: str | None = None) -> None:
    digest = digest or sha(bundle.read_bytes())
    bundle.with_name(bundle.name + ".sha256").write_text(f"{digest}  {bundle.name}\n")


def read_members(bundle: Path) -> list[Member]:
    out: list[Member] = []
    with tarfile.open(bundle, "r:gz") as tar:
        for m in tar.getmembers():
            fh = tar.extractfile(m) if m.isfile() else None
            out.append((m, fh.read() if fh else None))
    return out


def write_bundle(path: Path, members: list[Member], *, sidecar: bool = True) -> Path:
    with (
        gzip.open(path, "wb", compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    if sidecar:
        write_sidecar(path)
    return path


def member_data(members: list[Member], rel: str) -> bytes:
    for info, data in members:
        if info.name.partition("/")[2] == rel:
            assert data is not None
            return data
    raise KeyError(rel)


def replace(members: list[Member], rel: str, data: bytes | None) -> list[Member]:
    """``rel`` with new content, or removed when ``data`` is None."""
    out: list[Member] = []
    for info, old in members:
        if info.name.partition("/")[2] == rel:
            if data is not None:
                out.append((info, data))
            continue
        out.append((info, old))
    return out


def add(members: list[Member], name: str, data: bytes) -> list[Member]:
    info = tarfile.TarInfo(name)
    info.mode = 0o600
    return [*members, (info, data)]


def verify(bundle: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return lockdown("verify", str(bundle), *args, cwd=cwd)


def case_of(bundle: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(member_data(read_members(bundle), "case.json"))
    return doc


@dataclass
class Real:
    ns: str
    state: Path
    incident: str
    during: Path
    after: Path
    base: Path


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    """A real containment in a fresh netns: bundle taken during it, and after restore."""
    if os.geteuid() != 0:
        unavailable("needs root")
    if shutil.which("ip") is None:
        unavailable("iproute2 is not installed")
    ns = unique()
    made = sh("ip", "netns", "add", ns, check=False)
    if made.returncode != 0:
        unavailable(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        base = tmp_path_factory.mktemp("evidence")
        state = base / "state"
        pb = base / "contain.toml"
        pb.write_text(PLAYBOOK)
        assert sysctl(ns) == "0"
        r = run_cli("run", str(pb), "--json", netns=ns, state_dir=state)
        assert r.returncode == 0, r.stderr
        incident = json.loads(r.stdout)["incident_id"]
        assert sysctl(ns) == "1"
        during = base / "during.tar.gz"
        r = lockdown("export", incident, "-o", str(during), state_dir=state)
        assert r.returncode == 0, r.stderr
        r = run_cli("restore", incident, netns=ns, state_dir=state)
        assert r.returncode == 0, r.stderr
        assert sysctl(ns) == "0"
        after = base / "after.tar.gz"
        r = lockdown("export", incident, "-o", str(after), state_dir=state)
        assert r.returncode == 0, r.stderr
        yield Real(ns, state, incident, during, after, base)
    finally:
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def members(real: Real) -> list[Member]:
    return read_members(real.after)


# ----------------------------------------------------------------- good bundles


def test_bundles_verify_during_containment_and_after_restore(real: Real) -> None:
    for bundle in (real.during, real.after):
        r = verify(bundle)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"✓ {bundle}: verified (incident {real.incident})" in r.stdout
        r = verify(bundle, "--json")
        doc = json.loads(r.stdout)
        assert doc["ok"] is True and doc["failure"] is None and doc["incident_id"] == real.incident
        assert [c["name"] for c in doc["checks"]] == ["sidecar", "archive", "manifest", "files", "journal", "case"]
        assert all(c["ok"] is True for c in doc["checks"])
        # the sidecar is plain sha256sum format
        if shutil.which("sha256sum"):
            check = subprocess.run(["sha256sum", "-c", bundle.name + ".sha256"], cwd=bundle.parent, capture_output=True)
            assert check.returncode == 0, check.stderr


def test_bundle_layout_and_case_json(real: Real) -> None:
    during, after = read_members(real.during), read_members(real.after)
    top = real.incident
    names = [m.name for m, _ in after]
    assert names[0] == top and names[-1] == f"{top}/case.json"
    assert set(names) == {
        top,
        f"{top}/incident.json",
        f"{top}/playbook.toml",
        f"{top}/journal.jsonl",
        f"{top}/journal.head",
        f"{top}/manifest.json",
        f"{top}/evidence",
        f"{top}/evidence/host-before.json",
        f"{top}/evidence/host-after.json",
        f"{top}/case.json",
    }
    assert all(m.isfile() or m.isdir() for m, _ in after)
    # the journal in the bundle is the one on disk (after restore nothing appends any more)
    incident_dir = real.state / "incidents" / top
    assert member_data(after, "journal.jsonl") == (incident_dir / "journal.jsonl").read_bytes()
    assert member_data(after, "journal.head").decode() == (incident_dir / "journal.head").read_text()
    case = json.loads(member_data(after, "case.json"))
    pb_text = member_data(after, "playbook.toml")
    assert case["incident_id"] == top
    assert case["playbook"]["text"] == PLAYBOOK and pb_text == PLAYBOOK.encode()
    assert (
        case["playbook"]["sha256"]
        == sha(pb_text)
        == json.loads(member_data(after, "incident.json"))["playbook"]["sha256"]
    )
    assert case["playbook"]["vars"] == {}
    assert case["trigger"]["kind"] == "cli" and " run " in case["trigger"]["command"]
    assert case["operator"]
    host = json.loads(member_data(after, "evidence/host-before.json"))
    assert case["incident_host"]["boot_id"] == host["boot_id"]
    assert case["incident_host"]["machine_id"] == host["machine_id"]
    for key in ("hostname", "machine_id", "boot_id", "kernel", "lockdown_version"):
        assert key in case["export_host"]
    assert case["journal"]["head"] == member_data(after, "journal.head").decode()
    steps = {s["id"]: s for s in case["timeline"]["steps"]}
    assert list(steps) == ["host-before", "no-v6", "host-after"]
    assert all(s["started"] and s["ended"] and s["started"] <= s["ended"] for s in steps.values())
    assert steps["no-v6"]["state"] == "undone" and steps["no-v6"]["undo_ended"]
    assert case["timeline"]["restores"][0]["status"] == "restored"
    assert case["containment_active"] is False
    # the bundle taken during containment says so, and has fewer journal lines
    case_during = json.loads(member_data(during, "case.json"))
    assert case_during["containment_active"] is True
    assert {s["id"]: s["state"] for s in case_during["timeline"]["steps"]}["no-v6"] == "applied"
    assert case_during["journal"]["lines"] < case["journal"]["lines"]
    files = {f["path"]: f for f in case["files"]}
    assert set(files) == {"incident.json", "playbook.toml", "journal.jsonl", "journal.head", "manifest.json"}
    for rel, rec in files.items():
        assert rec["sha256"] == sha(member_data(after, rel))


def test_export_json_and_default_name(real: Real, tmp_path: Path) -> None:
    r = lockdown("export", "--last", "--json", state_dir=real.state, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    bundle = tmp_path / f"{real.incident}.tar.gz"
    assert Path(doc["bundle"]) == bundle and bundle.is_file()
    assert doc["sha256"] == sha(bundle.read_bytes())
    assert (tmp_path / f"{real.incident}.tar.gz.sha256").read_text() == f"{doc['sha256']}  {bundle.name}\n"
    assert doc["evidence_files"] == 2 and doc["problems"] == [] and doc["not_exported"] == []
    assert bundle.stat().st_mode & 0o777 == 0o600


# ----------------------------------------------------------------- tampering


@pytest.mark.parametrize("rel", ["evidence/host-before.json", "evidence/host-after.json"])
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_flipped_byte_in_evidence_is_named_by_the_manifest_check(
    real: Real, members: list[Member], tmp_path: Path, rel: str, where: float
) -> None:
    data = bytearray(member_data(members, rel))
    pos = int(len(data) * where) if where >= 0 else len(data) - 1
    data[pos] ^= 0x01
    listed = {e["path"]: e["sha256"] for e in json.loads(member_data(members, "manifest.json"))["files"]}
    bundle = write_bundle(tmp_path / "t.tar.gz", replace(members, rel, bytes(data)))
    r = verify(bundle)
    assert r.returncode == 1
    assert error(r) == f"{rel}: SHA-256 mismatch (manifest {listed[rel]}, bundle {sha(bytes(data))})"


def test_flipped_byte_is_caught_by_the_sidecar_first(real: Real, members: list[Member], tmp_path: Path) -> None:
    bundle = tmp_path / real.after.name
    shutil.copy(real.after, bundle)
    shutil.copy(real.after.with_name(real.after.name + ".sha256"), tmp_path)
    data = bytearray(member_data(members, "evidence/host-after.json"))
    data[10] ^= 0x20
    original = sha(bundle.read_bytes())
    write_bundle(bundle.with_name("x"), replace(members, "evidence/host-after.json", bytes(data)), sidecar=False)
    bundle.with_name("x").replace(bundle)
    r = verify(bundle)
    assert r.returncode == 1
    side = bundle.name + ".sha256"
    assert (
        error(r)
        == f"{bundle.name}: SHA-256 mismatch with {side} (sidecar {original}, bundle {sha(bundle.read_bytes())})"
    )
    doc = json.loads(verify(bundle, "--json").stdout)
    # the other checks still ran, and name the file
    assert [c["ok"] for c in doc["checks"]] == [False, True, False, True, True, True]
    assert doc["checks"][2]["detail"].startswith("evidence/host-after.json: SHA-256 mismatch")


def test_deleted_evidence_file(members: list[Member], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "t.tar.gz", replace(members, "evidence/host-before.json", None))
    r = verify(bundle)
    assert r.returncode == 1
    assert error(r) == "evidence/host-before.json: listed in manifest.json but missing from the bundle"


def test_deleted_evidence_file_with_its_manifest_entry(members: list[Member], tmp_path: Path) -> None:
    doc = json.loads(member_data(members, "manifest.json"))
    doc["files"] = [f for f in doc["files"] if f["path"] != "evidence/host-before.json"]
    manifest = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
    old = member_data(members, "manifest.json")
    changed = replace(replace(members, "evidence/host-before.json", None), "manifest.json", manifest)
    r = verify(write_bundle(tmp_path / "t.tar.gz", changed))
    assert r.returncode == 1
    assert error(r) == f"manifest.json: size mismatch (case.json {len(old)} bytes, bundle {len(manifest)} bytes)"


def test_added_files(real: Real, members: list[Member], tmp_path: Path) -> None:
    top = real.incident
    bundle = write_bundle(tmp_path / "a.tar.gz", add(members, f"{top}/evidence/extra.txt", b"planted\n"))
    r = verify(bundle)
    assert r.returncode == 1
    # refused from the tar header, before its data is read
    assert error(r) == f'bundle member "{top}/evidence/extra.txt": not listed in manifest.json; not read'
    bundle = write_bundle(tmp_path / "b.tar.gz", add(members, f"{top}/README", b"planted\n"))
    r = verify(bundle)
    assert r.returncode == 1
    assert error(r) == f'bundle member "{top}/README": not part of the bundle layout; not read'
    # a second copy of a member that is already there (tar extractors keep the last one)
    bundle = write_bundle(tmp_path / "c.tar.gz", add(members, f"{top}/evidence/host-after.json", b"{}\n"))
    r = verify(bundle)
    assert r.returncode == 1
    assert error(r) == f'bundle member "{top}/evidence/host-after.json": appears twice'


def _journal_lines(members: list[Member]) -> list[bytes]:
    return member_data(members, "journal.jsonl").split(b"\n")[:-1]


def _with_journal(members: list[Member], lines: list[bytes], head: str | None = None) -> list[Member]:
    out = replace(members, "journal.jsonl", b"".join(line + b"\n" for line in lines))
    return replace(out, "journal.head", head.encode()) if head is not None else out


HEAD_MISMATCH = (
    "journal.jsonl: journal.head matches neither of its last two lines: the journal was truncated or rewritten, "
    "or lines were appended"
)


def test_edited_journal_line(members: list[Member], tmp_path: Path) -> None:
    lines = _journal_lines(members)
    assert len(lines) >= 8
    entry = json.loads(lines[2])
    entry["time"] = "2000-01-01T00:00:00.000000Z"
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    r = verify(write_bundle(tmp_path / "t.tar.gz", _with_journal(members, lines)))
    assert r.returncode == 1
    assert error(r) == (
        "journal.jsonl: journal line 4 (seq 4) does not chain to the line before it: "
        "a line was edited, inserted or removed"
    )


def test_edited_last_journal_line(members: list[Member], tmp_path: Path) -> None:
    lines = _journal_lines(members)
    lines[-1] = lines[-1].replace(b'"restored"', b'"partial"')
    r = verify(write_bundle(tmp_path / "t.tar.gz", _with_journal(members, lines)))
    assert r.returncode == 1
    assert error(r) == HEAD_MISMATCH


def test_removed_middle_journal_line(members: list[Member], tmp_path: Path) -> None:
    lines = _journal_lines(members)
    del lines[3]
    r = verify(write_bundle(tmp_path / "t.tar.gz", _with_journal(members, lines)))
    assert r.returncode == 1
    assert error(r) == (
        "journal.jsonl: journal line 4 (seq 5) does not chain to the line before it: "
        "a line was edited, inserted or removed"
    )


def test_removed_last_journal_line(members: list[Member], tmp_path: Path) -> None:
    lines = _journal_lines(members)[:-1]
    r = verify(write_bundle(tmp_path / "a.tar.gz", _with_journal(members, lines)))
    assert r.returncode == 1
    assert error(r) == HEAD_MISMATCH
    # ... and with journal.head rewritten to match, case.json still knows the real journal
    old, new = member_data(members, "journal.jsonl"), b"".join(line + b"\n" for line in lines)
    r = verify(write_bundle(tmp_path / "b.tar.gz", _with_journal(members, lines, head=sha(lines[-1]))))
    assert r.returncode == 1
    assert error(r) == f"journal.jsonl: size mismatch (case.json {len(old)} bytes, bundle {len(new)} bytes)"


def test_line_appended_after_the_head(members: list[Member], tmp_path: Path) -> None:
    lines = _journal_lines(members)
    extra = {"seq": len(lines) + 1, "time": "2099-01-01T00:00:00Z", "phase": "restore-end", "prev": sha(lines[-1])}
    lines.append(json.dumps(extra, sort_keys=True, separators=(",", ":")).encode())
    r = verify(write_bundle(tmp_path / "t.tar.gz", _with_journal(members, lines)))
    assert r.returncode == 1
    assert error(r) == "journal.jsonl: its last line is not the one journal.head names (a line was added)"


def test_case_json_is_tied_to_the_rest(real: Real, members: list[Member], tmp_path: Path) -> None:
    case = json.loads(member_data(members, "case.json"))

    def with_case(doc: dict[str, Any], name: str) -> Path:
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        return write_bundle(tmp_path / name, replace(members, "case.json", data))

    doc = json.loads(json.dumps(case))
    doc["playbook"]["text"] += "# edited\n"
    r = verify(with_case(doc, "a.tar.gz"))
    assert error(r) == f"case.json: the playbook text does not match its SHA-256 {case['playbook']['sha256']}"
    doc = json.loads(json.dumps(case))
    doc["timeline"]["steps"][1]["started"] = "2000-01-01T00:00:00.000000Z"
    r = verify(with_case(doc, "b.tar.gz"))
    assert error(r) == "case.json: timeline differs from the journal (step 'no-v6')"
    doc = json.loads(json.dumps(case))
    doc["trigger"] = {"kind": "webhook"}
    r = verify(with_case(doc, "c.tar.gz"))
    assert error(r) == "case.json: trigger differs from incident.json"
    doc = json.loads(json.dumps(case))
    doc["incident_id"] = "20000101T000000Z-other-0000"
    r = verify(with_case(doc, "d.tar.gz"))
    assert (
        error(r)
        == f"case.json: incident id '20000101T000000Z-other-0000' is not the bundle's top directory '{real.incident}'"
    )
    # playbook.toml edited (same size): case.json's file list catches it ...
    pb = bytearray(member_data(members, "playbook.toml"))
    pb[1] ^= 0x01
    r = verify(write_bundle(tmp_path / "e.tar.gz", replace(members, "playbook.toml", bytes(pb))))
    old = sha(member_data(members, "playbook.toml"))
    assert error(r) == f"playbook.toml: SHA-256 mismatch (case.json {old}, bundle {sha(bytes(pb))})"
    # ... and with that list fixed too, the recorded playbook hash does
    doc = json.loads(json.dumps(case))
    for rec in doc["files"]:
        if rec["path"] == "playbook.toml":
            rec["sha256"] = sha(bytes(pb))
    changed = replace(replace(members, "playbook.toml", bytes(pb)), "case.json", json.dumps(doc).encode())
    r = verify(write_bundle(tmp_path / "f.tar.gz", changed))
    assert error(r) == f"case.json: playbook SHA-256 {old} does not match playbook.toml ({sha(bytes(pb))})"
    r = verify(write_bundle(tmp_path / "g.tar.gz", replace(members, "case.json", None)))
    assert error(r) == "case.json is missing from the bundle"


def test_truncated_bundle(real: Real, tmp_path: Path) -> None:
    data = real.after.read_bytes()
    for name, cut in (("half", len(data) // 2), ("trailer", len(data) - 4), ("header", 5)):
        bundle = tmp_path / f"{name}.tar.gz"
        bundle.write_bytes(data[:cut])
        write_sidecar(bundle)
        r = verify(bundle)
        assert r.returncode == 1, name
        assert error(r) == "bundle is truncated or corrupt: the gzip stream ends before its end marker", name
        # with the sidecar of the whole bundle, the sidecar is the first failure
        write_sidecar(bundle, sha(data))
        r = verify(bundle)
        assert r.returncode == 1
        assert error(r) == (
            f"{bundle.name}: SHA-256 mismatch with {bundle.name}.sha256 (sidecar {sha(data)}, bundle {sha(data[:cut])})"
        )
    # a flipped byte in the gzip CRC
    bundle = tmp_path / "crc.tar.gz"
    bundle.write_bytes(data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:])
    write_sidecar(bundle)
    r = verify(bundle)
    assert r.returncode == 1
    assert error(r).startswith("bundle is truncated or corrupt: not a valid gzip stream (CRC check failed")


def test_sidecar_problems(real: Real, tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar.gz"
    shutil.copy(real.after, bundle)
    side = tmp_path / "b.tar.gz.sha256"
    wrong = sha(b"something else")
    write_sidecar(bundle, wrong)
    r = verify(bundle)
    assert r.returncode == 1
    assert (
        error(r)
        == f"b.tar.gz: SHA-256 mismatch with b.tar.gz.sha256 (sidecar {wrong}, bundle {sha(bundle.read_bytes())})"
    )
    side.write_text(f"{sha(bundle.read_bytes())}  other.tar.gz\n")
    r = verify(bundle)
    assert r.returncode == 1
    assert error(r) == 'b.tar.gz.sha256: no "<sha256>  b.tar.gz" line (sha256sum format)'
    side.unlink()
    r = verify(bundle)
    assert r.returncode == 1
    assert error(r) == "b.tar.gz.sha256 is missing; the bundle's own hash cannot be checked"
    r = verify(bundle, "--no-sidecar")
    assert r.returncode == 0, r.stderr
    assert "- sidecar   not checked (--no-sidecar)" in r.stdout


def test_verify_json_on_failure(members: list[Member], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "t.tar.gz", replace(members, "evidence/host-before.json", None))
    r = verify(bundle, "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False
    assert doc["failure"] == "evidence/host-before.json: listed in manifest.json but missing from the bundle"
    assert [(c["name"], c["ok"]) for c in doc["checks"]] == [
        ("sidecar", True),
        ("archive", True),
        ("manifest", False),
        ("files", True),
        ("journal", True),
        ("case", True),
    ]
    assert error(r) == doc["failure"]


def test_verify_bad_arguments(tmp_path: Path) -> None:
    r = lockdown("verify", str(tmp_path / "nope.tar.gz"))
    assert r.returncode == 2
    assert error(r) == f"no such file: {tmp_path / 'nope.tar.gz'}"
    r = lockdown("verify", str(tmp_path))
    assert r.returncode == 2
    assert error(r) == f"{tmp_path} is not a regular file"


# ----------------------------------------------------------------- malicious tarballs

TOP = "20261122T234500Z-evil-0bad"


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _zeros(n: int) -> io.RawIOBase:
    class Zeros(io.RawIOBase):
        left = n

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k

    return Zeros()


def evil(tmp_path: Path, target: Path) -> dict[str, tuple[list[Member], str]]:
    """Each hostile bundle, and the failure verify must name."""
    head = [(_info(TOP, tarfile.DIRTYPE), None), (_info(f"{TOP}/evidence", tarfile.DIRTYPE), None)]
    abs_name = str(target / "pwned")
    return {
        "absolute": ([*head, (_info(abs_name), b"x")], f'bundle member "{abs_name}": absolute path'),
        "absolute-first": ([(_info(abs_name), b"x")], f'bundle member "{abs_name}": absolute path'),
        "dotdot": (
            [*head, (_info(f"{TOP}/../../lkd-evil/pwned"), b"x")],
            f'bundle member "{TOP}/../../lkd-evil/pwned": ".." path component',
        ),
        "symlink": (
            [*head, (_info(f"{TOP}/evidence/link", tarfile.SYMTYPE, linkname=str(target)), None)],
            f'bundle member "{TOP}/evidence/link": symbolic link (to "{target}"); '
            "only regular files and directories are allowed in a bundle",
        ),
        "hardlink": (
            [*head, (_info(f"{TOP}/evidence/hl", tarfile.LNKTYPE, linkname="/etc/passwd"), None)],
            f'bundle member "{TOP}/evidence/hl": hard link (to "/etc/passwd"); '
            "only regular files and directories are allowed in a bundle",
        ),
        "chardev": (
            [*head, (_info(f"{TOP}/evidence/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
            f'bundle member "{TOP}/evidence/null": character device file; '
            "only regular files and directories are allowed in a bundle",
        ),
        "blockdev": (
            [*head, (_info(f"{TOP}/evidence/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None)],
            f'bundle member "{TOP}/evidence/sda": block device file; '
            "only regular files and directories are allowed in a bundle",
        ),
        "fifo": (
            [*head, (_info(f"{TOP}/evidence/pipe", tarfile.FIFOTYPE), None)],
            f'bundle member "{TOP}/evidence/pipe": FIFO; only regular files and directories are allowed in a bundle',
        ),
        "outside-top": (
            [*head, (_info("20261122T234500Z-other-0bad/x"), b"x")],
            f'bundle member "20261122T234500Z-other-0bad/x": outside the bundle\'s top directory "{TOP}"',
        ),
        "not-an-incident": (
            [(_info("etc/passwd"), b"x")],
            "bundle member \"etc/passwd\": the top directory 'etc' is not an incident id",
        ),
        "huge-metadata": (
            [*head, (_info(f"{TOP}/journal.head"), b"0" * 5000)],
            f'bundle member "{TOP}/journal.head": 5000 bytes, more than the 4096 bytes allowed for journal.head',
        ),
        "pax-bomb": (
            [*head, (_info(f"{TOP}/evidence/x", pax_headers={"comment": "A" * (2 << 20)}), b"x")],
            "bundle member header is larger than 1048576 bytes (a hostile PAX or long-name header)",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "absolute",
        "absolute-first",
        "dotdot",
        "symlink",
        "hardlink",
        "chardev",
        "blockdev",
        "fifo",
        "outside-top",
        "not-an-incident",
        "huge-metadata",
        "pax-bomb",
    ],
)
def test_malicious_tarball_is_reported_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    target = tmp_path / "outside"
    cwd = tmp_path / "deep" / "cwd"
    cwd.mkdir(parents=True)
    built, expected = evil(tmp_path, target)[case]
    bundle = write_bundle(tmp_path / "evil.tar.gz", built)
    r = verify(bundle, cwd=cwd)
    assert r.returncode == 1, r.stdout + r.stderr
    assert error(r) == expected
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "evil.tar.gz", "evil.tar.gz.sha256"]
    assert not (tmp_path / "lkd-evil").exists() and not target.exists()
    doc = json.loads(verify(bundle, "--json", cwd=cwd).stdout)
    assert [c["ok"] for c in doc["checks"]] == [True, False, None, None, None, None]


def test_huge_member_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A member far larger than manifest.json says is refused from its header."""
    size = 200 << 20
    manifest = {"version": 1, "files": [{"path": "evidence/big.bin", "size": 10, "sha256": sha(bytes(10))}]}
    bundle = tmp_path / "huge.tar.gz"
    with gzip.open(bundle, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.addfile(_info(TOP, tarfile.DIRTYPE))
        data = json.dumps(manifest).encode()
        tar.addfile(_info(f"{TOP}/manifest.json", size=len(data)), io.BytesIO(data))
        tar.addfile(_info(f"{TOP}/evidence/big.bin", size=size), _zeros(size))  # type: ignore[arg-type]
    write_sidecar(bundle)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    t0 = time.monotonic()
    r = verify(bundle, cwd=cwd)
    assert r.returncode == 1
    assert (
        error(r) == f'bundle member "{TOP}/evidence/big.bin": {size} bytes, but manifest.json lists 10 bytes; not read'
    )
    assert list(cwd.iterdir()) == []
    assert time.monotonic() - t0 < 60


# ----------------------------------------------------------------- export input and safety


def test_export_never_overwrites(real: Real, tmp_path: Path) -> None:
    target = tmp_path / "case.tar.gz"
    target.write_bytes(b"keep me")
    r = lockdown("export", real.incident, "-o", str(target), state_dir=real.state)
    assert r.returncode == 2
    assert error(r) == f"{target} already exists; export never overwrites a file"
    assert "-> choose another name with -o, or move the existing file away" in r.stderr
    assert target.read_bytes() == b"keep me"
    assert not (tmp_path / "case.tar.gz.sha256").exists()
    # an existing sidecar is not overwritten either, and then no bundle is written
    other = tmp_path / "other.tar.gz"
    (tmp_path / "other.tar.gz.sha256").write_text("keep\n")
    r = lockdown("export", real.incident, "-o", str(other), state_dir=real.state)
    assert r.returncode == 2
    assert error(r) == f"{other}.sha256 already exists; export never overwrites a file"
    assert not other.exists() and (tmp_path / "other.tar.gz.sha256").read_text() == "keep\n"
    # nor is a dangling symlink followed
    link = tmp_path / "link.tar.gz"
    link.symlink_to(tmp_path / "victim")
    r = lockdown("export", real.incident, "-o", str(link), state_dir=real.state)
    assert r.returncode == 2
    assert not (tmp_path / "victim").exists()


@pytest.mark.parametrize("bad", ["../x", "..", "a/b", "/etc", "20261122T234500Z-x-0000/../../etc", ""])
def test_export_rejects_bad_incident_ids(real: Real, tmp_path: Path, bad: str) -> None:
    r = lockdown("export", bad, state_dir=real.state, cwd=tmp_path)
    assert r.returncode == 2
    if bad:
        assert error(r) == (
            f"invalid incident id {bad!r}: expected something like 20261122T234500Z-relay-incident-3f2a"
        )
    else:
        assert error(r) == "which incident? give its id or --last"
    assert list(tmp_path.iterdir()) == []


def test_export_unknown_or_symlinked_incident(real: Real, tmp_path: Path) -> None:
    r = lockdown("export", "20261122T234500Z-nothing-0000", state_dir=real.state, cwd=tmp_path)
    assert r.returncode == 2
    assert error(r) == f"no incident 20261122T234500Z-nothing-0000 in {real.state / 'incidents'}"
    state = tmp_path / "state"
    (state / "incidents").mkdir(parents=True)
    fake = "20261122T234500Z-linked-0000"
    (state / "incidents" / fake).symlink_to(real.state / "incidents" / real.incident)
    r = lockdown("export", fake, state_dir=state, cwd=tmp_path)
    assert r.returncode == 2
    assert error(r) == f"no incident {fake} in {state / 'incidents'}"
    r = lockdown("export", real.incident, "--last", state_dir=real.state, cwd=tmp_path)
    assert r.returncode == 2
    assert error(r) == "give an INCIDENT or --last, not both"


def _copy_state(real: Real, tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    shutil.copytree(real.state, state, symlinks=True)
    (state / "lock").unlink(missing_ok=True)
    return state, state / "incidents" / real.incident


def _tar_bytes(bundle: Path) -> bytes:
    with gzip.open(bundle) as fh:
        return fh.read()


def test_export_never_follows_a_symlink_out_of_the_incident(real: Real, tmp_path: Path) -> None:
    state, incident_dir = _copy_state(real, tmp_path)
    secret = tmp_path / "secret.txt"
    marker = f"TOP-SECRET-{unique()}"
    secret.write_text(marker)
    (incident_dir / "evidence" / "host-before.json").unlink()
    (incident_dir / "evidence" / "host-before.json").symlink_to(secret)
    out = tmp_path / "out.tar.gz"
    r = lockdown("export", real.incident, "-o", str(out), state_dir=state)
    assert r.returncode == 1
    assert error(r) == (
        f"exported {out}, but the incident itself fails its integrity checks: "
        "evidence/host-before.json: listed in manifest.json but it is a symbolic link; not exported"
    )
    assert marker.encode() not in _tar_bytes(out)
    r = verify(out)
    assert r.returncode == 1
    assert error(r) == "evidence/host-before.json: listed in manifest.json but missing from the bundle"


def test_export_leaves_out_unlisted_and_special_files(real: Real, tmp_path: Path) -> None:
    state, incident_dir = _copy_state(real, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = f"TOP-SECRET-{unique()}"
    (outside / "shadow").write_text(marker)
    (incident_dir / "evidence" / "linked-dir").symlink_to(outside)
    (incident_dir / "evidence" / "partial.log").write_text("being written\n")
    os.mkfifo(incident_dir / "evidence" / "pipe")
    (incident_dir / "notes.txt").write_text("operator notes\n")
    out = tmp_path / "out.tar.gz"
    r = lockdown("export", real.incident, "-o", str(out), state_dir=state)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "lockdown: warning: notes.txt: not exported: not part of the incident layout",
        "lockdown: warning: evidence/linked-dir: not exported: a symbolic link; never followed",
        "lockdown: warning: evidence/partial.log: not exported: "
        "not listed in manifest.json (still being written, or left by a crash)",
        "lockdown: warning: evidence/pipe: not exported: a FIFO; only regular files are exported",
    ]
    assert marker.encode() not in _tar_bytes(out)
    assert [n["path"] for n in case_of(out)["not_exported"]] == [
        "notes.txt",
        "evidence/linked-dir",
        "evidence/partial.log",
        "evidence/pipe",
    ]
    assert verify(out).returncode == 0


def test_evidence_changed_on_disk_is_exported_as_is_and_reported(real: Real, tmp_path: Path) -> None:
    state, incident_dir = _copy_state(real, tmp_path)
    path = incident_dir / "evidence" / "host-after.json"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    files = json.loads((incident_dir / "manifest.json").read_text())["files"]
    listed = next(e["sha256"] for e in files if e["path"] == "evidence/host-after.json")
    out = tmp_path / "out.tar.gz"
    r = lockdown("export", real.incident, "-o", str(out), state_dir=state)
    assert r.returncode == 1
    problem = f"evidence/host-after.json: on disk its SHA-256 is {sha(bytes(data))}, manifest.json says {listed}"
    assert error(r) == f"exported {out}, but the incident itself fails its integrity checks: {problem}"
    r = verify(out)
    assert error(r) == f"evidence/host-after.json: SHA-256 mismatch (manifest {listed}, bundle {sha(bytes(data))})"


# ----------------------------------------------------------------- live incidents


def test_export_while_a_run_holds_the_lock(netns: str, tmp_path: Path, state_dir: Path) -> None:
    from lockdown.actions import REGISTRY

    if "wait" not in REGISTRY:
        pytest.skip("the wait action is not available")
    pb = tmp_path / "slow.toml"
    pb.write_text(PLAYBOOK + '\n[[steps]]\nid = "pause"\naction = "wait"\nseconds = 6\n')
    env = dict(os.environ, LOCKDOWN_STATE_DIR=str(state_dir))
    run = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "lockdown", "run", str(pb)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        journal: Path | None = None
        while time.monotonic() < deadline:
            found = (
                list((state_dir / "incidents").glob("*/journal.jsonl")) if (state_dir / "incidents").is_dir() else []
            )
            if found and b'"step":"pause"' in found[0].read_bytes():
                journal = found[0]
                break
            time.sleep(0.05)
        assert journal is not None, "the run never reached its wait step"
        incident = journal.parent.name
        assert json.loads((state_dir / "lock").read_text())["incident"] == incident
        out = tmp_path / "live.tar.gz"
        r = lockdown("export", incident, "-o", str(out), state_dir=state_dir)
        assert r.returncode == 0, r.stderr
        assert run.poll() is None, "the export must not wait for the run"
        assert sysctl(netns) == "1"
        r = verify(out)
        assert r.returncode == 0, r.stdout + r.stderr
        case = case_of(out)
        assert case["containment_active"] is True
        assert case["timeline"]["run"]["ended"] is None
        assert {s["id"]: s["state"] for s in case["timeline"]["steps"]}["pause"] == "running"
    finally:
        _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    r = run_cli("restore", "--last", netns=netns, state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert sysctl(netns) == "0"


def test_snapshot_is_consistent_while_the_journal_grows(tmp_path: Path) -> None:
    """A writer appends journal lines and evidence as fast as it can; every export still verifies."""
    from lockdown.record.journal import Journal
    from lockdown.record.store import EvidenceStore

    state = tmp_path / "state"
    r = run_cli("run", "host-snapshot", "--json", state_dir=state)
    assert r.returncode == 0, r.stderr
    incident = json.loads(r.stdout)["incident_id"]
    incident_dir = state / "incidents" / incident
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            journal = Journal.open(incident_dir)
            store = EvidenceStore(incident_dir)
            n = 0
            while not stop.is_set():
                n += 1
                journal.append("note", step="host", message=f"line {n}", pad="x" * (n % 200))
                if n % 7 == 0:
                    store.write_bytes(f"extra-{n}.txt", os.urandom(1000 + n), step="host", action="test")
            journal.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        lines = []
        for i in range(4):
            out = tmp_path / f"grow-{i}.tar.gz"
            r = lockdown("export", incident, "-o", str(out), state_dir=state)
            assert r.returncode == 0, r.stderr
            r = verify(out)
            assert r.returncode == 0, r.stdout + r.stderr
            lines.append(case_of(out)["journal"]["lines"])
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert lines == sorted(lines) and lines[-1] > lines[0], lines


# ----------------------------------------------------------------- streaming


#: Linux carries a process's peak RSS across exec, and a child starts with its
#: parent's: wait4 from pytest would report pytest's own peak. A bare
#: interpreter (about 10 MiB) spawns the command and reports its wait4 figure.
LAUNCHER = """
import json, os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump([os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024], fh)
"""


def _run_measured(cmd: list[str], *, stderr_tty: bool = False) -> tuple[int, int, str]:
    """Run ``cmd``; return (exit code, peak RSS in bytes of that process alone, stderr text)."""
    with tempfile.NamedTemporaryFile("r") as result:
        _, _, err = _run_launched([sys.executable, "-S", "-c", LAUNCHER, result.name, *cmd], stderr_tty)
        code, rss = json.loads(result.read() or "[-1, 0]")
    return int(code), int(rss), err


def _run_launched(cmd: list[str], stderr_tty: bool) -> tuple[int, int, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    chunks: list[bytes] = []
    if stderr_tty:
        master, slave = pty.openpty()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)

        def pump() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                chunks.append(data)

        reader = threading.Thread(target=pump)
        reader.start()
    else:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not stderr_tty:
        assert proc.stderr is not None
        chunks.append(proc.stderr.read())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if stderr_tty:
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, usage.ru_maxrss * 1024, b"".join(chunks).decode("utf-8", "replace")


WRITE_BIG = """
import sys
from pathlib import Path
from lockdown.record.store import EvidenceStore

total = int(sys.argv[2])
lines = []
i = 0
while sum(map(len, lines)) < (1 << 20):
    i += 1
    lines.append(
        f"Nov 22 23:45:{i % 60:02d} mx postfix/smtp[{1000 + i % 9000}]: {i:08X}: to=<user{i % 977}@example.net>, "
        f"relay=mx{i % 13}.example.net[192.0.2.{i % 250}]:25, delay={i % 97}.{i % 10}, status=sent (250 ok)\\n"
    )
block = "".join(lines).encode()

def chunks():
    done = 0
    n = 0
    while done < total:
        n += 1
        piece = (b"chunk %d " % n + block)[: total - done]
        done += len(piece)
        yield piece

EvidenceStore(Path(sys.argv[1])).write_stream("mail.log", chunks(), step="bulk", action="test")
"""


@pytest.mark.slow
def test_large_export_streams_with_bounded_memory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = run_cli("run", "host-snapshot", "--json", state_dir=state)
    assert r.returncode == 0, r.stderr
    incident = json.loads(r.stdout)["incident_id"]
    size = 300 * 1000 * 1000
    w = subprocess.run(
        [sys.executable, "-c", WRITE_BIG, str(state / "incidents" / incident), str(size)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert w.returncode == 0, w.stderr
    out = tmp_path / "big.tar.gz"
    code, rss, err = _run_measured(
        [sys.executable, "-m", "lockdown", "export", incident, "-o", str(out), "--state-dir", str(state)],
        stderr_tty=True,
    )
    assert code == 0, err
    assert rss < 100 * (1 << 20), f"export peak RSS {rss / (1 << 20):.1f} MiB"
    assert "exporting" in err and "%" in err, "a progress bar on a terminal"
    assert case_of_small(out)["evidence"]["bytes"] > size
    code, rss, err = _run_measured([sys.executable, "-m", "lockdown", "verify", str(out)])
    assert code == 0, err
    assert rss < 100 * (1 << 20), f"verify peak RSS {rss / (1 << 20):.1f} MiB"


def case_of_small(bundle: Path) -> dict[str, Any]:
    """case.json of a big bundle, streamed (it is the last member)."""
    with tarfile.open(bundle, "r|gz") as tar:
        for m in tar:
            if m.name.endswith("/case.json"):
                fh = tar.extractfile(m)
                assert fh is not None
                doc: dict[str, Any] = json.loads(fh.read())
                return doc
    raise AssertionError("no case.json")


# ----------------------------------------------------------------- case.json sources


def test_case_json_host_identity_comes_from_the_run(real: Real) -> None:
    """machine-id, boot id, kernel, host name and version are those recorded when the run started."""
    case = json.loads(member_data(read_members(real.after), "case.json"))
    meta = json.loads((real.state / "incidents" / real.incident / "incident.json").read_text())
    host = case["incident_host"]
    assert host["ids_from"] == "incident.json"
    assert host["machine_id"] == meta["machine_id"] == Path("/etc/machine-id").read_text().strip()
    assert host["boot_id"] == meta["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert (host["hostname"], host["kernel"]) == (os.uname().nodename, os.uname().release)  # the host itself
    assert (host["hostname"], host["kernel"], host["lockdown_version"]) == (
        meta["host"],
        meta["kernel"],
        meta["lockdown_version"],
    )
    assert case["operator"] == meta["operator"]
    # `lockdown --version` prints the version the bundle records (issue 12)
    version = run_cli("--version")
    assert (version.returncode, version.stdout, version.stderr) == (0, f"lockdown {host['lockdown_version']}\n", "")


WEBHOOK_PLAYBOOK = """
name = "webhook-test"
description = "read-only: one host snapshot"
[[steps]]
id = "host"
action = "snapshot.host"
"""


def test_alert_payload_that_fired_the_run_is_the_trigger_in_case_json(tmp_path: Path) -> None:
    """An alert through the serve/watch dispatcher: its payload and its repeats travel into the bundle."""
    from lockdown.triggers.config import load_config
    from lockdown.triggers.dedup import EventLog
    from lockdown.triggers.dispatch import Alert, Dispatcher

    state = tmp_path / "state"
    (tmp_path / "webhook.toml").write_text(WEBHOOK_PLAYBOOK)
    config = tmp_path / "lockdown.toml"
    config.write_text(f'state_dir = "{state}"\n[[routes]]\nalert = "MailRelaySurge"\nplaybook = "webhook.toml"\n')
    payload = {
        "receiver": "lockdown",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "MailRelaySurge", "instance": "mx1"},
                "annotations": {"summary": "outbound mail to qq.com x40"},
                "startsAt": "2026-11-22T23:43:00Z",
                "fingerprint": "f00dfeed",
            }
        ],
    }
    alert = Alert("MailRelaySurge", "firing", "f00dfeed", "2026-11-22T23:43:00Z", payload["alerts"][0])
    dispatcher = Dispatcher(load_config(config, read_secrets=False), state, log=EventLog(state, "serve.log"))
    dispatcher.prepare()
    first = dispatcher.handle("alertmanager", alert, payload=payload, received="2026-11-22T23:43:01Z", t0=0.0)
    assert first.result == "started", first
    assert dispatcher.wait(60)
    repeat = dispatcher.handle("alertmanager", alert, payload=payload, received="2026-11-22T23:43:05Z", t0=0.0)
    assert (repeat.result, repeat.incident_id) == ("duplicate", first.incident_id)
    out = tmp_path / "alert.tar.gz"
    r = lockdown("export", str(first.incident_id), "-o", str(out), state_dir=state)
    assert r.returncode == 0, r.stderr
    assert verify(out).returncode == 0
    members = read_members(out)
    case = json.loads(member_data(members, "case.json"))
    assert case["trigger"]["kind"] == "alertmanager"
    assert case["trigger"]["payload"] == payload
    assert case["trigger"]["received"] == "2026-11-22T23:43:01Z"
    repeats = [json.loads(line) for line in member_data(members, "triggers.jsonl").splitlines()]
    assert [(t["result"], t["received"]) for t in repeats] == [("duplicate", "2026-11-22T23:43:05Z")]
    assert {f["path"] for f in case["files"]} >= {"triggers.jsonl"}


# ----------------------------------------------------------------- the incident report (issue 8)


def postfix_log(n: int) -> str:
    """``n`` messages relayed to qq.com from the Docker gateway without SASL: the incident's signature."""
    lines = []
    for i in range(n):
        q, s = f"4F1A2B3C{i:02X}", f"{10 + i % 50:02d}"
        lines += [
            f"Nov 22 23:43:{s} mail postfix/smtpd[100]: connect from unknown[172.17.0.1]",
            f"Nov 22 23:43:{s} mail postfix/smtpd[100]: {q}: client=unknown[172.17.0.1]",
            f"Nov 22 23:43:{s} mail postfix/cleanup[101]: {q}: message-id=<{i}@spam.example>",
            f"Nov 22 23:43:{s} mail postfix/qmgr[102]: {q}: from=<bot{i}@spam.example>, size=1000, nrcpt=1 "
            "(queue active)",
            f"Nov 22 23:43:{s} mail postfix/smtp[103]: {q}: to=<{1000 + i}@qq.com>, "
            "relay=mx1.qq.com[203.0.113.7]:25, delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 OK)",
            f"Nov 22 23:43:{s} mail postfix/qmgr[102]: {q}: removed",
        ]
    return "\n".join(lines) + "\n"


def logs_playbook(*paths: Path) -> str:
    quoted = ", ".join(f'"{p}"' for p in paths)
    return f"""
name = "mail-evidence"
description = "collect host mail logs"
[[steps]]
id = "logs"
action = "logs.files"
container = "none"
host_paths = [{quoted}]
"""


@dataclass
class MailIncident:
    state: Path
    incident: str
    log: Path
    messages: int


def _mail_incident(tmp_path: Path, name: str, content: str, messages: int) -> MailIncident:
    if not Path("/var/run/docker.sock").exists():
        unavailable("logs.files needs the Docker socket (its privilege check)")
    log = tmp_path / name
    log.write_text(content)
    pb = tmp_path / "logs.toml"
    pb.write_text(logs_playbook(log))
    state = tmp_path / "state"
    r = run_cli("run", str(pb), "--json", state_dir=state)
    assert r.returncode == 0, r.stdout + r.stderr
    return MailIncident(state, json.loads(r.stdout)["incident_id"], log, messages)


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> MailIncident:
    return _mail_incident(tmp_path_factory.mktemp("mail"), "mail.log", postfix_log(7), 7)


def test_export_includes_the_report_when_the_incident_has_logs(mail: MailIncident, tmp_path: Path) -> None:
    out = tmp_path / "mail.tar.gz"
    r = lockdown("export", mail.incident, "-o", str(out), state_dir=mail.state)
    assert r.returncode == 0, r.stderr
    assert "  report:  report/report.html, report/report.json (7 outside message(s))" in r.stdout
    v = verify(out, "--json")
    assert v.returncode == 0, v.stdout
    members = read_members(out)
    top = mail.incident
    names = {m.name for m, _ in members}
    assert {f"{top}/report", f"{top}/report/report.html", f"{top}/report/report.json"} <= names
    log_rel = f"evidence/files/host{mail.log}"
    assert member_data(members, log_rel) == mail.log.read_bytes()
    # the same figures as `lockdown report INCIDENT --json`, from the same logs
    doc = json.loads(member_data(members, "report/report.json"))
    direct = json.loads(lockdown("report", mail.incident, "--json", state_dir=mail.state).stdout)
    assert (doc["messages"], doc["outside_messages"]) == (7, 7)
    for key in ("messages", "outside_messages", "signature_messages", "by_client", "first_abuse", "last_abuse"):
        assert doc[key] == direct[key], key
    # no inspect data in this incident: the gateways are the live engine's or Docker's default pools
    from lockdown.mail.parser import GatewayMatcher

    assert doc["gateway_source"] in ("docker", "default-pools") and doc["gateways"]
    assert doc["signature_messages"] == (7 if GatewayMatcher(doc["gateways"])("172.17.0.1") else 0)
    assert doc["incident"]["incident_id"] == top
    html = member_data(members, "report/report.html").decode()
    assert html.startswith("<!doctype html>") or html.lower().startswith("<!doctype html>")
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    # derived, not collected: in case.json's file list, never in manifest.json
    case = json.loads(member_data(members, "case.json"))
    files = {f["path"]: f for f in case["files"]}
    for rel in ("report/report.html", "report/report.json"):
        assert files[rel]["sha256"] == sha(member_data(members, rel))
    assert all(not e["path"].startswith("report") for e in json.loads(member_data(members, "manifest.json"))["files"])
    rep = case["report"]
    assert rep["included"] is True and rep["files"] == ["report/report.html", "report/report.json"]
    assert log_rel in rep["sources"] and rep["summary"]["outside_messages"] == 7


def test_tampered_or_removed_report_is_detected(mail: MailIncident, tmp_path: Path) -> None:
    out = tmp_path / "mail.tar.gz"
    assert lockdown("export", mail.incident, "-o", str(out), state_dir=mail.state).returncode == 0
    members = read_members(out)
    html = member_data(members, "report/report.html")
    edited = html.replace(b"qq.com", b"qq.org", 1)
    r = verify(write_bundle(tmp_path / "a.tar.gz", replace(members, "report/report.html", edited)))
    assert r.returncode == 1
    assert error(r) == f"report/report.html: SHA-256 mismatch (case.json {sha(html)}, bundle {sha(edited)})"
    # both report files gone and case.json's file list edited to match: case.json still says it was there
    case = json.loads(member_data(members, "case.json"))
    case["files"] = [f for f in case["files"] if not f["path"].startswith("report/")]
    gone = replace(replace(members, "report/report.html", None), "report/report.json", None)
    gone = replace(gone, "case.json", json.dumps(case).encode())
    r = verify(write_bundle(tmp_path / "b.tar.gz", gone))
    assert r.returncode == 1
    assert error(r) == "case.json: says the incident report is included, but report/report.html is not in its file list"
    # a report slipped into such a bundle is a file that nothing accounts for
    r = verify(write_bundle(tmp_path / "c.tar.gz", add(gone, f"{mail.incident}/report/report.html", html)))
    assert r.returncode == 1
    assert error(r) == "report/report.html: in the bundle but not listed in case.json"


def test_no_report_option_and_incidents_without_logs(mail: MailIncident, real: Real, tmp_path: Path) -> None:
    out = tmp_path / "plain.tar.gz"
    r = lockdown("export", mail.incident, "-o", str(out), "--no-report", "--json", state_dir=mail.state)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["report"]["reason"] == "not requested (--no-report)"
    assert not any("/report" in m.name for m, _ in read_members(out))
    assert verify(out).returncode == 0
    case = json.loads(member_data(read_members(real.after), "case.json"))
    assert case["report"]["included"] is False
    assert case["report"]["reason"] == "the evidence holds no mail logs"


def test_a_report_that_cannot_be_built_does_not_fail_the_export(tmp_path: Path) -> None:
    """A ``.gz`` log that is not gzip: the parser raises; the bundle is still written and verifies."""
    inc = _mail_incident(tmp_path, "mail.log.gz", postfix_log(3), 3)
    out = tmp_path / "bad-log.tar.gz"
    r = lockdown("export", inc.incident, "-o", str(out), "--json", state_dir=inc.state)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["report"]["included"] is False
    assert doc["report"]["error"].startswith("BadGzipFile: ")
    assert r.stderr.startswith(
        "lockdown: warning: the incident report was not built (the bundle is complete without it): BadGzipFile: "
    )
    # a bad log is not a bug: no traceback file, and the next step is named
    assert "traceback" not in doc["report"]
    assert f"  -> `lockdown report {inc.incident} --html FILE` builds it on its own\n" in r.stderr
    assert verify(out).returncode == 0
    case = case_of(out)
    assert case["report"]["error"] == doc["report"]["error"]
    assert f"the incident report was not built: {doc['report']['error']}" in case["notes"]
    assert member_data(read_members(out), f"evidence/files/host{inc.log}") == inc.log.read_bytes()


def test_a_bug_in_the_report_keeps_its_traceback(mail: MailIncident, tmp_path: Path, monkeypatch: Any) -> None:
    from lockdown.evidence.export import export_incident
    from lockdown.mail import report as mail_report

    def broken(rep: Any) -> str:
        raise TypeError("a bug in render_html")

    monkeypatch.setattr(mail_report, "render_html", broken)
    out = tmp_path / "bug.tar.gz"
    rep = export_incident(mail.state, mail.incident, out).report
    assert rep["included"] is False and rep["error"] == "TypeError: a bug in render_html"
    tb = Path(rep["traceback"])
    try:
        assert "TypeError: a bug in render_html" in tb.read_text()
    finally:
        tb.unlink()
    assert verify(out).returncode == 0


def test_report_is_skipped_above_the_log_size_cap(mail: MailIncident, tmp_path: Path, monkeypatch: Any) -> None:
    from lockdown.evidence import manifest as mf
    from lockdown.evidence.export import export_incident

    monkeypatch.setattr(mf, "REPORT_MAX_LOG_BYTES", 100)
    out = tmp_path / "capped.tar.gz"
    result = export_incident(mail.state, mail.incident, out)
    rep = result.report
    assert rep["included"] is False and rep["log_bytes"] > 100
    assert rep["reason"] == (
        f"its logs are {rep['log_bytes']} bytes, more than the 100 a bundle's report is built from; "
        f"run `lockdown report {mail.incident} --html FILE`"
    )
    assert verify(out).returncode == 0
    # what the bundle on disk says, not only what export returned
    assert case_of(out)["report"] == json.loads(json.dumps(rep))
    assert not any("/report/" in m.name for m, _ in read_members(out))


# ----------------------------------------------------------------- verify without root, without Docker



def as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HOME": str(cwd),
        "DOCKER_HOST": f"unix://{cwd}/no-such-dir/docker.sock",
        "LOCKDOWN_STATE_DIR": str(cwd / "no-state"),
    }
    cmd = [sys.executable, "-c", AS_NOBODY, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_verify_runs_as_nobody_with_docker_unreachable(real: Real, tmp_path: Path, members: list[Member]) -> None:
    if os.geteuid() != 0:
        unavailable("needs root to switch to nobody")
    work = tmp_path / "public"
    work.mkdir()
    tmp_path.chmod(0o755)
    work.chmod(0o755)
    for src in (real.after, real.after.with_name(real.after.name + ".sha256")):
        shutil.copy(src, work / src.name)
        (work / src.name).chmod(0o644)
    r = as_nobody("verify", real.after.name, cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"✓ {real.after.name}: verified (incident {real.incident})" in r.stdout
    # tampering is still found and named
    bad = write_bundle(work / "bad.tar.gz", replace(members, "evidence/host-before.json", None))
    for p in (bad, bad.with_name("bad.tar.gz.sha256")):
        p.chmod(0o644)
    r = as_nobody("verify", "bad.tar.gz", cwd=work)
    assert r.returncode == 1
    assert error(r) == "evidence/host-before.json: listed in manifest.json but missing from the bundle"
    # the privileges really are gone: a root-only copy cannot be opened, and export is refused
    secret = work / "root-only.tar.gz"
    shutil.copy(real.after, secret)
    secret.chmod(0o600)
    r = as_nobody("verify", "root-only.tar.gz", cwd=work)
    assert r.returncode == 2
    # click's wording ("path"/"Path") differs between typer releases; the message is the same
    assert error(r).lower() == "invalid value for 'bundle': path 'root-only.tar.gz' is not readable."
    r = as_nobody("export", real.incident, "--state-dir", str(real.state), cwd=work)
    assert r.returncode == 4
    assert error(r) == f"cannot read incident {real.incident} in {real.state}: permission denied"
    assert "-> run as root (the state dir and incident directories are 0700)" in r.stderr
    assert {p.name for p in work.iterdir()} == {
        "bad.tar.gz",
        "bad.tar.gz.sha256",
        real.after.name,
        real.after.name + ".sha256",
        "root-only.tar.gz",
    }


# ----------------------------------------------------------------- progress bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_with_json() -> None:
    from lockdown.cli.evidence_cmd import PROGRESS_MIN_BYTES, ProgressBar

    total = PROGRESS_MIN_BYTES * 2
    shown = _Terminal()
    bar = ProgressBar(shown, "exporting x")
    bar(total // 2, total)
    bar(total, total)
    bar.finish()
    text = shown.getvalue()
    assert "\rexporting x [###############---------------]  50.0%" in text
    assert " 100.0% " in text and text.endswith("\r\x1b[2K")
    for stream, json_out in ((_Terminal(), True), (io.StringIO(), False)):
        bar = ProgressBar(stream, "exporting x", json_out=json_out)
        bar(total, total)
        bar.finish()
        assert stream.getvalue() == ""
    small = _Terminal()
    ProgressBar(small, "exporting x")(1, PROGRESS_MIN_BYTES - 1)
    assert small.getvalue() == ""


def test_a_batch_registers_its_files_with_one_manifest_write_at_its_end(tmp_path: Path) -> None:
    """postfix.hold_queue saves one file per queued message inside ``batch()``: each file is
    complete when closed, but manifest.json is written once, when the batch ends (a crash
    inside leaves them unlisted, as files still being written), and every name stays unique."""
    from lockdown.record.store import EvidenceStore, load_manifest

    incident = tmp_path / "inc"
    incident.mkdir()
    store = EvidenceStore(incident)
    store.write_bytes("before.txt", b"one", step="s", action="a")
    assert [e.path for e in load_manifest(incident)] == ["evidence/before.txt"]
    with store.batch():
        for i in range(50):
            store.write_bytes(f"queue/m/{i}.txt", f"message {i}".encode(), step="hold", action="postfix.hold_queue")
        store.write_bytes("queue/m/0.txt", b"same name", step="hold", action="postfix.hold_queue")
        assert (incident / "evidence" / "queue" / "m" / "49.txt").read_bytes() == b"message 49"
        assert [e.path for e in load_manifest(incident)] == ["evidence/before.txt"]  # not yet listed
    listed = {e.path: e for e in load_manifest(incident)}
    assert len(listed) == 52 and "evidence/queue/m/0-2.txt" in listed
    assert listed["evidence/queue/m/7.txt"].sha256 == hashlib.sha256(b"message 7").hexdigest()
    with pytest.raises(RuntimeError), store.batch():  # a step that fails mid-way: what it closed is listed
        store.write_bytes("queue/m/late.txt", b"late", step="hold", action="postfix.hold_queue")
        raise RuntimeError("docker went away")
    assert "evidence/queue/m/late.txt" in {e.path for e in load_manifest(incident)}
