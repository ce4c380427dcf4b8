"""``lockdown verify``: check a bundle without extracting it, without root and without Docker.

The bundle is read once, as a stream: raw bytes -> SHA-256 (for the sidecar)
-> gzip (CRC and length checked at the end) -> tar headers. No member is ever
written to disk. Member data is hashed chunk by chunk; only the small
metadata files (manifest, case.json, incident.json, ...) are kept in memory,
each under a fixed cap, and parsed only within a budget of JSON values. The
journal (up to 256 MiB) is never kept: its chain and timeline are checked
line by line as it streams past. A member that nothing can account for is
refused from its tar header, before its data is read. So memory stays
bounded (under 100 MiB: bench/bench_verify.py) for any bundle, hostile or not.

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
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lockdown import jsonsafe
from lockdown.errors import BadInput, IntegrityError
from lockdown.evidence import manifest as mf
from lockdown.evidence.manifest import sidecar_path
from lockdown.paths import INCIDENT_ID_RE
from lockdown.record.journal import GENESIS, line_hash
from lockdown.record.store import EVIDENCE_DIR, MANIFEST, ManifestEntry

#: Bytes ``tarfile`` may read for one member's headers (PAX, GNU long names).
HEADER_BUDGET = 1 << 20
#: The journal is checked line by line as it streams past and never kept: one
#: line may be at most this long (lockdown's longest, an ``ipv6.strip`` intent
#: with every address and route, is a few KiB).
MAX_JOURNAL_LINE = 1 << 20
#: A parsed JSON document costs up to ~70 bytes per value (``[{},{},...]``:
#: a 64-byte dict per 3 bytes of text). ``{``, ``[`` and ``,`` bound the number
#: of values from above, so a document with more of them than this is refused
#: before it is parsed: at most ~35 MiB while it is.
MAX_JSON_VALUES = 500_000
#: The timeline keeps one record per planned step and per restore; a journal
#: may hold at most this many of each.
MAX_PLAN_STEPS = 1000
MAX_RESTORES = 10_000
#: Timestamps and statuses are kept in the timeline: they must be short strings.
MAX_SCALAR = 256
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
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer (issue 13: verify hung)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IntegrityError(f"{path.name}: cannot read: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise IntegrityError(f"{path.name}: not a regular file ({_file_kind(mode)}); not read")
    with open(fd, "rb") as fh:
        data = fh.read(1 << 16)
    for line in data.decode("utf-8", "replace").splitlines():
        digest, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*")
        if mf.is_sha256(digest.lower()) and Path(name).name == bundle.name:
            return digest.lower()
    raise IntegrityError(f'{path.name}: no "<sha256>  {bundle.name}" line (sha256sum format)')


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


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


@dataclass(slots=True)
class _Member:
    size: int
    sha256: str


def _entry_problem(entry: dict[str, Any], number: int, planned: int) -> str | None:
    """Why a chained journal entry cannot go into the timeline, or None.

    The timeline keeps times, statuses and one record per planned step; a
    journal whose hash chain is consistent can still hold anything, so its
    shape is checked here, before it is used (issue 13: a ``plan`` that is an
    int, or steps numbered with mixed types, crashed verify).
    """
    where = f"journal line {number}"
    for key in ("time", "status"):
        value = entry.get(key)
        if value is not None and not (isinstance(value, str) and len(value) <= MAX_SCALAR):
            return f"{where}: {key} is not a string of at most {MAX_SCALAR} characters"
    if entry.get("phase") != "run-start":
        return None
    plan = entry.get("plan")
    if plan is None:
        return None
    if not isinstance(plan, list):
        return f"{where}: run-start plan is a {type(plan).__name__}, expected a list of steps"
    if planned + len(plan) > MAX_PLAN_STEPS:
        return f"{where}: run-start plan has more than {MAX_PLAN_STEPS} steps"
    for index, item in enumerate(plan, start=1):
        if not (
            isinstance(item, dict)
            and type(item.get("number")) is int
            and isinstance(item.get("id"), str)
            and len(item["id"]) <= MAX_SCALAR
            and isinstance(item.get("action"), str)
            and len(item["action"]) <= MAX_SCALAR
        ):
            return (
                f"{where}: run-start plan step {index} is not an object with an integer number "
                "and a string id and action"
            )
    return None


class _JournalCheck:
    """The journal's hash chain and timeline, checked line by line as the member streams past.

    Why streaming: a 256 MiB journal of tiny lines is millions of Python
    objects when it is kept and parsed at once (issue 13: verify peaked at
    2.95 GB for 35 KB compressed). Only the current line, the last two line
    hashes and the timeline (capped: planned steps, restores) are held.
    """

    def __init__(self) -> None:
        self.partial = bytearray()
        self.lines = 0
        self.last = GENESIS
        self.before_last: str | None = None
        self.problem: str | None = None
        self.timeline = mf.TimelineBuilder()
        self.planned = 0
        self.restores = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while self.problem is None:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                self.partial += chunk[start:]
                if len(self.partial) > MAX_JOURNAL_LINE:
                    self.problem = f"journal line {self.lines + 1} is longer than {MAX_JOURNAL_LINE} bytes"
                return
            if self.partial:
                self.partial += chunk[start:nl]
                line = bytes(self.partial)
                self.partial.clear()
            else:
                line = chunk[start:nl]
            start = nl + 1
            self._line(line)

    def _line(self, raw: bytes) -> None:
        number = self.lines + 1
        if len(raw) > MAX_JOURNAL_LINE:
            self.problem = f"journal line {number} is longer than {MAX_JOURNAL_LINE} bytes"
            return
        try:
            entry = jsonsafe.loads(raw, what=f"journal line {number}")
        except jsonsafe.JSONError as exc:
            self.problem = str(exc)
            return
        if not isinstance(entry, dict):
            self.problem = f"journal line {number} is not an object"
        elif entry.get("prev") != self.last:
            self.problem = (
                f"journal line {number} (seq {_short(entry.get('seq'))}) does not chain to the line "
                "before it: a line was edited, inserted or removed"
            )
        elif entry.get("seq") != number:
            self.problem = f"journal line {number} has seq {_short(entry.get('seq'))}, expected {number}"
        else:
            self.problem = _entry_problem(entry, number, self.planned)
        if self.problem is not None:
            return
        if entry.get("phase") == "run-start":
            self.planned += len(entry.get("plan") or [])
        elif entry.get("phase") == "restore-end":
            self.restores += 1
            if self.restores > MAX_RESTORES:
                self.problem = f"journal line {number}: more than {MAX_RESTORES} restores"
                return
        self.timeline.add(entry)
        self.before_last, self.last = self.last, line_hash(raw)
        self.lines = number

    def finish(self, head: str) -> str | None:
        """The journal's first problem, given the head ``journal.head`` names; None when intact."""
        if self.problem is not None:
            return self.problem
        if self.partial:
            return "ends with an incomplete line"
        if _eq(self.last, head):
            return None
        if self.before_last is not None and _eq(self.before_last, head):
            return f"its last line is not the one {mf.HEAD} names (a line was added)"
        return (
            f"{mf.HEAD} matches neither of its last two lines: the journal was truncated or rewritten, "
            "or lines were appended"
        )


