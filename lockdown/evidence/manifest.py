"""What an evidence bundle holds and how its parts describe each other.

Shared by ``export`` (which writes bundles) and ``verify`` (which checks
them), so the two cannot drift apart. Nothing here prints or exits; problems
are raised as :class:`~lockdown.errors.IntegrityError`.

Layout of a bundle (``<incident-id>.tar.gz``)::

    <incident-id>/                 directory
    <incident-id>/incident.json    run metadata (playbook, vars, trigger, operator)
    <incident-id>/playbook.toml    the playbook as it ran
    <incident-id>/journal.jsonl    the hash-chained journal, cut at journal.head
    <incident-id>/journal.head     SHA-256 of the journal's last line
    <incident-id>/manifest.json    every evidence file: size, SHA-256, time, step
    <incident-id>/triggers.jsonl   webhook repeats (only when present)
    <incident-id>/evidence/...     the evidence files listed in manifest.json
    <incident-id>/report/report.html  generated at export when the evidence holds
    <incident-id>/report/report.json  mail logs: ``lockdown report`` (issue 8)
    <incident-id>/case.json        generated at export: chain-of-custody record

``case.json`` lists every other file with its size and SHA-256, so each byte
of the bundle is covered either by ``manifest.json`` (evidence collected
during the run) or by ``case.json`` (everything else, including the derived
report), and ``case.json`` itself is tied to the journal, ``incident.json``
and ``playbook.toml`` by the checks in ``verify``.
"""

from __future__ import annotations

import hashlib
import platform
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lockdown import __version__, jsonsafe
from lockdown.errors import IntegrityError
from lockdown.jsonsafe import JSONError
from lockdown.layout import HEAD as HEAD
from lockdown.layout import INCIDENT_JSON as INCIDENT_JSON
from lockdown.layout import JOURNAL as JOURNAL
from lockdown.layout import PLAYBOOK_COPY
from lockdown.layout import TRIGGERS as TRIGGERS
from lockdown.paths import SAFE_NAME_RE
from lockdown.record.journal import parse_line
from lockdown.record.steps import StepReader
from lockdown.record.store import EVIDENCE_DIR, MANIFEST, ManifestEntry

CASE_JSON = "case.json"
CASE_FORMAT = "lockdown-evidence-bundle"
CASE_VERSION = 1
PLAYBOOK = PLAYBOOK_COPY

REPORT_DIR = "report"
REPORT_HTML = f"{REPORT_DIR}/report.html"
REPORT_JSON = f"{REPORT_DIR}/report.json"
#: The incident report (issue 8) is derived from evidence, not collected: it is
#: generated at export, listed in case.json (never in manifest.json) and only
#: built from at most this many bytes of logs. The parser's memory grows with
#: the number of messages: with 24 MiB of logs the export peaks at about 90 MiB
#: (bench/bench_export.py --size 24MiB), inside the 100 MiB export budget.
REPORT_MAX_LOG_BYTES = 24 << 20

#: Top-level files copied from the incident directory, in bundle order.
COPIED_TOP_FILES: tuple[str, ...] = (INCIDENT_JSON, PLAYBOOK, JOURNAL, HEAD, MANIFEST, TRIGGERS)
#: Top-level files that must be in every bundle.
REQUIRED_TOP_FILES: tuple[str, ...] = (INCIDENT_JSON, PLAYBOOK, JOURNAL, HEAD, MANIFEST, CASE_JSON)
#: Every file outside ``evidence/`` that a bundle may hold.
KNOWN_TOP_FILES: frozenset[str] = frozenset((*COPIED_TOP_FILES, CASE_JSON, REPORT_HTML, REPORT_JSON))

