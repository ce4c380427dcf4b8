"""Where the report's log text comes from: files (plain, ``.gz``), members of ``.tar`` archives,
a container's ``docker logs``, and the logs an incident collected. Each source yields raw byte
chunks; nothing here reads a line's meaning."""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from lockdown.errors import BadInput
from lockdown.mail.parser import LineSplitter, parse_line

#: Bytes read at a time (the analysis cuts them to its own ``BLOCK``s).
CHUNK = 128 << 10


class Source(Protocol):
    """Anything ``analyse`` can read: a name for the report and raw byte chunks."""

    @property
    def name(self) -> str: ...

    def open(self) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class LogSource:
    """One stream of log text: a file, or a member of a tar archive."""

    name: str
    path: Path
    member: str | None = None

    def open(self) -> Iterator[bytes]:
        """Yield the raw bytes in chunks (decompressing ``.gz``)."""
        if self.member is None:
            with open(self.path, "rb") as fh:
                yield from _chunks(_maybe_gunzip(fh, self.path.name))
            return
        with tarfile.open(self.path, "r:*") as tar:
            extracted = tar.extractfile(tar.getmember(self.member))
            if extracted is None:
                return
            with extracted:
                yield from _chunks(_maybe_gunzip(extracted, self.member))


@dataclass(frozen=True)
class ContainerLogSource:
    """``docker logs --timestamps`` of a container since ``since`` (epoch seconds), streamed."""

    container_id: str
    container_name: str
    since: float | None = None

    @property
    def name(self) -> str:
        return f"docker logs {self.container_name}"

    def open(self) -> Iterator[bytes]:
        from lockdown import dockerapi

        yield from dockerapi.logs_stream(self.container_id, self.container_name, since=self.since)


def _maybe_gunzip(fh: IO[bytes], name: str) -> IO[bytes]:
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=fh)  # type: ignore[return-value]
    return fh


def _chunks(fh: IO[bytes]) -> Iterator[bytes]:
    while block := fh.read(CHUNK):
        yield block


def sources_from_paths(paths: Iterable[Path]) -> list[LogSource]:
    """Log sources for ``--log``: plain files, ``.gz`` files and ``.tar`` archives."""
    out: list[LogSource] = []
    for p in paths:
        if not p.exists():
            raise BadInput(f"no such log file: {p}")
        if p.is_dir():
            raise BadInput(f"{p} is a directory: give log files", "e.g. --log /var/log/mail.log")
        _check_regular(p)
        out.extend(_expand(p, str(p)))
    return out


def _check_regular(p: Path) -> None:
    """Refuse what is not a regular file (a FIFO would wait for a writer, /dev/zero never ends)."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise BadInput(f"cannot read {p}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if not stat.S_ISREG(mode):
        raise BadInput(f"{p} is not a regular file: give log files", "e.g. --log /var/log/mail.log")


def _expand(path: Path, label: str) -> list[LogSource]:
    if path.name.endswith((".tar", ".tar.gz", ".tgz")) and tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tar:
            return [LogSource(f"{label}:{info.name}", path, info.name) for info in tar if info.isfile()]
    return [LogSource(label, path)]


def evidence_sources(incident_dir: Path) -> list[LogSource]:
    """The Postfix logs an incident collected: ``evidence/logs/*`` (logs.container) and
    ``evidence/files/**`` (logs.files; plain files or ``.tar`` archives). Symlinks are skipped."""
    out: list[LogSource] = []
    base = incident_dir / "evidence"
    for sub in ("logs", "files"):
        top = base / sub
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            dirnames.sort()
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                if p.is_symlink() or not p.is_file():
                    continue
                out.extend(_expand(p, str(p.relative_to(incident_dir))))
    return out


def oldest_first(sources: Sequence[Source], year: int | None) -> list[Source]:
    """The sources ordered by the time of their first Postfix line (rotated logs: oldest first)."""
    return sorted(sources, key=lambda s: _first_time(s, year))


def _first_time(source: Source, year: int | None) -> datetime:
    """Time of the first Postfix line in the first chunk of a source (the latest time when none)."""
    splitter = LineSplitter()
    for chunk in source.open():
        for seen, text in enumerate(splitter.feed(chunk)):
            ln = parse_line(text, year)
            if ln is not None and ln.time is not None:
                return ln.time
            if seen > 2000:
                break
        break
    return datetime.max.replace(tzinfo=UTC)
