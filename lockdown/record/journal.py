"""Write-ahead, hash-chained journal (``journal.jsonl``).

Each line is one JSON object. ``prev`` is the SHA-256 of the previous line's
bytes (without the newline), so an edited or removed line breaks the chain.
``journal.head`` holds the hash of the last line and is updated after each
append, so removing lines from the end is detected too. A crash between the
append and the head update leaves the head exactly one line behind, which is
accepted.

Every append is flushed and fsync'ed before the caller goes on: a change is
made only after its ``intent`` line (with the full undo record) is on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lockdown import jsonsafe
from lockdown.errors import IntegrityError
from lockdown.layout import HEAD, JOURNAL
from lockdown.paths import atomic_write, create_file, fsync_dir, write_staged

GENESIS = "0" * 64

__all__ = ["GENESIS", "HEAD", "JOURNAL", "ChainReport", "Journal", "check_chain", "read_journal"]


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def line_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def encode(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_line(raw: bytes, number: int) -> dict[str, Any]:
    """One journal line as an object. Raises :class:`jsonsafe.JSONError` naming the line.

    The only place a journal line is parsed: nesting is bounded (a line nested
    ~970 deep parses with ``json.loads`` and then breaks every recursive walk
    of it), so a hostile or damaged line is a damaged line, never an internal error.
    """
    what = f"journal line {number}"
    entry = jsonsafe.loads(raw, what=what)
    if not isinstance(entry, dict):
        raise jsonsafe.JSONError(f"{what} is not an object")
    return entry


@dataclass
class ChainReport:
    """The outcome of checking a journal's hash chain.

    ``entries`` holds every line that could be read, also after a problem:
    ``status`` shows them and ``restore --force`` undoes what they say.
    ``empty`` is a journal that never got its first line (nothing was changed).
    """

    entries: list[dict[str, Any]] = field(default_factory=list)
    intact: bool = True
    problem: str | None = None
    torn_tail: bytes = b""
    empty: bool = False
    unreadable: list[int] = field(default_factory=list)
    complete_lines: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "problem": self.problem,
            "lines": len(self.entries),
            "empty": self.empty,
            "unreadable_lines": list(self.unreadable),
        }


def check_chain(data: bytes, head: str | None) -> ChainReport:
    """Check ``data`` (a whole journal) against its chain and ``head`` hash.

    A last line without a newline is a torn write from a crash; it is
    reported in ``torn_tail`` and, on its own, does not break the chain.
    ``head`` may be one line behind the journal at any position, the first
    line included (a crash between the append and the head update).
    """
    report = ChainReport()
    lines = data.split(b"\n")
    if lines and lines[-1] != b"":
        report.torn_tail = lines[-1]
    lines = lines[:-1]
    report.complete_lines = len(lines)
    prev = GENESIS
    hashes: list[str] = []

    def broken(problem: str) -> None:
        if report.intact:
            report.intact = False
            report.problem = problem

    # After the first problem, keep reading: status shows, and ``restore
    # --force`` uses, every line that is still readable.
    for number, raw in enumerate(lines, start=1):
        try:
            entry = parse_line(raw, number)
        except jsonsafe.JSONError as exc:
            broken(str(exc))
            report.unreadable.append(number)
            prev = line_hash(raw)
            hashes.append(prev)
            continue
        if entry.get("prev") != prev:
            broken(
                f"journal line {number} (seq {entry.get('seq')!r}) does not chain to the line "
                "before it: a line was edited, inserted or removed"
            )
        elif entry.get("seq") != number:
            broken(f"journal line {number} has seq {entry.get('seq')!r}, expected {number}")
        prev = line_hash(raw)
        hashes.append(prev)
        report.entries.append(entry)
    if not report.intact:
        return report
    if head is not None:
        _check_head(report, hashes, head.strip())
    if report.torn_tail and report.intact:
        report.problem = "journal ends with an incomplete line (a crash while writing); it is ignored"
    return report


def _check_head(report: ChainReport, hashes: list[str], head: str) -> None:
    """``head`` names the last line, or the one before it (``GENESIS`` before the first)."""
    positions = [GENESIS, *hashes]  # positions[i]: the head after i lines
    if head in positions[-2:]:
        return
    report.intact = False
    if head in hashes:
        report.problem = (
            f"journal has {len(hashes) - hashes.index(head) - 1} line(s) after its recorded head: "
            "lines were appended without the journal"
        )
    else:
        report.problem = "journal head does not match any line: the journal was truncated or rewritten"


class Journal:
    """Appends entries to one incident's journal. Not thread-safe; the runner owns it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL
        self.head_path = directory / HEAD
        self._prev = GENESIS
        self._seq = 0
        self._fd: int | None = None

    @classmethod
    def create(cls, directory: Path) -> Journal:
        """A new, empty journal in a staged incident directory (``incident.stage_incident_dir``).

        The directory is fsynced as a whole before it is published, so its
        files are only written and fsynced here (``write_staged``).
        """
        journal = cls(directory)
        os.close(create_file(journal.path))
        write_staged(journal.head_path, GENESIS.encode())
        journal._open()
        return journal

    def moved(self, directory: Path) -> None:
        """The incident directory was renamed (atomic creation); the open fd stays valid."""
        self.directory = directory
        self.path = directory / JOURNAL
        self.head_path = directory / HEAD

    @classmethod
    def open(cls, directory: Path, *, allow_broken: bool = False) -> Journal:
        """Open for appending. A torn last line is moved into a ``repair`` entry.

        ``allow_broken`` appends after a broken chain (``restore --force``); the
        new lines chain to the last complete line as it is now, readable or not.
        """
        journal = cls(directory)
        report = journal.read()
        if not report.intact and not allow_broken:
            raise IntegrityError(
                f"{journal.path}: {report.problem}",
                hint="the incident's journal is damaged; inspect it before restoring by hand",
            )
        data = journal.path.read_bytes() if journal.path.exists() else b""
        if report.torn_tail:
            keep = len(data) - len(report.torn_tail)
            with open(journal.path, "r+b") as fh:
                fh.truncate(keep)
                os.fsync(fh.fileno())
            data = data[:keep]
        lines = data.split(b"\n")[:-1]
        journal._seq = len(lines)
        journal._prev = line_hash(lines[-1]) if lines else GENESIS
        if not journal.path.exists():
            os.close(create_file(journal.path))
            fsync_dir(directory)
        journal._open()
        if report.torn_tail:
            journal.append(
                "repair",
                discarded_bytes=len(report.torn_tail),
                discarded_sha256=line_hash(report.torn_tail),
                discarded_text=report.torn_tail.decode("utf-8", "replace"),
                reason="incomplete last line from a crash while writing",
            )
        return journal

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self) -> ChainReport:
        return read_journal(self.directory)

    def append(self, phase: str, **fields: Any) -> dict[str, Any]:
        """Write one entry durably, then move the head to it, and return it."""
        if self._fd is None:
            raise RuntimeError("journal is not open")
        self._seq += 1
        entry: dict[str, Any] = {"seq": self._seq, "time": utcnow(), "phase": phase, "prev": self._prev}
        entry.update(fields)
        raw = encode(entry)
        os.write(self._fd, raw + b"\n")
        os.fsync(self._fd)
        self._prev = line_hash(raw)
        atomic_write(self.head_path, self._prev.encode())
        return entry


def read_journal(directory: Path) -> ChainReport:
    """The chain report of the journal in ``directory``.

    No journal line at all, with no head or a ``GENESIS`` head, is an *empty*
    journal: the incident was created (by an older version, or by hand) but
    nothing was ever journaled, so nothing was changed. It is not damage.
    """
    path = directory / JOURNAL
    head_path = directory / HEAD
    data = path.read_bytes() if path.is_file() else b""
    head = head_path.read_text("ascii", "replace").strip() if head_path.is_file() else None
    if not data and head in (None, GENESIS):
        return ChainReport(empty=True)
    if not path.is_file():
        return ChainReport(intact=False, problem=f"{path} is missing, but {head_path} names a line")
    if head is None:
        report = check_chain(data, None)
        report.intact = False
        report.problem = report.problem or f"{head_path} is missing"
        return report
    return check_chain(data, head)
