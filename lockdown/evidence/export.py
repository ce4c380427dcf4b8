"""``lockdown export``: one incident directory -> one ``.tar.gz`` bundle + ``.sha256`` sidecar.

Streaming with bounded memory: every file goes into the archive through
``tarfile.addfile(info, fileobj)`` in 1 MiB chunks, and the compressed output
is hashed as it is written, so the sidecar costs no second read.

Export works while a run holds the state-dir lock (it never takes it) and
takes a consistent snapshot of a growing incident:

* ``journal.head`` is read first, then ``journal.jsonl`` is copied up to the
  line whose hash is that head. Lines appended later are not in the bundle.
* ``manifest.json`` is read after the journal, so every evidence file the
  copied journal knows about is listed. Evidence files are write-once and
  registered only after they are closed, so the listed size is final; files
  still being written (not yet listed) are left out and named in ``case.json``.

Nothing under the incident directory is opened through a symbolic link: each
path is opened component by component with ``O_NOFOLLOW`` relative to the
incident directory's descriptor, and only regular files are copied.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockdown.errors import BadInput, IntegrityError, LockdownError, PrivilegeError
from lockdown.evidence import manifest as mf
from lockdown.evidence.manifest import sidecar_path
from lockdown.paths import fsync_dir, incident_path
from lockdown.record.incident import operator
from lockdown.record.journal import GENESIS, line_hash, utcnow
from lockdown.record.store import EVIDENCE_DIR, MANIFEST, ManifestEntry

#: ``progress(done_bytes, total_bytes)``, called after each chunk.
Progress = Callable[[int, int], None]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MAX_DEPTH = 32


def default_output(incident_id: str) -> Path:
    return Path.cwd() / f"{incident_id}.tar.gz"


@dataclass
class ExportResult:
    """What ``export_incident`` wrote, and what it had to leave out or found wrong."""

    incident_id: str
    bundle: Path
    sidecar: Path
    sha256: str
    bundle_bytes: int
    input_bytes: int
    evidence_files: int
    journal_lines: int
    journal_head: str | None
    containment_active: bool
    seconds: float
    not_exported: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "bundle": str(self.bundle),
            "sidecar": str(self.sidecar),
            "sha256": self.sha256,
            "bundle_bytes": self.bundle_bytes,
            "input_bytes": self.input_bytes,
            "evidence_files": self.evidence_files,
            "journal_lines": self.journal_lines,
            "journal_head": self.journal_head,
            "containment_active": self.containment_active,
            "seconds": round(self.seconds, 3),
            "not_exported": self.not_exported,
            "problems": self.problems,
            "notes": self.notes,
            "report": self.report,
        }


class _Refused(Exception):
    """A path inside the incident directory that cannot be exported, and why."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.missing = missing


def _no_permission(what: str) -> PrivilegeError:
    return PrivilegeError(
        f"cannot read {what}: permission denied",
        hint="run as root (the state dir and incident directories are 0700)",
    )


def _describe_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _open_inside(dir_fd: int, rel: str) -> tuple[int, os.stat_result]:
    """Open the regular file ``rel`` below ``dir_fd`` without following any symlink."""
    parts = rel.split("/")
    fd = dir_fd
    opened: list[int] = []
    try:
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            try:
                fd = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise _Refused("it is missing on disk", missing=True) from None
            except PermissionError:
                raise _no_permission(rel) from None
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise
                where = "it" if last else "/".join(parts[: depth + 1])
                try:
                    mode = os.stat(part, dir_fd=opened[-1] if opened else dir_fd, follow_symlinks=False).st_mode
                    what = _describe_type(mode)
                except OSError:
                    what = "not reachable"
                raise _Refused(f"{where} is {what}") from None
            if not last:
                opened.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise _Refused(f"it is {_describe_type(st.st_mode)}")
        return fd, st
    finally:
        for d in opened:
            os.close(d)


def _read_capped(dir_fd: int, rel: str, cap: int) -> bytes:
    fd, st = _open_inside(dir_fd, rel)
    with open(fd, "rb", buffering=0) as fh:
        if st.st_size > cap:
            raise _Refused(f"it is {st.st_size} bytes, more than the {cap} bytes allowed")
        return fh.read(cap + 1)[:cap]


