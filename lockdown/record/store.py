"""Evidence files, hashed while they are written (borg ``file_integrity``).

Every file under ``evidence/`` is registered in ``manifest.json`` with its
size, SHA-256, collection time and the step that wrote it. The hash is
computed from the bytes as they go to disk, never by reading the file again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from lockdown.layout import EVIDENCE_DIR, MANIFEST
from lockdown.paths import atomic_write, check_relative_name, create_file, ensure_dir, fsync_dir
from lockdown.record.journal import utcnow

__all__ = ["EVIDENCE_DIR", "MANIFEST", "EvidenceStore", "EvidenceWriter", "ManifestEntry", "load_manifest"]


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative to the incident directory, e.g. evidence/host.json
    size: int
    sha256: str
    collected_at: str
    step: str
    action: str


def load_manifest(incident_dir: Path) -> list[ManifestEntry]:
    path = incident_dir / MANIFEST
    if not path.exists():
        return []
    data = json.loads(path.read_bytes())
    return [ManifestEntry(**item) for item in data.get("files", [])]


class EvidenceWriter:
    """A binary file opened for writing that hashes what it writes.

    Use as a context manager; the file is registered in the manifest on a
    clean close. A file left by an exception is registered too, marked by the
    step's failure in the journal, because partial evidence is still evidence.
    """

    def __init__(self, store: EvidenceStore, rel: str, step: str, action: str) -> None:
        self.store = store
        self.rel = rel
        self.step = step
        self.action = action
        self.path = store.incident_dir / rel
        ensure_dir(self.path.parent)
        self._fd = create_file(self.path)
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def close(self) -> ManifestEntry:
        if self.closed:
            raise RuntimeError(f"{self.rel} already closed")
        self.closed = True
        os.fsync(self._fd)
        os.close(self._fd)
        if not self.store._defer_dir(self.path.parent):
            fsync_dir(self.path.parent)
        entry = ManifestEntry(
            path=self.rel,
            size=self.size,
            sha256=self._hash.hexdigest(),
            collected_at=utcnow(),
            step=self.step,
            action=self.action,
        )
        self.store._register(entry)
        return entry

    def __enter__(self) -> EvidenceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.closed:
            self.close()


class EvidenceStore:
    """Evidence of one incident. Thread-safe registration (webhook workers share it)."""

    def __init__(self, incident_dir: Path) -> None:
        self.incident_dir = incident_dir
        self._lock = threading.Lock()
        self._entries: list[ManifestEntry] = load_manifest(incident_dir)
        self._taken = {e.path for e in self._entries}
        self._batching = 0  # depth of batch() blocks open
        self._deferred_dirs: set[Path] = set()
        self._unwritten = False  # entries registered in a batch, not in manifest.json yet

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Register the files closed inside the block with one manifest write, at its end.

        Otherwise every file rewrites the whole ``manifest.json`` (two fsyncs) and
        fsyncs its directory: a step that saves one file per queued message would
        take time quadratic in the queue, at 3 a.m., with the spam still queued.
        Inside the block each file is still fsynced when closed; its directory and
        the manifest wait for the end. A crash inside leaves those files complete
        on disk but unlisted: export names them in ``not_exported``, as files that
        were still being written.
        """
        with self._lock:
            self._batching += 1
        try:
            yield
        finally:
            with self._lock:
                self._batching -= 1
                if not self._batching:
                    for directory in sorted(self._deferred_dirs):
                        fsync_dir(directory)
                    self._deferred_dirs.clear()
                    if self._unwritten:
                        self._write_manifest()

    def _defer_dir(self, directory: Path) -> bool:
        """True if ``directory`` is fsynced at the end of the open batch (False: none is open)."""
        with self._lock:
            if self._batching:
                self._deferred_dirs.add(directory)
            return bool(self._batching)

    @property
    def entries(self) -> list[ManifestEntry]:
        return list(self._entries)

    def _unique(self, rel: str) -> str:
        taken = self._taken
        if rel not in taken and not (self.incident_dir / rel).exists():
            return rel
        stem, dot, ext = rel.rpartition(".")
        if not dot or "/" in ext:
            stem, ext = rel, ""
        n = 2
        while True:
            candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
            if candidate not in taken and not (self.incident_dir / candidate).exists():
                return candidate
            n += 1

    def open(self, name: str, *, step: str, action: str) -> EvidenceWriter:
        """A new evidence file ``evidence/<name>``; a taken name gets a ``-2`` suffix."""
        check_relative_name(name, "evidence name")
        with self._lock:
            rel = self._unique(f"{EVIDENCE_DIR}/{name}")
            self._taken.add(rel)
        return EvidenceWriter(self, rel, step, action)

    def write_bytes(self, name: str, data: bytes, *, step: str, action: str) -> ManifestEntry:
        with self.open(name, step=step, action=action) as fh:
            fh.write(data)
        return self._entries[-1]

    def write_json(self, name: str, obj: Any, *, step: str, action: str) -> ManifestEntry:
        data = json.dumps(obj, indent=1, sort_keys=True, default=str).encode() + b"\n"
        return self.write_bytes(name, data, step=step, action=action)

    def write_stream(
        self, name: str, chunks: Iterable[bytes], *, step: str, action: str
    ) -> ManifestEntry:
        with self.open(name, step=step, action=action) as fh:
            for chunk in chunks:
                fh.write(chunk)
        return self._entries[-1]

    def _register(self, entry: ManifestEntry) -> None:
        with self._lock:
            self._entries.append(entry)
            if self._batching:
                self._unwritten = True
            else:
                self._write_manifest()

    def _write_manifest(self) -> None:
        """Called holding the lock."""
        doc = {"version": 1, "files": [asdict(e) for e in self._entries]}
        atomic_write(self.incident_dir / MANIFEST, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")
        self._unwritten = False
