"""``lockdown verify``: check a bundle without extracting it, without root and without Docker.

The bundle is read once, as a stream: raw bytes -> SHA-256 (for the sidecar)
-> gzip (CRC and length checked at the end) -> tar headers. No member is ever
written to disk. Member data is hashed chunk by chunk; only the small
metadata files (manifest, journal, case.json, ...) are kept in memory, each
under a fixed cap, so memory stays bounded for any bundle, hostile or not.

Checks, in the order their failures are reported (the first failure is the
one named):

``sidecar``   the bundle's SHA-256 equals ``FILE.sha256`` (sha256sum format)
``archive``   gzip and tar are intact; every member is a regular file or a
              directory under one ``<incident-id>/`` top directory, with a
              safe relative name, at most once, and not larger than allowed
``manifest``  every file listed in ``manifest.json`` is in the bundle with
              the listed size and SHA-256
``files``     no file that nothing accounts for: nothing under ``evidence/``
              that ``manifest.json`` does not list, nothing else outside the
              bundle layout
``journal``   the journal's hash chain is intact and ends exactly at
              ``journal.head``
``case``      ``case.json`` agrees with the bundle: incident id, the size and
              SHA-256 of every file outside ``evidence/`` (including the
              derived ``report/`` when there is one), the journal head, line
              count and hash, the playbook hash (against ``playbook.toml``,
              its own text and ``incident.json``), the trigger, the vars and
              the timeline recomputed from the journal
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lockdown.engine.journal import GENESIS, check_chain, line_hash
from lockdown.errors import BadInput, IntegrityError
from lockdown.evidence import manifest as mf
from lockdown.evidence.manifest import sidecar_path
from lockdown.evidence.store import EVIDENCE_DIR, MANIFEST, ManifestEntry
from lockdown.paths import INCIDENT_ID_RE

#: Bytes ``tarfile`` may read for one member's headers (PAX, GNU long names).
HEADER_BUDGET = 1 << 20
_LAYOUT = "only regular files and directories are allowed in a bundle"
CHECK_NAMES = ("sidecar", "archive", "manifest", "files", "journal", "case")


@dataclass
class Check:
    """One named check: ``ok`` is True, False, or None when it was not run."""

    name: str
    ok: bool | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class VerifyReport:
    bundle: Path
    checks: list[Check] = field(default_factory=list)
    incident_id: str | None = None
    sha256: str | None = None
    #: Checks the caller chose to skip (``--no-sidecar``): "not checked" is not a pass otherwise.
    waived: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return all(c.ok is True or (c.ok is None and c.name in self.waived) for c in self.checks)

    @property
    def failure(self) -> str | None:
        """The first failed check, else the first one that was not run and not waived."""
        failed = next((c.detail for c in self.checks if c.ok is False), None)
        if failed is None:
            failed = next((c.detail for c in self.checks if c.ok is None and c.name not in self.waived), None)
        return failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bundle": str(self.bundle),
            "incident_id": self.incident_id,
            "sha256": self.sha256,
            "checks": [c.as_dict() for c in self.checks],
            "failure": self.failure,
        }

    def raise_for_failure(self) -> None:
        """Raise IntegrityError naming the first failure (exit code 1)."""
        if self.failure is not None:
            raise IntegrityError(
                self.failure,
                hint="the bundle does not match what lockdown exported; do not rely on it",
            )


def read_sidecar(bundle: Path) -> str | None:
    """The SHA-256 that ``FILE.sha256`` gives for ``FILE``, or None if there is no sidecar."""
    path = sidecar_path(bundle)
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 16)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IntegrityError(f"{path.name}: cannot read: {exc.strerror}") from None
    for line in data.decode("utf-8", "replace").splitlines():
        digest, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*")
        if mf.is_sha256(digest.lower()) and Path(name).name == bundle.name:
            return digest.lower()
    raise IntegrityError(f'{path.name}: no "<sha256>  {bundle.name}" line (sha256sum format)')


class _HashingSource:
    """The raw bundle file; every byte read is hashed (for the sidecar)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data

    def seek(self, n: int) -> int:
        raise io.UnsupportedOperation("a bundle is read as a stream")

    def drain(self) -> str:
        while self.read(mf.CHUNK):
            pass
        return self.hash.hexdigest()