class _HashingWriter(io.RawIOBase):
    """The bundle file: every compressed byte is hashed on its way to disk."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        n = len(view)
        while view:
            done = os.write(self.fd, view)
            view = view[done:]
        self.size += n
        return n


@dataclass
class _JournalCut:
    head: str | None
    cut: int
    lines: int
    timeline: mf.TimelineBuilder
    problem: str | None


def _snapshot_journal(dir_fd: int) -> tuple[_JournalCut, int | None]:
    """Find the journal prefix that ends at ``journal.head`` (read first). Returns it and an open fd."""
    problem: str | None = None
    try:
        head: str | None = _read_capped(dir_fd, mf.HEAD, mf.MAX_IN_MEMORY[mf.HEAD]).decode("ascii", "replace").strip()
    except _Refused as exc:
        head, problem = None, f"{mf.HEAD}: {exc}"
    try:
        fd, st = _open_inside(dir_fd, mf.JOURNAL)
    except _Refused as exc:
        return _JournalCut(head, 0, 0, mf.TimelineBuilder(), f"{mf.JOURNAL}: {exc}"), None
    timeline = mf.TimelineBuilder()
    prev = GENESIS
    offset = 0
    cut: int | None = 0 if head == GENESIS else None
    lines = 0
    with open(os.dup(fd), "rb") as fh:
        while cut is None and offset < st.st_size:
            raw = fh.readline()
            if not raw.endswith(b"\n"):
                break  # an incomplete line: still being written, or torn by a crash
            offset += len(raw)
            raw = raw[:-1]
            lines += 1
            (entry,) = mf.iter_journal_entries([raw])
            if problem is None and entry.get("prev") != prev:
                problem = f"{mf.JOURNAL}: line {lines} does not chain to the line before it"
            timeline.add(entry)
            prev = line_hash(raw)
            if prev == head:
                cut = offset
    if cut is None:
        # No line matches the head: the journal is damaged. Export it exactly as it is.
        problem = problem or f"{mf.JOURNAL}: no line matches {mf.HEAD}; the journal was truncated or rewritten"
        cut = st.st_size
        timeline = mf.TimelineBuilder()
        with open(os.dup(fd), "rb") as fh:
            for entry in mf.iter_journal_entries(fh.read(cut).split(b"\n")[:-1]):
                timeline.add(entry)
        lines = timeline.lines
    return _JournalCut(head, cut, lines, timeline, problem), fd


def _walk_evidence(dir_fd: int, listed: set[str]) -> list[dict[str, str]]:
    """Entries under evidence/ that the manifest does not list (never followed through symlinks)."""
    found: list[dict[str, str]] = []

    def walk(fd: int, prefix: str, depth: int) -> None:
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{prefix}/{entry.name}"
            if entry.is_symlink():
                found.append({"path": rel, "reason": "a symbolic link; never followed"})
            elif entry.is_dir(follow_symlinks=False):
                if depth >= _MAX_DEPTH:
                    found.append({"path": rel, "reason": "nested too deep"})
                    continue
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    found.append({"path": rel, "reason": f"cannot open: {exc.strerror}"})
                    continue
                try:
                    walk(sub, rel, depth + 1)
                finally:
                    os.close(sub)
            elif not entry.is_file(follow_symlinks=False):
                mode = entry.stat(follow_symlinks=False).st_mode
                found.append({"path": rel, "reason": f"{_describe_type(mode)}; only regular files are exported"})
            elif rel not in listed:
                found.append(
                    {"path": rel, "reason": "not listed in manifest.json (still being written, or left by a crash)"}
                )

    try:
        ev = os.open(EVIDENCE_DIR, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return found
    except OSError:
        return [{"path": EVIDENCE_DIR, "reason": "not a directory (or a symbolic link); never followed"}]
    try:
        walk(ev, EVIDENCE_DIR, 1)
    finally:
        os.close(ev)
    return found


def _unknown_top_level(dir_fd: int) -> list[dict[str, str]]:
    out = []
    with os.scandir(dir_fd) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name in mf.COPIED_TOP_FILES or entry.name == EVIDENCE_DIR:
                continue  # dotfiles are atomic_write's temporary files
            out.append({"path": entry.name, "reason": "not part of the incident layout"})
    return out


def check_output(bundle: Path) -> None:
    """Refuse an output that exists (bundle or sidecar) or cannot be created."""
    if str(bundle) == "-":
        raise BadInput("export cannot write to stdout: the bundle needs a file name for its .sha256 sidecar")
    for path in (bundle, sidecar_path(bundle)):
        if os.path.lexists(path):
            raise BadInput(
                f"{path} already exists; export never overwrites a file",
                hint="choose another name with -o, or move the existing file away",
            )
    parent = bundle.parent if str(bundle.parent) else Path(".")
    if not parent.is_dir():
        raise BadInput(f"cannot write {bundle}: {parent} is not a directory")


def _create_exclusive(path: Path, mode: int) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise BadInput(
            f"{path} already exists; export never overwrites a file",
            hint="choose another name with -o, or move the existing file away",
        ) from None
    except OSError as exc:
        raise BadInput(f"cannot create {path}: {exc.strerror}") from None


def _tarinfo(name: str, size: int, mtime: float, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o700 if directory else 0o600
    info.size = 0 if directory else size
    info.mtime = int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Exporter:
    def __init__(self, incident_id: str, dir_fd: int, progress: Progress | None) -> None:
        self.incident_id = incident_id
        self.dir_fd = dir_fd
        self.progress = progress
        self.done = 0
        self.total = 0
        self.problems: list[str] = []
        self.not_exported: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.files: list[mf.FileRecord] = []
        self.dirs_written: set[str] = set()
        self.evidence_files = 0

    def _advance(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)

    def add_dir(self, tar: tarfile.TarFile, rel: str) -> None:
        """``rel`` and its parents as directory members, each once."""
        parts = rel.split("/") if rel else []
        for i in range(len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in self.dirs_written:
                continue
            self.dirs_written.add(sub)
            name = f"{self.incident_id}/{sub}" if sub else self.incident_id
            tar.addfile(_tarinfo(name, 0, time.time(), directory=True))

    def add_stream(self, tar: tarfile.TarFile, rel: str, fd: int, size: int, mtime: float) -> str:
        """Add the first ``size`` bytes of ``fd`` as ``rel``; returns their SHA-256, computed on the way."""
        self.add_dir(tar, rel.rpartition("/")[0])
        with open(fd, "rb", buffering=0, closefd=False) as raw:
            raw.seek(0)
            reader = mf.HashingReader(raw, size, self._advance)
            try:
                tar.addfile(_tarinfo(f"{self.incident_id}/{rel}", size, mtime), reader)
            except OSError as exc:
                if "unexpected end of data" not in str(exc):
                    raise
                raise IntegrityError(
                    f"{rel}: became shorter while it was exported; it was changed or truncated",
                    hint="evidence files are write-once: find out who changed it, then export again",
                ) from None
        sha = reader.hexdigest()
        if rel.startswith(EVIDENCE_DIR + "/"):
            self.evidence_files += 1
        else:
            self.files.append(mf.FileRecord(rel, size, sha))
        return sha

    def add_bytes(self, tar: tarfile.TarFile, rel: str, data: bytes, mtime: float, *, record: bool = True) -> str:
        self.add_dir(tar, rel.rpartition("/")[0])
        tar.addfile(_tarinfo(f"{self.incident_id}/{rel}", len(data), mtime), io.BytesIO(data))
        self._advance(len(data))
        sha = mf.sha256_hex(data)
        if record:
            self.files.append(mf.FileRecord(rel, len(data), sha))
        return sha

    def add_evidence(self, tar: tarfile.TarFile, rel: str, entry: ManifestEntry | None) -> int:
        """Add one evidence file and compare it with its manifest entry. Returns its size."""
        try:
            fd, st = _open_inside(self.dir_fd, rel)
        except _Refused as exc:
            self.problems.append(f"{rel}: listed in manifest.json but {exc}; not exported")
            self.not_exported.append({"path": rel, "reason": str(exc)})
            return 0
        try:
            sha = self.add_stream(tar, rel, fd, st.st_size, st.st_mtime)
        finally:
            os.close(fd)
        if entry is not None and st.st_size != entry.size:
            self.problems.append(f"{rel}: on disk it is {st.st_size} bytes, manifest.json says {entry.size}")
        elif entry is not None and sha != entry.sha256:
            self.problems.append(f"{rel}: on disk its SHA-256 is {sha}, manifest.json says {entry.sha256}")
        return st.st_size


def _load_small(dir_fd: int, rel: str, problems: list[str], *, required: bool = True) -> tuple[bytes, float] | None:
    try:
        fd, st = _open_inside(dir_fd, rel)
    except _Refused as exc:
        if required or not exc.missing:
            problems.append(f"{rel}: {exc}")
        return None
    with open(fd, "rb", buffering=0) as fh:
        cap = mf.MAX_IN_MEMORY[rel]
        if st.st_size > cap:
            problems.append(f"{rel}: it is {st.st_size} bytes, more than the {cap} bytes allowed; not exported")
            return None
        return fh.read(cap), st.st_mtime


def _json_or_empty(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {}
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass
class _Snapshot:
    """What step 1 of ``export_incident`` read, and the descriptors step 2 copies from.

    The fields start empty so that ``close`` releases whatever was opened even
    when the snapshot fails half-way.
    """

    jcut: _JournalCut = field(default_factory=lambda: _JournalCut(None, 0, 0, mf.TimelineBuilder(), None))
    journal_fd: int | None = None
    triggers_fd: int | None = None
    triggers_size: int = 0
    manifest_raw: tuple[bytes, float] | None = None
    meta_raw: tuple[bytes, float] | None = None
    playbook_raw: tuple[bytes, float] | None = None
    entries: list[ManifestEntry] | None = None
    wanted: list[tuple[str, ManifestEntry | None]] = field(default_factory=list)
    report_info: dict[str, Any] = field(default_factory=dict)
    report_parts: list[tuple[str, bytes]] = field(default_factory=list)

    def close(self) -> None:
        for fd in (self.journal_fd, self.triggers_fd):
            if fd is not None:
                os.close(fd)
        self.journal_fd = self.triggers_fd = None


def export_incident(
    root: Path,
    incident_id: str,
    output: Path | None = None,
    *,
    progress: Progress | None = None,
    report: bool = True,
) -> ExportResult:
    """Write ``output`` (default ``./<incident-id>.tar.gz``) and its ``.sha256`` sidecar.

    Raises BadInput for a bad id, a missing incident or an existing output.
    Integrity problems of the incident itself (an evidence file that no longer
    matches the manifest, a broken journal) do not stop the export: the bundle
    holds the incident as it is, and ``ExportResult.problems`` names them.
    With ``report`` (the default) and mail logs in the evidence, the incident
    report is added under ``report/``; failing to build it is only noted.
    """
    t0 = time.monotonic()
    try:
        inc_dir = incident_path(root, incident_id)
    except PermissionError:
        raise _no_permission(f"incident {incident_id} in {root}") from None
    bundle = output if output is not None else default_output(incident_id)
    check_output(bundle)
    try:
        dir_fd = os.open(inc_dir, _DIR_FLAGS)
    except PermissionError:
        raise _no_permission(str(inc_dir)) from None
    snap = _Snapshot()
    created: list[Path] = []
    try:
        ex = _Exporter(incident_id, dir_fd, progress)
        # 1. snapshot: head, then the journal up to it, then the manifest (see the module doc)
        _snapshot(snap, ex, dir_fd)
        _plan_report(snap, ex, root, incident_id, inc_dir, report)
        # 2. write: bundle file -> hash -> gzip -> tar, then the sidecar
        writer = _write_bundle(bundle, snap, ex, created)
        side = _write_sidecar(bundle, writer.hash.hexdigest(), created)
    except BaseException:
        for path in created:  # only files this call created (O_EXCL)
            try:
                os.unlink(path)
            except OSError:
                pass
        raise
    finally:
        snap.close()
        os.close(dir_fd)
    return ExportResult(
        incident_id=incident_id,
        bundle=bundle,
        sidecar=side,
        sha256=writer.hash.hexdigest(),
        bundle_bytes=writer.size,
        input_bytes=ex.done,
        evidence_files=ex.evidence_files,
        journal_lines=snap.jcut.lines,
        journal_head=snap.jcut.head,
        containment_active=snap.jcut.timeline.containment_active,
        seconds=time.monotonic() - t0,
        not_exported=ex.not_exported,
        problems=ex.problems,
        notes=ex.notes,
        report=snap.report_info,
    )


def _snapshot(snap: _Snapshot, ex: _Exporter, dir_fd: int) -> None:
    """Step 1 of an export: the journal cut, the small files, the manifest and the evidence to copy.

    Fills ``snap`` in as it goes (so the caller closes what was opened if this
    raises) and files what it finds wrong in ``ex.problems``/``ex.not_exported``
    rather than stopping: the bundle is the incident as it is.
    """
    snap.jcut, snap.journal_fd = _snapshot_journal(dir_fd)
    if snap.jcut.problem:
        ex.problems.append(snap.jcut.problem)
    snap.manifest_raw = _load_small(dir_fd, MANIFEST, ex.problems, required=False)
    if snap.manifest_raw is None and not any(p.startswith(MANIFEST) for p in ex.problems):
        # no evidence was ever written: the store creates manifest.json with the first file
        snap.manifest_raw = (json.dumps({"files": [], "version": 1}, indent=1).encode() + b"\n", time.time())
        ex.notes.append(f"{MANIFEST} did not exist (no evidence files); an empty one was generated")
    snap.entries = []
    if snap.manifest_raw is not None:
        try:
            snap.entries = mf.parse_manifest(snap.manifest_raw[0])
        except IntegrityError as exc:
            ex.problems.append(f"{exc.message}; evidence files are exported without a usable manifest")
            snap.entries = None
    snap.meta_raw = _load_small(dir_fd, mf.INCIDENT_JSON, ex.problems)
    snap.playbook_raw = _load_small(dir_fd, mf.PLAYBOOK, ex.problems)
    ex.not_exported = _unknown_top_level(dir_fd) + _walk_evidence(dir_fd, {e.path for e in snap.entries or []})
    snap.wanted = [(e.path, e) for e in snap.entries or []]
    if snap.entries is None:
        # an unusable manifest: keep every regular evidence file rather than none
        unlisted = [n for n in ex.not_exported if n["reason"].startswith("not listed")]
        snap.wanted = [(n["path"], None) for n in unlisted]
        ex.not_exported = [n for n in ex.not_exported if n not in unlisted]
    try:
        snap.triggers_fd, triggers_st = _open_inside(dir_fd, mf.TRIGGERS)
        snap.triggers_size = _complete_lines(snap.triggers_fd, triggers_st.st_size)
    except _Refused as exc:
        snap.triggers_size = 0
        if not exc.missing:
            ex.not_exported.append({"path": mf.TRIGGERS, "reason": str(exc)})


def _plan_report(snap: _Snapshot, ex: _Exporter, root: Path, incident_id: str, inc_dir: Path, report: bool) -> None:
    """Build the report from the evidence about to be exported, and set ``ex.total`` for progress."""
    evidence_sizes = {rel: _size_inside(ex.dir_fd, rel) for rel, _ in snap.wanted}
    snap.report_info, snap.report_parts = _build_report(
        root, incident_id, inc_dir, {rel for rel, size in evidence_sizes.items() if size is not None}, report
    )
    if snap.report_info.get("error"):
        ex.notes.append(f"the incident report was not built: {snap.report_info['error']}")
    ex.total = snap.jcut.cut + snap.triggers_size + sum(s for s in evidence_sizes.values() if s is not None)
    ex.total += sum(len(r[0]) for r in (snap.manifest_raw, snap.meta_raw, snap.playbook_raw) if r is not None)
    ex.total += sum(len(data) for _, data in snap.report_parts)


def _write_bundle(bundle: Path, snap: _Snapshot, ex: _Exporter, created: list[Path]) -> _HashingWriter:
    """Step 2 of an export: create ``bundle`` (O_EXCL, recorded in ``created``) and stream the members in.

    Returns the writer, whose hash and size are those of the finished, fsynced file.
    """
    out_fd = _create_exclusive(bundle, 0o600)
    created.append(bundle)
    try:
        writer = _HashingWriter(out_fd)
        with (
            gzip.GzipFile(fileobj=writer, mode="wb", compresslevel=mf.COMPRESSLEVEL, mtime=int(time.time())) as gz,
            tarfile.TarFile(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=mf.CHUNK) as tar,
        ):
            _add_members(tar, snap, ex)
        os.fsync(out_fd)
    finally:
        os.close(out_fd)
    return writer


def _add_members(tar: tarfile.TarFile, snap: _Snapshot, ex: _Exporter) -> None:
    """Every member of the bundle, in order, with ``case.json`` last because it describes the others."""
    jcut = snap.jcut
    ex.add_dir(tar, "")
    for rel, raw in ((mf.INCIDENT_JSON, snap.meta_raw), (mf.PLAYBOOK, snap.playbook_raw)):
        if raw is not None:
            ex.add_bytes(tar, rel, *raw)
    journal_sha: str | None = None
    if snap.journal_fd is not None:
        journal_sha = ex.add_stream(tar, mf.JOURNAL, snap.journal_fd, jcut.cut, os.fstat(snap.journal_fd).st_mtime)
    if jcut.head is not None:
        ex.add_bytes(tar, mf.HEAD, jcut.head.encode(), time.time())
    if snap.manifest_raw is not None:
        ex.add_bytes(tar, MANIFEST, *snap.manifest_raw)
    if snap.triggers_fd is not None:
        ex.add_stream(tar, mf.TRIGGERS, snap.triggers_fd, snap.triggers_size, os.fstat(snap.triggers_fd).st_mtime)
    evidence_bytes = 0
    for rel, entry in snap.wanted:
        evidence_bytes += ex.add_evidence(tar, rel, entry)
    for rel, data in snap.report_parts:
        ex.add_bytes(tar, rel, data, time.time())
    case = _case_doc(
        _host_from_evidence(ex.dir_fd, snap.entries or []),
        ex.incident_id,
        _json_or_empty(snap.meta_raw[0] if snap.meta_raw else None),
        snap.playbook_raw[0] if snap.playbook_raw else None,
        jcut,
        journal_sha,
        ex,
        evidence_bytes,
        snap.report_info,
    )
    case_bytes = json.dumps(case, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    ex.add_bytes(tar, mf.CASE_JSON, case_bytes, time.time(), record=False)


def _write_sidecar(bundle: Path, digest: str, created: list[Path]) -> Path:
    """Create the ``.sha256`` sidecar (O_EXCL, recorded in ``created``) and fsync the directory of both."""
    side = sidecar_path(bundle)
    side_fd = _create_exclusive(side, 0o644)
    created.append(side)
    try:
        os.write(side_fd, f"{digest}  {bundle.name}\n".encode())
        os.fsync(side_fd)
    finally:
        os.close(side_fd)
    fsync_dir(bundle.parent if str(bundle.parent) else Path("."))
    return side


def _size_inside(dir_fd: int, rel: str) -> int | None:
    try:
        fd, st = _open_inside(dir_fd, rel)
    except _Refused:
        return None
    os.close(fd)
    return st.st_size


def _complete_lines(fd: int, size: int) -> int:
    """``size`` cut back to just after the last newline (a line still being appended is left out)."""
    if size == 0:
        return 0
    back = min(size, 1 << 16)
    tail = os.pread(fd, back, size - back)
    nl = tail.rfind(b"\n")
    return size if nl < 0 else size - back + nl + 1


def _host_from_evidence(dir_fd: int, entries: list[ManifestEntry]) -> dict[str, Any]:
    """machine-id and boot id as ``snapshot.host`` recorded them during the run, if it ran."""
    for entry in entries:
        if entry.action != "snapshot.host" or entry.size > (1 << 20):
            continue
        try:
            facts = _json_or_empty(_read_capped(dir_fd, entry.path, 1 << 20))
        except _Refused:
            continue
        if facts.get("boot_id") or facts.get("machine_id"):
            return {"machine_id": facts.get("machine_id"), "boot_id": facts.get("boot_id"), "source": entry.path}
    return {}


def _case_doc(
    snapshot: dict[str, Any],
    incident_id: str,
    meta: dict[str, Any],
    playbook_text: bytes | None,
    jcut: _JournalCut,
    journal_sha: str | None,
    ex: _Exporter,
    evidence_bytes: int,
    report: dict[str, Any],
) -> dict[str, Any]:
    run_start = jcut.timeline.run_start or {}
    playbook_meta = meta.get("playbook") if isinstance(meta.get("playbook"), dict) else run_start.get("playbook")
    playbook_meta = playbook_meta if isinstance(playbook_meta, dict) else {}
    return {
        "format": mf.CASE_FORMAT,
        "version": mf.CASE_VERSION,
        "incident_id": incident_id,
        "exported_at": utcnow(),
        "exported_by": operator(),
        "export_host": mf.host_identity(),
        "incident_host": {
            "hostname": meta.get("host"),
            "machine_id": meta.get("machine_id") or snapshot.get("machine_id"),
            "boot_id": meta.get("boot_id") or snapshot.get("boot_id"),
            "kernel": meta.get("kernel"),
            "lockdown_version": meta.get("lockdown_version", run_start.get("lockdown_version")),
            "ids_from": mf.INCIDENT_JSON if meta.get("boot_id") else snapshot.get("source"),
        },
        "operator": meta.get("operator", run_start.get("operator")),
        "created": meta.get("created"),
        "trigger": meta.get("trigger", run_start.get("trigger")),
        "playbook": {
            "name": playbook_meta.get("name"),
            "path": playbook_meta.get("path"),
            "sha256": mf.sha256_hex(playbook_text) if playbook_text is not None else None,
            "text": playbook_text.decode("utf-8", "replace") if playbook_text is not None else None,
            "vars": meta.get("vars", run_start.get("vars")),
        },
        "journal": {
            "head": jcut.head,
            "lines": jcut.lines,
            "sha256": journal_sha,
        },
        "timeline": jcut.timeline.as_dict(),
        "containment_active": jcut.timeline.containment_active,
        "evidence": {"files": ex.evidence_files, "bytes": evidence_bytes},
        "files": [f.as_dict() for f in ex.files],
        "report": report,
        "not_exported": ex.not_exported,
        "export_problems": ex.problems,
        "notes": ex.notes,
    }


def _build_report(
    root: Path, incident_id: str, inc_dir: Path, exported: set[str], wanted: bool
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The incident report (``lockdown report``) as bundle members, and what ``case.json`` says about it.

    The report is derived from the evidence, so it never blocks the bundle:
    any failure to build it is recorded (``error``) and the export goes on.
    Gateways are chosen as ``lockdown report INCIDENT`` chooses them (the
    incident's inspect data, else the live Docker networks, else Docker's
    default pools), so both give the same figures.
    """
    info: dict[str, Any] = {"included": False, "files": [], "sources": [], "log_bytes": 0, "reason": None}
    if not wanted:
        info["reason"] = "not requested (--no-report)"
        return info, []
    try:
        evidence_is_dir = stat.S_ISDIR(os.lstat(inc_dir / EVIDENCE_DIR).st_mode)
    except OSError:
        evidence_is_dir = False
    if not evidence_is_dir:
        info["reason"] = f"{EVIDENCE_DIR}/ is missing or not a directory"
        return info, []
    try:
        from lockdown.mail import report as mail_report

        sources = mail_report.evidence_sources(inc_dir)
        paths = sorted({s.path.relative_to(inc_dir).as_posix() for s in sources})
        info["sources"] = paths
        if not paths:
            info["reason"] = "the evidence holds no mail logs"
            return info, []
        info["log_bytes"] = sum(os.lstat(inc_dir / rel).st_size for rel in paths)
        if info["log_bytes"] > mf.REPORT_MAX_LOG_BYTES:
            info["reason"] = (
                f"its logs are {info['log_bytes']} bytes, more than the {mf.REPORT_MAX_LOG_BYTES} "
                f"a bundle's report is built from; run `lockdown report {incident_id} --html FILE`"
            )
            return info, []
        outside = [rel for rel in paths if rel not in exported]
        if outside:
            info["reason"] = (
                f"{outside[0]} is a log that is not in the bundle (not listed in {MANIFEST}); "
                "a report must come from the bundle's own evidence"
            )
            return info, []
        rep = mail_report.incident_report(root, incident_id)
        html_bytes = mail_report.render_html(rep).encode("utf-8")
        doc = rep.as_dict()
        json_bytes = json.dumps(doc, indent=1, sort_keys=True, default=str).encode() + b"\n"
    except Exception as exc:  # noqa: BLE001 - the report is optional: record why, never fail the export
        info["error"] = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, (LockdownError, OSError, ValueError, EOFError, tarfile.TarError)):
            # not a bad log but a bug: keep what is needed to fix it
            import tempfile
            import traceback

            fd, tb_path = tempfile.mkstemp(prefix="lockdown-traceback-", suffix=".txt")
            with os.fdopen(fd, "w") as fh:
                fh.write(traceback.format_exc())
            info["traceback"] = tb_path
        return info, []
    info["included"] = True
    info["files"] = [mf.REPORT_HTML, mf.REPORT_JSON]
    info["generated_at"] = utcnow()
    info["summary"] = {
        key: doc[key]
        for key in ("messages", "outside_messages", "signature_messages", "first_abuse", "last_abuse")
    }
    return info, [(mf.REPORT_HTML, html_bytes), (mf.REPORT_JSON, json_bytes)]