#: Members that ``verify`` reads as a whole are capped at these sizes; anything
#: larger is reported as a huge member before a byte of it is read. Together
#: they keep verify under its 100 MiB budget (bench/bench_verify.py): parsed
#: JSON costs many times its text. The journal is streamed line by line, never
#: held; its cap only bounds the time verify takes.
MAX_IN_MEMORY: dict[str, int] = {
    HEAD: 4096,
    INCIDENT_JSON: 1 << 20,
    PLAYBOOK: 1 << 20,
    MANIFEST: 4 << 20,
    CASE_JSON: 4 << 20,
    JOURNAL: 256 << 20,
}
#: A bundle with more members than this is refused (each costs a little memory).
MAX_MEMBERS = 200_000
#: Gzip level for bundles: 6 is what ``gzip`` and ``tar -z`` use by default.
#: tarfile's default of 9 is about twice as slow for ~3 % smaller bundles.
COMPRESSLEVEL = 6
#: Chunk size for streaming copies and hashing.
CHUNK = 1 << 20

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sidecar_path(bundle: Path) -> Path:
    """``FILE.sha256`` next to ``FILE``: one ``sha256sum``-format line."""
    return bundle.with_name(bundle.name + ".sha256")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX64.match(value))


def safe_member_path(rel: str) -> bool:
    """True for a relative path of safe components (``evidence/a/b.json``)."""
    if not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    return all(part not in ("", ".", "..") and SAFE_NAME_RE.match(part) for part in rel.split("/"))


def is_evidence_path(rel: str) -> bool:
    return rel.startswith(EVIDENCE_DIR + "/") and safe_member_path(rel)


# --------------------------------------------------------------- manifest.json