class _HeaderTooLarge(Exception):
    pass


class _Budget:
    """Decompressed tar stream; limits what tarfile may read while it parses headers."""

    def __init__(self, inner: gzip.GzipFile) -> None:
        self.inner = inner
        self.limit: int | None = None
        self.used = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        if self.limit is not None:
            self.used += len(data)
            if self.used > self.limit:
                raise _HeaderTooLarge
        return data

    def headers(self) -> None:
        self.limit, self.used = HEADER_BUDGET, 0

    def data(self) -> None:
        self.limit = None


@dataclass
class _Member:
    size: int
    sha256: str


class _Scan:
    """What one pass over the tar stream found: hashes of every file, a few small files' bytes."""

    def __init__(self) -> None:
        self.top: str | None = None
        self.files: dict[str, _Member] = {}
        self.order: list[str] = []
        self.dirs: set[str] = set()
        self.kept: dict[str, bytes] = {}
        self.members = 0
        self.manifest: list[ManifestEntry] | None = None
        self.manifest_index: dict[str, ManifestEntry] = {}
        self.manifest_error: str | None = None


def _member_problem(member: tarfile.TarInfo, scan: _Scan) -> str | None:
    """Why ``member`` is not acceptable in a bundle, or None."""
    name = member.name
    where = f'bundle member "{name}"'
    if name.startswith("/"):
        return f"{where}: absolute path"
    if ".." in name.split("/"):
        return f'{where}: ".." path component'
    if member.issym():
        return f'{where}: symbolic link (to "{member.linkname}"); {_LAYOUT}'
    if member.islnk():
        return f'{where}: hard link (to "{member.linkname}"); {_LAYOUT}'
    if member.ischr() or member.isblk():
        kind = "character" if member.ischr() else "block"
        return f"{where}: {kind} device file; {_LAYOUT}"
    if member.isfifo():
        return f"{where}: FIFO; {_LAYOUT}"
    if member.issparse():
        return f"{where}: sparse file; {_LAYOUT}"
    if not (member.isdir() or member.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)):
        return f"{where}: member type {member.type!r}; {_LAYOUT}"
    top, _, rel = name.partition("/")
    if scan.top is None:
        if not INCIDENT_ID_RE.match(top):
            return f"{where}: the top directory {top!r} is not an incident id"
        scan.top = top
    elif top != scan.top:
        return f'{where}: outside the bundle\'s top directory "{scan.top}"'
    if rel and not mf.safe_member_path(rel):
        return f"{where}: unsafe name (only letters, digits and ._@+=- in each part)"
    if not rel and not member.isdir():
        return f"{where}: the top {top!r} must be a directory"
    if rel in scan.files or (member.isdir() and rel in scan.dirs):
        return f"{where}: appears twice"
    if member.isdir():
        return None
    cap = mf.MAX_IN_MEMORY.get(rel)
    if cap is not None and member.size > cap:
        return f"{where}: {member.size} bytes, more than the {cap} bytes allowed for {rel}"
    if scan.manifest is not None:
        listed = scan.manifest_index.get(rel)
        if listed is not None and member.size > listed.size:
            return f"{where}: {member.size} bytes, but manifest.json lists {listed.size} bytes; not read"
    return None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str, scan: _Scan) -> None:
    fh = tar.extractfile(member)
    if fh is None:  # pragma: no cover - regular members always have data
        raise tarfile.ReadError(f"no data for {member.name}")
    h = hashlib.sha256()
    keep = rel in mf.MAX_IN_MEMORY
    parts: list[bytes] = []
    size = 0
    while chunk := fh.read(mf.CHUNK):
        h.update(chunk)
        size += len(chunk)
        if keep:
            parts.append(chunk)
    if size != member.size:
        raise tarfile.ReadError(f"{member.name}: unexpected end of data")
    scan.files[rel] = _Member(size, h.hexdigest())
    scan.order.append(rel)
    if keep:
        scan.kept[rel] = b"".join(parts)
    if rel == MANIFEST:
        try:
            scan.manifest = mf.parse_manifest(scan.kept[rel])
            scan.manifest_index = {e.path: e for e in scan.manifest}
        except IntegrityError as exc:
            scan.manifest_error = exc.message