def _short(value: object) -> str:
    """An untrusted value for a message: a short string as it is, anything else as a cut ``repr``."""
    if isinstance(value, str) and len(value) <= 80:
        return value
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Scan:
    """What one pass over the tar stream found: hashes of every file, a few small files' bytes."""

    def __init__(self) -> None:
        self.top: str | None = None
        self.files: dict[str, _Member] = {}
        self.order: list[str] = []
        self.dirs: set[str] = set()
        self.kept: dict[str, bytes] = {}
        self.journal: _JournalCheck | None = None
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
    return _unlisted_problem(rel, member.size, scan)


def _unlisted_problem(rel: str, size: int, scan: _Scan) -> str | None:
    """Why a member is refused from its header alone, before a byte of its data is read.

    Issue 13: an unlisted member used to be read (and decompressed) in full
    before it was refused, so a gzip bomb cost minutes. Export writes
    ``manifest.json`` before the evidence, so when an evidence member comes the
    list is known; a member nothing can account for is never read.
    """
    where = f'bundle member "{scan.top}/{rel}"'
    if not rel.startswith(EVIDENCE_DIR + "/"):
        if rel not in mf.KNOWN_TOP_FILES:
            return f"{where}: not part of the bundle layout; not read"
        return None
    if MANIFEST not in scan.files:
        return f"{where}: comes before {MANIFEST} (export writes {MANIFEST} first); not read"
    if scan.manifest is None:
        return f"{where}: {MANIFEST} is unusable ({scan.manifest_error}); not read"
    listed = scan.manifest_index.get(rel)
    if listed is None:
        return f"{where}: not listed in {MANIFEST}; not read"
    if size > listed.size:
        return f"{where}: {size} bytes, but {MANIFEST} lists {listed.size} bytes; not read"
    return None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str, scan: _Scan) -> None:
    fh = tar.extractfile(member)
    if fh is None:  # pragma: no cover - regular members always have data
        raise tarfile.ReadError(f"no data for {member.name}")
    h = hashlib.sha256()
    journal = _JournalCheck() if rel == mf.JOURNAL else None
    keep = rel in mf.MAX_IN_MEMORY and journal is None
    parts: list[bytes] = []
    size = 0
    while chunk := fh.read(mf.CHUNK):
        h.update(chunk)
        size += len(chunk)
        if keep:
            parts.append(chunk)
        elif journal is not None:
            journal.feed(chunk)
    if size != member.size:
        raise tarfile.ReadError(f"{member.name}: unexpected end of data")
    scan.files[rel] = _Member(size, h.hexdigest())
    scan.order.append(rel)
    if journal is not None:
        scan.journal = journal
    if keep:
        scan.kept[rel] = b"".join(parts)
    if rel == MANIFEST:
        try:
            scan.manifest = mf.parse_manifest(_budgeted(scan.kept[rel], MANIFEST))
            scan.manifest_index = {e.path: e for e in scan.manifest}
        except IntegrityError as exc:
            scan.manifest_error = exc.message