def parse_manifest(data: bytes) -> list[ManifestEntry]:
    """The entries of a ``manifest.json`` document, checked for shape.

    Raises IntegrityError naming the first malformed entry.
    """
    try:
        doc = jsonsafe.loads(data, what=MANIFEST)
    except jsonsafe.JSONError as exc:
        raise IntegrityError(str(exc)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise IntegrityError(f"{MANIFEST}: expected an object with a \"files\" list")
    entries: list[ManifestEntry] = []
    seen: set[str] = set()
    for number, item in enumerate(doc["files"], start=1):
        where = f"{MANIFEST}: entry {number}"
        if not isinstance(item, dict):
            raise IntegrityError(f"{where}: expected an object")
        path = item.get("path")
        if not isinstance(path, str) or not is_evidence_path(path):
            raise IntegrityError(f"{where}: path {path!r} is not a safe path under {EVIDENCE_DIR}/")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise IntegrityError(f"{where} ({path}): size {size!r} is not a non-negative integer")
        if not is_sha256(item.get("sha256")):
            raise IntegrityError(f"{where} ({path}): sha256 {item.get('sha256')!r} is not 64 lowercase hex digits")
        if path in seen:
            raise IntegrityError(f"{where}: {path} is listed twice")
        seen.add(path)
        entries.append(
            ManifestEntry(
                path=path,
                size=size,
                sha256=item["sha256"],
                collected_at=str(item.get("collected_at", "")),
                step=str(item.get("step", "")),
                action=str(item.get("action", "")),
            )
        )
    return entries


# --------------------------------------------------------------- the journal


def iter_journal_entries(lines: Iterable[bytes]) -> Iterable[dict[str, Any]]:
    """Parsed journal lines (``record.journal.parse_line``); an unreadable line yields ``{}``."""
    for number, raw in enumerate(lines, start=1):
        try:
            yield parse_line(raw, number)
        except JSONError:
            yield {}


class TimelineBuilder:
    """The start and end time of the run and of each step, fed journal entries one by one.

    Used by export (from the live journal, line by line) and by verify (from
    the bundle's journal) so that ``case.json`` can be recomputed and compared.
    The meaning of each entry is decided by the journal's one reader,
    :class:`lockdown.record.steps.StepReader`; this only keeps its timeline,
    the guard's ``drift`` re-assertions included.
    """

    def __init__(self) -> None:
        self.reader = StepReader()

    def add(self, entry: dict[str, Any]) -> None:
        self.reader.add(entry)

    @property
    def lines(self) -> int:
        return self.reader.lines

    @property
    def run_start(self) -> dict[str, Any] | None:
        return self.reader.run_start

    @property
    def run(self) -> dict[str, Any]:
        return self.reader.run

    def as_dict(self) -> dict[str, Any]:
        """The timeline; ``drift`` only when the guard re-asserted something, so bundles
        exported before drift existed still verify."""
        steps = sorted(self.reader.steps.values(), key=lambda s: (s.number is None, s.number or 0))
        out: dict[str, Any] = {
            "run": dict(self.reader.run),
            "steps": [s.timeline() for s in steps],
            "restores": [dict(r) for r in self.reader.restores],
        }
        if self.reader.gates:  # only when a restore probed: older bundles recompute unchanged
            out["gates"] = [dict(g) for g in self.reader.gates]
        if self.reader.drift_count:
            out["drift"] = {"count": self.reader.drift_count, "entries": [dict(d) for d in self.reader.drifts]}
        return out

    @property
    def containment_active(self) -> bool:
        """The same answer as ``lockdown status`` gives: the one reader decides."""
        return self.reader.containment_active


def timeline_of(entries: Iterable[dict[str, Any]]) -> TimelineBuilder:
    builder = TimelineBuilder()
    for entry in entries:
        builder.add(entry)
    return builder


# --------------------------------------------------------------- case.json


def _read_small(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def host_identity() -> dict[str, Any]:
    """Host name, machine-id, boot id, kernel and lockdown version of this host, now."""
    return {
        "hostname": socket.gethostname(),
        "machine_id": _read_small("/etc/machine-id"),
        "boot_id": _read_small("/proc/sys/kernel/random/boot_id"),
        "kernel": platform.release(),
        "lockdown_version": __version__,
    }


@dataclass(frozen=True)
class FileRecord:
    """A top-level bundle file as ``case.json`` lists it."""

    path: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def parse_case(data: bytes) -> dict[str, Any]:
    """``case.json`` as a dict, checked for the fields verify relies on."""
    try:
        doc = jsonsafe.loads(data, what=CASE_JSON)
    except jsonsafe.JSONError as exc:
        raise IntegrityError(str(exc)) from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{CASE_JSON}: expected an object")
    if doc.get("format") != CASE_FORMAT or doc.get("version") != CASE_VERSION:
        raise IntegrityError(
            f"{CASE_JSON}: format {doc.get('format')!r} version {doc.get('version')!r} is not "
            f"{CASE_FORMAT!r} version {CASE_VERSION}"
        )
    for key, kind in (("incident_id", str), ("playbook", dict), ("journal", dict), ("files", list)):
        if not isinstance(doc.get(key), kind):
            raise IntegrityError(f"{CASE_JSON}: {key!r} is missing or not a {kind.__name__}")
    return doc


def case_files(doc: dict[str, Any]) -> list[FileRecord]:
    out: list[FileRecord] = []
    for number, item in enumerate(doc["files"], start=1):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("path"), str)
            or not isinstance(item.get("size"), int)
            or not is_sha256(item.get("sha256"))
        ):
            raise IntegrityError(f"{CASE_JSON}: files entry {number} is malformed")
        out.append(FileRecord(item["path"], item["size"], item["sha256"]))
    return out


# --------------------------------------------------------------- streaming


class HashingReader:
    """Reads at most ``limit`` bytes from ``raw``, hashing them on the way.

    ``tarfile.addfile`` pulls exactly ``TarInfo.size`` bytes through this, so a
    file that grows while it is exported is cut at the size it was given.
    """

    def __init__(self, raw: BinaryIO, limit: int, progress: Callable[[int], None] | None = None) -> None:
        self.raw = raw
        self.remaining = limit
        self.hash = hashlib.sha256()
        self.size = 0
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        n = self.remaining if n is None or n < 0 else min(n, self.remaining)
        data = self.raw.read(n)
        self.remaining -= len(data)
        self.size += len(data)
        self.hash.update(data)
        if self.progress is not None and data:
            self.progress(len(data))
        return data

    def hexdigest(self) -> str:
        return self.hash.hexdigest()