def _scan(source: _HashingSource, scan: _Scan) -> str | None:
    """Read the whole archive. Returns the archive failure, or None."""
    try:
        gz = gzip.GzipFile(fileobj=source, mode="rb")
        budget = _Budget(gz)
        budget.headers()  # tarfile reads the first header when it opens
        with tarfile.open(fileobj=budget, mode="r|", bufsize=1 << 16) as tar:  # type: ignore[call-overload]
            while True:
                budget.headers()
                member = tar.next()
                budget.data()
                if member is None:
                    break
                tar.members.clear()  # stream mode keeps every header otherwise
                scan.members += 1
                if scan.members > mf.MAX_MEMBERS:
                    return f"bundle has more than {mf.MAX_MEMBERS} members"
                problem = _member_problem(member, scan)
                if problem is not None:
                    return problem
                rel = member.name.partition("/")[2]
                if member.isdir():
                    scan.dirs.add(rel)
                    continue
                _read_member(tar, member, rel, scan)
            # what follows the end-of-archive blocks must be zero padding
            rest = getattr(tar.fileobj, "buf", b"")
            while True:
                if isinstance(rest, bytes) and rest.strip(b"\0"):
                    return "bundle has data after the end of the tar archive"
                rest = gz.read(mf.CHUNK)
                if not rest:
                    break
    except _HeaderTooLarge:
        return f"bundle member header is larger than {HEADER_BUDGET} bytes (a hostile PAX or long-name header)"
    except EOFError:
        return "bundle is truncated or corrupt: the gzip stream ends before its end marker"
    except gzip.BadGzipFile as exc:
        return f"bundle is truncated or corrupt: not a valid gzip stream ({exc})"
    except zlib.error as exc:
        return f"bundle is truncated or corrupt: invalid compressed data ({exc})"
    except tarfile.TarError as exc:
        return f"bundle is truncated or corrupt: invalid tar data ({exc})"
    except OSError as exc:
        return f"bundle is truncated or corrupt: read error ({exc})"
    if scan.top is None:
        return "bundle is empty"
    return None


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _check_manifest(scan: _Scan) -> Check:
    if MANIFEST not in scan.files:
        return Check("manifest", False, f"{MANIFEST} is missing from the bundle")
    if scan.manifest_error is not None or scan.manifest is None:
        return Check("manifest", False, scan.manifest_error or f"{MANIFEST}: unreadable")
    total = 0
    for entry in scan.manifest:
        found = scan.files.get(entry.path)
        if found is None:
            return Check("manifest", False, f"{entry.path}: listed in {MANIFEST} but missing from the bundle")
        if found.size != entry.size:
            return Check(
                "manifest",
                False,
                f"{entry.path}: size mismatch (manifest {entry.size} bytes, bundle {found.size} bytes)",
            )
        if not _eq(found.sha256, entry.sha256):
            return Check(
                "manifest",
                False,
                f"{entry.path}: SHA-256 mismatch (manifest {entry.sha256}, bundle {found.sha256})",
            )
        total += found.size
    return Check("manifest", True, f"{len(scan.manifest)} evidence file(s), {total} bytes, match {MANIFEST}")


def _check_files(scan: _Scan) -> Check:
    listed = {e.path for e in scan.manifest or []}
    for rel in scan.order:
        if rel.startswith(EVIDENCE_DIR + "/"):
            if rel not in listed:
                return Check("files", False, f"{rel}: in the bundle but not listed in {MANIFEST}")
        elif rel not in mf.KNOWN_TOP_FILES:
            return Check("files", False, f"{rel}: in the bundle but not part of the bundle layout")
    return Check("files", True, f"no file that {MANIFEST} or {mf.CASE_JSON} does not account for")