def _budgeted(data: bytes, what: str) -> bytes:
    """``data``, unless it holds more JSON values than verify parses (see MAX_JSON_VALUES)."""
    values = data.count(b"{") + data.count(b"[") + data.count(b",")
    if values > MAX_JSON_VALUES:
        raise IntegrityError(f"{what}: more than {MAX_JSON_VALUES} JSON values; not parsed")
    return data


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


def _check_journal(scan: _Scan) -> Check:
    if scan.journal is None:
        return Check("journal", False, f"{mf.JOURNAL} is missing from the bundle")
    if mf.HEAD not in scan.kept:
        return Check("journal", False, f"{mf.HEAD} is missing from the bundle")
    head = scan.kept[mf.HEAD].decode("ascii", "replace").strip()
    problem = scan.journal.finish(head)
    if problem is not None:
        return Check("journal", False, f"{mf.JOURNAL}: {problem}")
    return Check("journal", True, f"hash chain intact: {scan.journal.lines} line(s), head {head}")


def _json(scan: _Scan, rel: str) -> dict[str, Any]:
    try:
        doc = jsonsafe.loads(_budgeted(scan.kept.get(rel, b"{}"), rel), what=rel)
    except jsonsafe.JSONError as exc:
        raise IntegrityError(str(exc)) from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{rel}: expected an object")
    return doc


def _case_problem(scan: _Scan, journal: _JournalCheck) -> str | None:
    if mf.CASE_JSON not in scan.kept:
        return f"{mf.CASE_JSON} is missing from the bundle"
    case = mf.parse_case(_budgeted(scan.kept[mf.CASE_JSON], mf.CASE_JSON))
    if case["incident_id"] != scan.top:
        said = _short(repr(case["incident_id"]))
        return f"{mf.CASE_JSON}: incident id {said} is not the bundle's top directory {scan.top!r}"
    problem = _case_files_problem(scan, case)
    if problem is not None:
        return problem
    recorded_journal = case["journal"]
    head = scan.kept[mf.HEAD].decode("ascii", "replace").strip()
    if recorded_journal.get("head") != head:
        said = _short(recorded_journal.get("head"))
        return f"{mf.CASE_JSON}: journal head {said} does not match {mf.HEAD} ({head})"
    if recorded_journal.get("lines") != journal.lines:
        said = _short(recorded_journal.get("lines"))
        return f"{mf.CASE_JSON}: journal has {journal.lines} line(s), {mf.CASE_JSON} says {said}"
    return _case_playbook_problem(scan, case, journal)


def _case_files_problem(scan: _Scan, case: dict[str, Any]) -> str | None:
    """case.json's file list against the files in the bundle."""
    records = mf.case_files(case)
    recorded = {r.path for r in records}
    for rel in mf.REQUIRED_TOP_FILES:
        if rel not in scan.files:
            return f"{rel} is missing from the bundle"
    for rec in records:
        found = scan.files.get(rec.path)
        if found is None:
            return f"{_short(rec.path)}: listed in {mf.CASE_JSON} but missing from the bundle"
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
    return None


def _case_playbook_problem(scan: _Scan, case: dict[str, Any], journal: _JournalCheck) -> str | None:
    """case.json's playbook, trigger, vars and timeline against playbook.toml, incident.json and the journal."""
    playbook = case["playbook"]
    pb_sha = scan.files[mf.PLAYBOOK].sha256
    if not isinstance(playbook.get("sha256"), str) or not _eq(playbook["sha256"], pb_sha):
        said = _short(playbook.get("sha256"))
        return f"{mf.CASE_JSON}: playbook SHA-256 {said} does not match {mf.PLAYBOOK} ({pb_sha})"
    text = playbook.get("text")
    if not isinstance(text, str) or not _eq(mf.sha256_hex(text.encode()), pb_sha):
        return f"{mf.CASE_JSON}: the playbook text does not match its SHA-256 {pb_sha}"
    meta = _json(scan, mf.INCIDENT_JSON)
    if meta.get("incident_id", scan.top) != scan.top:
        said = _short(repr(meta.get("incident_id")))
        return f"{mf.INCIDENT_JSON}: incident id {said} is not the bundle's {scan.top!r}"
    meta_pb = meta.get("playbook") if isinstance(meta.get("playbook"), dict) else {}
    assert isinstance(meta_pb, dict)
    if isinstance(meta_pb.get("sha256"), str) and not _eq(meta_pb["sha256"], pb_sha):
        said = _short(meta_pb["sha256"])
        return f"{mf.INCIDENT_JSON}: playbook SHA-256 {said} does not match {mf.PLAYBOOK} ({pb_sha})"
    timeline = journal.timeline
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
    if ours.get("drift") != theirs.get("drift"):
        return "drift"
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
    journal_check = _check_journal(scan)
    report.checks.append(journal_check)
    try:
        if journal_check.ok and scan.journal is not None:
            problem = _case_problem(scan, scan.journal)
        else:
            problem = "not checked: the journal is not intact"
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