def _check_journal(scan: _Scan) -> tuple[Check, list[dict[str, Any]]]:
    for rel in (mf.JOURNAL, mf.HEAD):
        if rel not in scan.kept:
            return Check("journal", False, f"{rel} is missing from the bundle"), []
    data = scan.kept[mf.JOURNAL]
    head = scan.kept[mf.HEAD].decode("ascii", "replace").strip()
    report = check_chain(data, head)
    if not report.intact:
        return Check("journal", False, f"{mf.JOURNAL}: {report.problem}"), report.entries
    if report.torn_tail:
        return Check("journal", False, f"{mf.JOURNAL}: ends with an incomplete line"), report.entries
    lines = data.split(b"\n")[:-1]
    last = line_hash(lines[-1]) if lines else GENESIS
    if not _eq(last, head):
        return (
            Check("journal", False, f"{mf.JOURNAL}: its last line is not the one {mf.HEAD} names (a line was added)"),
            report.entries,
        )
    return Check("journal", True, f"hash chain intact: {len(lines)} line(s), head {head}"), report.entries


def _json(scan: _Scan, rel: str) -> dict[str, Any]:
    try:
        doc = json.loads(scan.kept.get(rel, b"{}"))
    except ValueError:
        raise IntegrityError(f"{rel}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{rel}: expected an object")
    return doc


def _case_problem(scan: _Scan, entries: list[dict[str, Any]]) -> str | None:
    if mf.CASE_JSON not in scan.kept:
        return f"{mf.CASE_JSON} is missing from the bundle"
    case = mf.parse_case(scan.kept[mf.CASE_JSON])
    if case["incident_id"] != scan.top:
        return f"{mf.CASE_JSON}: incident id {case['incident_id']!r} is not the bundle's top directory {scan.top!r}"
    records = mf.case_files(case)
    recorded = {r.path for r in records}
    for rel in mf.REQUIRED_TOP_FILES:
        if rel not in scan.files:
            return f"{rel} is missing from the bundle"
    for rec in records:
        found = scan.files.get(rec.path)
        if found is None:
            return f"{rec.path}: listed in {mf.CASE_JSON} but missing from the bundle"
        if found.size != rec.size:
            return f"{rec.path}: size mismatch ({mf.CASE_JSON} {rec.size} bytes, bundle {found.size} bytes)"
        if not _eq(found.sha256, rec.sha256):
            return f"{rec.path}: SHA-256 mismatch ({mf.CASE_JSON} {rec.sha256}, bundle {found.sha256})"
    for rel in scan.order:
        if not rel.startswith(EVIDENCE_DIR + "/") and rel != mf.CASE_JSON and rel not in recorded:
            return f"{rel}: in the bundle but not listed in {mf.CASE_JSON}"
    report = case.get("report")
    if isinstance(report, dict) and report.get("included"):
        for rel in (mf.REPORT_HTML, mf.REPORT_JSON):
            if rel not in recorded:
                return f"{mf.CASE_JSON}: says the incident report is included, but {rel} is not in its file list"
    journal = case["journal"]
    head = scan.kept[mf.HEAD].decode("ascii", "replace").strip()
    if journal.get("head") != head:
        return f"{mf.CASE_JSON}: journal head {journal.get('head')} does not match {mf.HEAD} ({head})"
    if journal.get("lines") != len(entries):
        return f"{mf.CASE_JSON}: journal has {len(entries)} line(s), {mf.CASE_JSON} says {journal.get('lines')}"
    playbook = case["playbook"]
    pb_sha = scan.files[mf.PLAYBOOK].sha256
    if not isinstance(playbook.get("sha256"), str) or not _eq(playbook["sha256"], pb_sha):
        return f"{mf.CASE_JSON}: playbook SHA-256 {playbook.get('sha256')} does not match {mf.PLAYBOOK} ({pb_sha})"
    text = playbook.get("text")
    if not isinstance(text, str) or not _eq(mf.sha256_hex(text.encode()), pb_sha):
        return f"{mf.CASE_JSON}: the playbook text does not match its SHA-256 {pb_sha}"
    meta = _json(scan, mf.INCIDENT_JSON)
    if meta.get("incident_id", scan.top) != scan.top:
        return f"{mf.INCIDENT_JSON}: incident id {meta.get('incident_id')!r} is not the bundle's {scan.top!r}"
    meta_pb = meta.get("playbook") if isinstance(meta.get("playbook"), dict) else {}
    assert isinstance(meta_pb, dict)
    if isinstance(meta_pb.get("sha256"), str) and not _eq(meta_pb["sha256"], pb_sha):
        return f"{mf.INCIDENT_JSON}: playbook SHA-256 {meta_pb['sha256']} does not match {mf.PLAYBOOK} ({pb_sha})"
    timeline = mf.timeline_of(entries)
    run_start = timeline.run_start or {}
    for key, expected, source in (
        ("trigger", meta.get("trigger", run_start.get("trigger")), mf.INCIDENT_JSON),
        ("vars", meta.get("vars", run_start.get("vars")), mf.INCIDENT_JSON),
    ):
        got = case.get(key) if key == "trigger" else playbook.get(key)
        if got != expected:
            return f"{mf.CASE_JSON}: {key} differs from {source}"
    ours = timeline.as_dict()
    theirs = case.get("timeline")
    if ours != theirs:
        bad = _first_timeline_difference(ours, theirs)
        return f"{mf.CASE_JSON}: timeline differs from the journal ({bad})"
    return None


def _first_timeline_difference(ours: dict[str, Any], theirs: object) -> str:
    if not isinstance(theirs, dict):
        return "no timeline"
    if ours["run"] != theirs.get("run"):
        return "run start/end"
    their_steps = theirs.get("steps") if isinstance(theirs.get("steps"), list) else []
    assert isinstance(their_steps, list)
    for i, step in enumerate(ours["steps"]):
        if i >= len(their_steps) or step != their_steps[i]:
            return f"step {step['id']!r}"
    if len(their_steps) != len(ours["steps"]):
        return "number of steps"
    return "restores"


def verify_bundle(bundle: Path, *, require_sidecar: bool = True) -> VerifyReport:
    """Run every check on ``bundle``. Raises BadInput when it cannot be opened at all.

    Integrity failures do not raise: they are in the report (``raise_for_failure``).
    """
    report = VerifyReport(bundle, waived=frozenset() if require_sidecar else frozenset({"sidecar"}))
    try:
        fd = os.open(bundle, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadInput(f"no such file: {bundle}") from None
    except OSError as exc:
        raise BadInput(f"cannot open {bundle}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInput(f"{bundle} is not a regular file")
    with open(fd, "rb") as raw:
        try:
            expected: str | None = read_sidecar(bundle)
            sidecar_problem = None
        except IntegrityError as exc:
            expected, sidecar_problem = None, exc.message
        source = _HashingSource(raw)
        scan = _Scan()
        archive_problem = _scan(source, scan)
        report.sha256 = source.drain()
    report.incident_id = scan.top
    side = sidecar_path(bundle).name
    if sidecar_problem is not None:
        report.checks.append(Check("sidecar", False, sidecar_problem))
    elif expected is None:
        if require_sidecar:
            report.checks.append(Check("sidecar", False, f"{side} is missing; the bundle's own hash cannot be checked"))
        else:
            report.checks.append(Check("sidecar", None, f"not checked (--no-sidecar); SHA-256 {report.sha256}"))
    elif not _eq(expected, report.sha256):
        detail = f"{bundle.name}: SHA-256 mismatch with {side} (sidecar {expected}, bundle {report.sha256})"
        report.checks.append(Check("sidecar", False, detail))
    else:
        report.checks.append(Check("sidecar", True, f"SHA-256 {report.sha256} matches {side}"))
    if archive_problem is not None:
        report.checks.append(Check("archive", False, archive_problem))
        for name in CHECK_NAMES[2:]:
            report.checks.append(Check(name, None, "not checked: the archive could not be read safely to its end"))
        return report
    report.checks.append(
        Check("archive", True, f"{scan.members} members, only regular files and directories under {scan.top}/")
    )
    report.checks.append(_check_manifest(scan))
    report.checks.append(_check_files(scan))
    journal_check, entries = _check_journal(scan)
    report.checks.append(journal_check)
    try:
        problem = _case_problem(scan, entries) if journal_check.ok else "not checked: the journal is not intact"
    except IntegrityError as exc:
        problem = exc.message
    if problem is None:
        report.checks.append(
            Check("case", True, f"{mf.CASE_JSON} agrees with the journal, {mf.INCIDENT_JSON} and {mf.PLAYBOOK}")
        )
    elif problem.startswith("not checked"):
        report.checks.append(Check("case", None, problem))
    else:
        report.checks.append(Check("case", False, problem))
    return report

