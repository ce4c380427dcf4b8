"""``lockdown report``: who relayed what, through which path, and when it stopped.

Input is any set of Postfix logs (plain, ``.gz``, or ``.tar`` archives of
container paths, as ``logs.files`` collects them), read in one streaming pass
through ``parser.parse_line`` and ``parser.Correlator``. The result is a
``Report`` whose ``as_dict()`` field names are an interface (``--json``):
messages, outside_messages, signature_messages, by_client, by_sender_domain,
by_recipient_domain, first_abuse, last_abuse, timeline, containment_time,
before_containment, after_containment.

One large plain log file is read by two processes, one half each, and their
results are merged so that the report is the one a single process would
give; ``_two_halves`` says when that cannot be shown and one process reads it.

The *signature* of the IPv6-through-docker-proxy relay: a message for an
outside domain whose client is a Docker gateway address and which carried no
SASL authentication.
"""

from __future__ import annotations

import gc
import gzip
import html
import ipaddress
import json
import mmap
import os
import pickle
import re
import stat
import tarfile
import traceback
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from lockdown.errors import BadInput
from lockdown.mail.parser import (
    MAX_LINE,
    Correlator,
    GatewayMatcher,
    LineSplitter,
    Message,
    MessageEvent,
    default_gateways,
    domain_of,
    might_matter,
    parse_line,
)

#: Bytes read at a time. The rows one regex pass over a chunk returns (~1,000 per 128 KiB)
#: stay in the CPU's cache while Python walks them: 1 MiB chunks were ~10 % slower.
CHUNK = 128 << 10
PARALLEL_MIN = 32 << 20
CONTAINMENT_ACTIONS = ("docker.pause", "ipv6.strip", "docker.stop")
SAMPLE = 50


# --------------------------------------------------------------------------- sources


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
            info = tar.getmember(self.member)
            extracted = tar.extractfile(info)
            if extracted is None:
                return
            with extracted:
                yield from _chunks(_maybe_gunzip(extracted, self.member))


class Source(Protocol):
    """Anything ``analyse`` can read: a name for the report and raw byte chunks."""

    @property
    def name(self) -> str: ...

    def open(self) -> Iterator[bytes]: ...


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
    while True:
        block = fh.read(CHUNK)
        if not block:
            return
        yield block


def sources_from_paths(paths: Iterable[Path]) -> list[LogSource]:
    """Log sources for ``--log``: plain files, ``.gz`` files and ``.tar`` archives."""
    out: list[LogSource] = []
    for p in paths:
        if not p.exists():
            raise BadInput(f"no such log file: {p}")
        if p.is_dir():
            raise BadInput(f"{p} is a directory: give log files", "e.g. --log /var/log/mail.log")
        try:
            # O_NONBLOCK: opening a FIFO would wait for a writer; /dev/zero would be read forever
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise BadInput(f"cannot read {p}: {exc.strerror}") from None
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
        if not stat.S_ISREG(mode):
            raise BadInput(f"{p} is not a regular file: give log files", "e.g. --log /var/log/mail.log")
        out.extend(_expand(p, str(p)))
    return out


def _expand(path: Path, label: str) -> list[LogSource]:
    if path.name.endswith((".tar", ".tar.gz", ".tgz")) and tarfile.is_tarfile(path):
        members: list[LogSource] = []
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                if info.isfile():
                    members.append(LogSource(f"{label}:{info.name}", path, info.name))
        return members
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


# --------------------------------------------------------------------------- gateways


def gateways_from_evidence(incident_dir: Path) -> list[str]:
    """Gateways in ``evidence/docker/*/inspect.json`` (NetworkSettings.Networks.*.Gateway / IPv6Gateway)."""
    found: list[str] = []
    base = incident_dir / "evidence"
    if not base.is_dir():
        return found
    for dirpath, _dirnames, filenames in os.walk(base, followlinks=False):
        for fn in filenames:
            if not fn.endswith("inspect.json"):
                continue
            p = Path(dirpath) / fn
            if p.is_symlink():
                continue
            try:
                doc = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            for item in doc if isinstance(doc, list) else [doc]:
                found.extend(_inspect_gateways(item))
    return sorted(set(found))


def _inspect_gateways(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return []
    nets = (doc.get("NetworkSettings") or {}).get("Networks") or {}
    out: list[str] = []
    if isinstance(nets, dict):
        for net in nets.values():
            if isinstance(net, dict):
                for key in ("Gateway", "IPv6Gateway"):
                    v = net.get(key)
                    if isinstance(v, str) and v:
                        out.append(v)
    # a network inspect (docker network inspect) carries IPAM instead
    ipam = doc.get("IPAM")
    if isinstance(ipam, dict):
        from lockdown.dockerapi import gateways_from_ipam

        out.extend(gateways_from_ipam(ipam))
    return out


def docker_gateways() -> list[str] | None:
    """Gateways of the host's Docker networks, or None when Docker is not reachable."""
    from lockdown import dockerapi
    from lockdown.errors import LockdownError

    reachable, nets = dockerapi.networks_via_socket()
    if not reachable:
        return None
    try:
        return dockerapi.network_gateways(nets)
    except (LockdownError, ImportError):
        return None


def choose_gateways(explicit: list[str] | None, incident_dir: Path | None = None) -> tuple[list[str], str]:
    """The gateway list and where it came from: option, incident, docker or default-pools."""
    if explicit:
        for g in explicit:
            try:
                ipaddress.ip_network(g.removeprefix("IPv6:"), strict=False)
            except ValueError:
                raise BadInput(f"--gateway {g!r}: not an IP address or network") from None
        return list(explicit), "option"
    if incident_dir is not None:
        found = gateways_from_evidence(incident_dir)
        if found:
            return found, "incident"
    live = docker_gateways()
    if live:
        return live, "docker"
    return default_gateways(), "default-pools"


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What the logs say. ``as_dict()`` is the ``--json`` document."""

    sources: list[str]
    gateways: list[str]
    gateway_source: str
    local_domains: list[str] | None
    lines: int = 0
    duplicate_lines: int = 0
    cut_lines: int = 0
    messages: int = 0
    outside_messages: int = 0
    outside_recipients: int = 0
    signature_messages: int = 0
    by_client: Counter[str] = field(default_factory=Counter)
    by_sender_domain: Counter[str] = field(default_factory=Counter)
    by_recipient_domain: Counter[str] = field(default_factory=Counter)
    signature_by_recipient_domain: Counter[str] = field(default_factory=Counter)
    first_abuse: Message | None = None
    last_abuse: Message | None = None
    first_outside: datetime | None = None
    last_outside: datetime | None = None
    containment_time: datetime | None = None
    before_containment: int | None = None
    after_containment: int | None = None
    timeline: dict[datetime, list[int]] = field(default_factory=dict)
    rejects: int = 0
    rejects_by_code: Counter[str] = field(default_factory=Counter)
    rejects_from_gateway: int = 0
    connects_from_gateway: int = 0
    postscreen_connects_from_gateway: int = 0
    sample: list[Message] = field(default_factory=list)
    incident: dict[str, Any] | None = None
    workers: int = 1

    def as_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.astimezone(UTC).isoformat() if t else None

        def first_time(m: Message | None) -> str | None:
            return iso(m.first_seen) if m else None

        return {
            "sources": self.sources,
            "gateways": self.gateways,
            "gateway_source": self.gateway_source,
            "local_domains": self.local_domains,
            "lines": self.lines,
            "duplicate_lines": self.duplicate_lines,
            "cut_lines": self.cut_lines,
            "messages": self.messages,
            "outside_messages": self.outside_messages,
            "outside_recipients": self.outside_recipients,
            "signature_messages": self.signature_messages,
            "by_client": dict(self.by_client),
            "by_sender_domain": dict(self.by_sender_domain),
            "by_recipient_domain": dict(self.by_recipient_domain),
            "signature_by_recipient_domain": dict(self.signature_by_recipient_domain),
            "first_abuse": first_time(self.first_abuse),
            "last_abuse": first_time(self.last_abuse),
            "first_abuse_message": self.first_abuse.as_dict() if self.first_abuse else None,
            "last_abuse_message": self.last_abuse.as_dict() if self.last_abuse else None,
            "first_outside": iso(self.first_outside),
            "last_outside": iso(self.last_outside),
            "containment_time": iso(self.containment_time),
            "before_containment": self.before_containment,
            "after_containment": self.after_containment,
            "timeline": [
                {"minute": iso(t), "outside": v[0], "signature": v[1], "rejects": v[2]}
                for t, v in sorted(self.timeline.items())
            ],
            "rejects": {
                "total": self.rejects,
                "by_code": dict(self.rejects_by_code),
                "from_gateway": self.rejects_from_gateway,
            },
            "connects_from_gateway": self.connects_from_gateway,
            "postscreen_connects_from_gateway": self.postscreen_connects_from_gateway,
            "signature_sample": [m.as_dict() for m in self.sample],
            "incident": self.incident,
        }


def _minute(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def _first_time(source: Source, year: int | None) -> datetime:
    """Time of the first Postfix line of a source (to read rotated logs oldest first)."""
    splitter = LineSplitter()
    seen = 0
    for chunk in source.open():
        for text in splitter.feed(chunk):
            seen += 1
            ln = parse_line(text, year)
            if ln is not None and ln.time is not None:
                return ln.time
            if seen > 2000:
                return datetime.max.replace(tzinfo=UTC)
        break
    return datetime.max.replace(tzinfo=UTC)


def analyse(
    sources: Sequence[Source],
    *,
    gateways: list[str],
    gateway_source: str = "option",
    local_domains: set[str] | None = None,
    containment_time: datetime | None = None,
    year: int | None = None,
    parallel_min: int | None = PARALLEL_MIN,
) -> Report:
    """Read every source once and build the report.

    One plain file of at least ``parallel_min`` bytes (None: never) is read
    by two processes, one half each (``_two_halves``); the result is the same
    as one process's, and when it could not be proved the same the file is
    read again by one process.

    With several sources, a line already read from another source (the same
    log kept by ``docker logs`` and ``/var/log/mail.log``) is counted once.

    The cyclic garbage collector is off meanwhile: the messages are millions of
    small objects without cycles, and each full collection would walk them all.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        only = sources[0] if len(sources) == 1 else None
        if parallel_min is not None and isinstance(only, LogSource) and _splittable(only, parallel_min):
            report = _two_halves(only, gateways, gateway_source, local_domains, containment_time, year)
            if report is not None:
                return report
        return _analyse(sources, gateways, gateway_source, local_domains, containment_time, year)
    finally:
        if enabled:
            gc.enable()


def _analyse(
    sources: Sequence[Source],
    gateways: list[str],
    gateway_source: str,
    local_domains: set[str] | None,
    containment_time: datetime | None,
    year: int | None,
) -> Report:
    if len(sources) > 1:
        sources = sorted(sources, key=lambda s: _first_time(s, year))
    report = Report(
        sources=[s.name for s in sources],
        gateways=list(gateways),
        gateway_source=gateway_source,
        local_domains=sorted(local_domains) if local_domains is not None else None,
        containment_time=containment_time,
    )
    matcher = GatewayMatcher(gateways)
    correlator = Correlator(local_domains, events=("reject",), count_connects=True)
    feed = correlator.feed_text
    timeline = report.timeline
    dedupe = len(sources) > 1
    seen: dict[int, int] = {}
    lines = dups = cut = 0
    for index, source in enumerate(sources):
        if not dedupe:
            n, n_cut, events = _feed(correlator, source.open(), year)
            lines, cut = lines + n, cut + n_cut
            _on_events(report, events, matcher, timeline)
            continue
        splitter = LineSplitter()
        for chunk in source.open():
            texts = splitter.feed(chunk)
            lines += len(texts)
            kept = [x for x in texts if might_matter(x)]
            texts = [x for x in kept if not _duplicate(seen, x, index)]
            dups += len(kept) - len(texts)
            for text in texts:
                events = feed(text, year)
                if events:
                    _on_events(report, events, matcher, timeline)
        for text in splitter.flush():
            lines += 1
            if not might_matter(text):
                continue
            if _duplicate(seen, text, index):
                dups += 1
                continue
            events = feed(text, year)
            if events:
                _on_events(report, events, matcher, timeline)
        cut += splitter.cut_lines
    _count_connects(report, correlator.connects, matcher)
    report.lines, report.duplicate_lines, report.cut_lines = lines, dups, cut
    _summarise(report, correlator.finish(), matcher)
    return report


# --------------------------------------------------------------------------- two processes


def _splittable(source: LogSource, minimum: int) -> bool:
    """A plain file of at least ``minimum`` bytes, two CPUs to run on, and no other thread
    in this process (a fork copies only the calling thread, whatever locks the others hold)."""
    import threading

    if source.member is not None or source.path.name.endswith(".gz"):
        return False
    if len(os.sched_getaffinity(0)) < 2 or not hasattr(os, "fork") or threading.active_count() > 1:
        return False
    try:
        return source.path.stat().st_size >= max(minimum, 1)
    except OSError:
        return False


def _range(path: Path, start: int, end: int | None) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(start)
        while True:
            size = CHUNK if end is None else min(CHUNK, end - fh.tell())
            block = fh.read(size) if size > 0 else b""
            if not block:
                return
            yield block


def _feed(correlator: Correlator, chunks: Iterable[bytes], year: int | None) -> tuple[int, int, list[MessageEvent]]:
    """Feed one source (or a stretch of one file) block by block: its lines, cut lines and events."""
    splitter = LineSplitter()
    feed_block = correlator.feed_block
    events: list[MessageEvent] = []
    lines = 0
    for chunk in chunks:
        block, count = splitter.feed_block(chunk)
        lines += count
        if count:
            events.extend(feed_block(block, year, count=count))
    for text in splitter.flush():
        lines += 1
        events.extend(correlator.feed_text(text, year))
    return lines, splitter.cut_lines, events


def _send(fd: int, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(len(data).to_bytes(8, "little") + data)
    while view:
        view = view[os.write(fd, view) :]


def _recv(fd: int) -> Any:
    def exactly(n: int) -> bytes:
        parts: list[bytes] = []
        while n > 0:
            part = os.read(fd, min(n, 1 << 20))
            if not part:
                raise EOFError("the other process ended early")
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    return pickle.loads(exactly(int.from_bytes(exactly(8), "little")))


_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


@dataclass
class _Half:
    """What the second half tells the first before the merge: enough to decide whether it is exact."""

    lines: int
    cut_lines: int
    touched: set[str]
    aliased: set[str]
    requeued: set[str]
    closed: set[str]
    queued_as: set[str]
    learned: set[str]


def _second_half(
    path: Path,
    start: int,
    year: int | None,
    local_domains: set[str] | None,
    gateways: list[str],
    containment_time: datetime | None,
    rfd: int,
    wfd: int,
    keep: list[object],
) -> None:
    """The child: read ``path`` from ``start``, tell the parent what it touched, and once told
    which queue ids straddle the cut and which domains the first half learned as local, send
    the partial reports of its events, closed messages and open messages.

    ``keep`` gets the Correlator and the events: the caller holds them until ``os._exit``, so
    that their objects are not freed one by one on return (~0.1 s)."""
    c = Correlator(local_domains, events=("reject",), count_connects=True)
    keep.append(c)
    queued_as: set[str] = set()

    def chunks() -> Iterator[bytes]:
        for chunk in _range(path, start, None):
            if b"queued as " in chunk:
                queued_as.update(_QUEUED_AS.findall(chunk.decode("utf-8", "replace")))
            yield chunk

    lines, cut, events = _feed(c, chunks(), year)
    keep.append(events)
    opened, closed = c._open, c._closed
    _send(wfd, _Half(
        lines, cut,
        touched=set(opened) | {m.queue_id for m in closed},
        aliased=set(c._alias) | set(c._alias.values()),
        requeued={q for q, m in opened.items() if m.queued_as},
        closed={m.queue_id for m in closed},
        queued_as=queued_as,
        learned=c._learned_local,
    ))  # fmt: skip
    # While the parent reads on: count what its answer cannot change. A straddling message
    # is one this half only saw the end of (no client= or pickup line), and such a message
    # is never a signature message, so it only adds to counts.
    matcher = GatewayMatcher(gateways)
    open2 = list(opened.values())
    ends = [i for i, m in enumerate(open2) if m.service is None and m.client_addr is None]
    sure = _part(containment_time)
    _on_events(sure, [e for e in events if e.message.queue_id == "NOQUEUE"], matcher, sure.timeline)
    _count_connects(sure, c.connects, matcher)
    picks = _tally(sure, 1, closed, None, matcher)
    picks.add(_tally(sure, 3, open2, _without(len(open2), ends), matcher))
    decision = _recv(rfd)
    if decision is None:
        return
    straddling, learned1 = decision
    rest = _part(containment_time)
    late = [e for e in events if e.message.queue_id != "NOQUEUE" and e.message.queue_id not in straddling]
    _on_events(rest, late, matcher, rest.timeline)
    relearn = False
    if local_domains is None and learned1:
        outside = set(sure.by_recipient_domain)
        outside.update(domain_of(r.address) for i in ends for r in open2[i].recipients if r.outside)
        relearn = not learned1.isdisjoint(outside)
    if relearn:
        for m in (*closed, *open2):
            for r in m.recipients:
                if r.outside and r.domain in learned1:
                    r.outside = False
    guessed = {open2[i].queue_id for i in _without(len(open2), ends)}
    if relearn or not straddling.isdisjoint(guessed):
        sure = _part(containment_time)
        _count_connects(sure, c.connects, matcher)
        _on_events(sure, [e for e in events if e.message.queue_id == "NOQUEUE"], matcher, sure.timeline)
        picks = _tally(sure, 1, closed, None, matcher)
        ends = list(range(len(open2)))
    picks.add(_tally(rest, 3, open2, [i for i in ends if open2[i].queue_id not in straddling], matcher))
    sure.messages = len(closed) + len(open2) - len(straddling & set(opened))
    _send(wfd, ([sure, rest], picks))


def _without(n: int, skip: list[int]) -> list[int]:
    """0 .. n-1 without the (ascending) ``skip``."""
    if not skip:
        return list(range(n))
    gone = set(skip)
    return [i for i in range(n) if i not in gone]


def _part(containment_time: datetime | None) -> Report:
    return Report(sources=[], gateways=[], gateway_source="", local_domains=None, containment_time=containment_time)


def _count_connects(report: Report, connects: Counter[tuple[str, str]], matcher: GatewayMatcher) -> None:
    for (service, addr), n in connects.items():
        if matcher(addr):
            report.connects_from_gateway += n
            if service.endswith("postscreen"):
                report.postscreen_connects_from_gateway += n


def _two_halves(
    source: LogSource,
    gateways: list[str],
    gateway_source: str,
    local_domains: set[str] | None,
    containment_time: datetime | None,
    year: int | None,
) -> Report | None:
    """``_analyse`` of one plain file by two forked processes: one reads the first half, the
    other the second (from the first line that starts after the middle); each summarises its
    own messages, and the first adds up the partial reports in the order one process would
    have met the messages (closed ones first, then open ones, each in order) and sends the
    result here. Neither frees its messages: both leave with ``os._exit``.

    The second half started without the first half's state. That changes nothing for a queue
    id the first half no longer holds. For one it still holds (a message whose lines straddle
    the cut), the second half's lines of that id are fed again, in order, to the first half's
    Correlator, and the child drops what it made of them. Without ``local_domains``, a
    recipient the second half called outside is not when the first half learned its domain as
    local. None (the caller reads the file again in one process) when a child failed, a
    straddling message was re-queued through a content filter, a reused queue id closes a
    message across the cut, a ``queued as`` in the second half names a first-half id, or what
    is learned about local domains could differ.
    """
    path = source.path
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(size // 2)
        head = fh.read(MAX_LINE)
    nl = head.find(b"\n")
    if nl < 0 or size // 2 + nl + 1 >= size:
        return None
    split = size // 2 + nl + 1
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    _widen(up_w)
    try:
        pid = os.fork()
    except OSError:  # no process to spare (EAGAIN, ENOMEM): one process reads it all
        for fd in (down_r, down_w, up_r, up_w):
            os.close(fd)
        return None
    if pid == 0:  # the child never returns into the caller's code
        code = 1
        keep: list[object] = []
        try:
            os.close(down_w)
            os.close(up_r)
            _second_half(path, split, year, local_domains, gateways, containment_time, down_r, up_w, keep)
            code = 0
        finally:
            os._exit(code)
    os.close(down_r)
    os.close(up_w)
    # The first half runs in a child too: its million small objects are then never freed one
    # by one (``keep`` and os._exit), which took ~0.1 s after the answer was ready.
    result_r, result_w = os.pipe()
    _widen(result_w)
    try:
        first = os.fork()
    except OSError:
        os.close(result_r)
        os.close(result_w)
        os.close(up_r)
        os.close(down_w)
        os.waitpid(pid, 0)
        return None
    if first == 0:
        code = 1
        kept: list[object] = []
        try:
            os.close(result_r)
            answer: tuple[str, Any]
            try:
                report = _first_half(
                    source, split, gateways, gateway_source, local_domains, containment_time, year, up_r, down_w,
                    keep=kept,
                )
                answer = ("report", report)
            except (EOFError, OSError, pickle.UnpicklingError):
                answer = ("report", None)
            except BaseException:  # noqa: BLE001 - carried to the caller, raised there
                answer = ("error", traceback.format_exc())
            _send(result_w, answer)
            code = 0
        finally:
            os._exit(code)
    os.close(result_w)
    os.close(up_r)
    os.close(down_w)
    try:
        kind, value = _recv(result_r)
    except (EOFError, OSError, pickle.UnpicklingError):
        return None
    finally:
        os.close(result_r)
        os.waitpid(first, 0)
        os.waitpid(pid, 0)
    if kind == "error":
        raise RuntimeError(f"the first half of the two-process read failed:\n{value}")
    return value  # type: ignore[no-any-return]


def _widen(fd: int) -> None:
    """Let the child's first message (the queue ids it touched) fit in the pipe, so that it
    goes on with its own counting instead of waiting for the parent to read."""
    import fcntl

    for size in (16 << 20, 1 << 20):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
            return
        except OSError:
            continue


def _first_half(
    source: LogSource,
    split: int,
    gateways: list[str],
    gateway_source: str,
    local_domains: set[str] | None,
    containment_time: datetime | None,
    year: int | None,
    rfd: int,
    wfd: int,
    keep: list[object] | None = None,
) -> Report | None:
    """The first half (run in a forked child too); ``keep`` as for ``_second_half``."""
    c1 = Correlator(local_domains, events=("reject",), count_connects=True)
    if keep is not None:
        keep.append(c1)
    lines1, cut1, events1 = _feed(c1, _range(source.path, 0, split), year)
    if keep is not None:
        keep.append(events1)
    # Before hearing from the child: count what it cannot change. Only a message this half
    # still holds can straddle the cut, and one whose queue id was removed seldom does.
    matcher = GatewayMatcher(gateways)
    open1 = list(c1._open.values())
    done = [i for i, m in enumerate(open1) if m.removed]
    sure = _part(containment_time)
    _on_events(sure, events1, matcher, sure.timeline)
    _count_connects(sure, c1.connects, matcher)
    picks = _tally(sure, 0, c1._closed, None, matcher)
    picks.add(_tally(sure, 2, open1, done, matcher))
    half: _Half = _recv(rfd)
    held = set(c1._open) | set(c1._alias)
    straddling = half.touched & held
    learned1 = set(c1._learned_local)
    if (
        half.queued_as & held
        or (half.aliased | half.requeued | half.closed) & straddling
        or (local_domains is None and len(learned1 | half.learned) >= 10_000)
    ):
        _send(wfd, None)
        return None
    _send(wfd, (straddling, learned1))
    rest = _part(containment_time)
    if straddling:
        texts = _lines_of(source.path, split, straddling, year)
        if texts is None:
            return None
        closed_before, alias_before = len(c1._closed), dict(c1._alias)
        replayed: list[MessageEvent] = []
        for text in texts:
            replayed.extend(c1.feed_text(text, year))
        if len(c1._closed) != closed_before or c1._alias != alias_before or len(c1._open) != len(open1):
            return None
        touched = {c1._alias.get(q, q) for q in straddling}
        if local_domains is None:
            late = half.learned - learned1
            for q in touched:
                m = c1._open.get(q)
                if m is None or any(r.outside and r.domain in late for r in m.recipients):
                    return None
        _on_events(rest, replayed, matcher, rest.timeline)
        if touched & {open1[i].queue_id for i in done}:
            sure = _part(containment_time)
            _on_events(sure, events1, matcher, sure.timeline)
            _count_connects(sure, c1.connects, matcher)
            picks = _tally(sure, 0, c1._closed, None, matcher)
            done = []
    picks.add(_tally(rest, 2, open1, _without(len(open1), done), matcher))
    sure.messages = len(c1._closed) + len(open1)
    parts2, picks2 = _recv(rfd)
    report = Report(
        sources=[source.name],
        gateways=list(gateways),
        gateway_source=gateway_source,
        local_domains=sorted(local_domains) if local_domains is not None else None,
        containment_time=containment_time,
        lines=lines1 + half.lines,
        cut_lines=cut1 + half.cut_lines,
        workers=2,
    )
    for part in (sure, rest, *parts2):
        _add(report, part)
    picks.add(picks2)
    report.sample = [m for _, m in picks.sample]
    report.first_abuse = picks.first[2] if picks.first else None
    report.last_abuse = picks.last[2] if picks.last else None
    return report


def _add(report: Report, part: Report) -> None:
    """Add the counts of ``part`` (a report on some of the messages and events) to ``report``."""
    report.messages += part.messages
    report.outside_messages += part.outside_messages
    report.outside_recipients += part.outside_recipients
    report.signature_messages += part.signature_messages
    report.by_client.update(part.by_client)
    report.by_sender_domain.update(part.by_sender_domain)
    report.by_recipient_domain.update(part.by_recipient_domain)
    report.signature_by_recipient_domain.update(part.signature_by_recipient_domain)
    if part.first_outside is not None and (report.first_outside is None or part.first_outside < report.first_outside):
        report.first_outside = part.first_outside
    if part.last_outside is not None and (report.last_outside is None or part.last_outside > report.last_outside):
        report.last_outside = part.last_outside
    if part.before_containment is not None:
        report.before_containment = (report.before_containment or 0) + part.before_containment
    if part.after_containment is not None:
        report.after_containment = (report.after_containment or 0) + part.after_containment
    for minute, counts in part.timeline.items():
        slot = report.timeline.setdefault(minute, [0, 0, 0])
        for i in range(3):
            slot[i] += counts[i]
    report.rejects += part.rejects
    report.rejects_by_code.update(part.rejects_by_code)
    report.rejects_from_gateway += part.rejects_from_gateway
    report.connects_from_gateway += part.connects_from_gateway
    report.postscreen_connects_from_gateway += part.postscreen_connects_from_gateway


def _lines_of(path: Path, start: int, qids: set[str], year: int | None) -> list[str] | None:
    """The lines from ``start`` on whose queue id is one of ``qids``, in order (None: a line too long)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _lines_in(data, start, qids, year)


def _lines_in(data: mmap.mmap, start: int, qids: set[str], year: int | None) -> list[str] | None:
    starts: set[int] = set()
    for q in qids:
        needle = q.encode()
        i = data.find(needle, start)
        while i >= 0:
            starts.add(max(data.rfind(b"\n", start, i) + 1, start))
            i = data.find(needle, i + len(needle))
    out: list[str] = []
    for s in sorted(starts):
        e = data.find(b"\n", s)
        raw = data[s:] if e < 0 else data[s:e]
        if len(raw) > MAX_LINE:
            return None
        text = raw.decode("utf-8", "replace")
        if text.endswith("\r"):
            text = text[:-1]
        parsed = parse_line(text, year)
        if parsed is not None and parsed.queue_id in qids:
            out.append(text)
    return out


def _duplicate(seen: dict[int, int], text: str, index: int) -> bool:
    """True when another source already had this line (Docker's timestamp prefix ignored)."""
    if len(text) > 31 and text[10:11] == "T" and text[4:5] == "-":
        sp = text.find(" ")
        rest = text[sp + 1 :]
        if rest[3:4] == " " or rest[10:11] == "T":  # a syslog timestamp follows: that was Docker's
            text = rest
    first = seen.setdefault(hash(text), index)
    return first != index


def _on_events(report: Report, events: list[Any], matcher: GatewayMatcher, timeline: dict[datetime, list[int]]) -> None:
    for ev in events:
        if ev.kind == "reject":
            report.rejects += 1
            report.rejects_by_code[ev.code or "?"] += 1
            if matcher(ev.message.client_addr):
                report.rejects_from_gateway += 1
            if ev.time is not None:
                timeline.setdefault(_minute(ev.time), [0, 0, 0])[2] += 1


def _summarise(report: Report, messages: list[Message], matcher: GatewayMatcher) -> None:
    """Add up ``messages`` (in the order they were first seen) into ``report``."""
    report.messages = len(messages)
    picks = _tally(report, 0, messages, None, matcher)
    report.sample = [m for _, m in picks.sample]
    report.first_abuse = picks.first[2] if picks.first else None
    report.last_abuse = picks.last[2] if picks.last else None


#: A message's place in the order one process meets them: (group, index in the group).
Place = tuple[int, int]


@dataclass
class _Picks:
    """What of a summary depends on the order of the messages: the signature messages picked,
    with their places, so that summaries of parts of the messages add up exactly."""

    sample: list[tuple[Place, Message]] = field(default_factory=list)
    first: tuple[datetime, Place, Message] | None = None
    last: tuple[datetime, Place, Message] | None = None

    def add(self, other: _Picks) -> None:
        self.sample = sorted([*self.sample, *other.sample], key=lambda x: x[0])[:SAMPLE]
        if other.first is not None and (self.first is None or other.first[:2] < self.first[:2]):
            self.first = other.first
        if other.last is not None and (self.last is None or other.last[:2] > self.last[:2]):
            self.last = other.last


def _tally(
    report: Report, group: int, messages: list[Message], indices: Iterable[int] | None, matcher: GatewayMatcher
) -> _Picks:
    """Add ``messages`` (or those at ``indices``, ascending) to the counts of ``report``; return the picks.

    The first abuse is the earliest message (the first of them in order on a tie), the last
    abuse the latest (the last of them on a tie), the sample the first signature messages.
    Everything the loop touches is a local: it runs once per message of the log."""
    cont = report.containment_time
    before = after = 0
    timeline = report.timeline
    minutes: dict[datetime, datetime] = {}
    clients: list[str] = []
    senders: list[str] = []
    rcpt_domains: list[str] = []
    sig_domains: list[str] = []
    picks = _Picks()
    sample = picks.sample
    first_outside, last_outside = report.first_outside, report.last_outside
    first_t = last_t = None
    first_at = last_at = -1
    n_outside = n_recipients = n_signature = 0
    for i in range(len(messages)) if indices is None else indices:
        m = messages[i]
        domains: list[str] | None = None
        for r in m.recipients:
            if r.outside:
                n_recipients += 1
                a = r.address
                at = a.rfind("@")
                d = a[at + 1 :].lower().rstrip(".") if at >= 0 else ""  # domain_of
                if domains is None:
                    domains = [d]
                elif d not in domains:
                    domains.append(d)
        if domains is None:
            continue
        n_outside += 1
        clients.append(m.client_addr or "unknown")
        sender = m.sender
        if sender:
            at = sender.rfind("@")
            sd = sender[at + 1 :].lower().rstrip(".") if at >= 0 else ""
            senders.append(sd or "unknown")
        else:
            senders.append("<>" if sender == "" else "unknown")
        rcpt_domains += domains
        t = m.first_seen
        if t is not None:
            if first_outside is None or t < first_outside:
                first_outside = t
            if last_outside is None or t > last_outside:
                last_outside = t
        signature = m.sasl_username is None and matcher(m.client_addr)
        if t is not None:
            minute = minutes.get(t)
            if minute is None:
                minute = minutes[t] = _minute(t)
            slot = timeline.get(minute)
            if slot is None:
                slot = timeline[minute] = [0, 0, 0]
            slot[0] += 1
            if signature:
                slot[1] += 1
        if not signature:
            continue
        n_signature += 1
        sig_domains += domains
        if len(sample) < SAMPLE:
            sample.append(((group, i), m))
        if t is not None:
            if first_t is None or t < first_t:
                first_t, first_at = t, i
            if last_t is None or t >= last_t:
                last_t, last_at = t, i
            if cont is not None:
                if t < cont:
                    before += 1
                else:
                    after += 1
    report.by_client.update(clients)
    report.by_sender_domain.update(senders)
    report.by_recipient_domain.update(rcpt_domains)
    report.signature_by_recipient_domain.update(sig_domains)
    report.outside_messages += n_outside
    report.outside_recipients += n_recipients
    report.signature_messages += n_signature
    report.first_outside, report.last_outside = first_outside, last_outside
    if first_t is not None and last_t is not None:
        picks.first = (first_t, (group, first_at), messages[first_at])
        picks.last = (last_t, (group, last_at), messages[last_at])
    if cont is not None:
        report.before_containment = (report.before_containment or 0) + before
        report.after_containment = (report.after_containment or 0) + after
    return picks


# --------------------------------------------------------------------------- incidents


def containment_time(steps: Iterable[Any]) -> datetime | None:
    """The ``applied`` time of the first containment step (docker.pause, ipv6.strip, docker.stop)."""
    times: list[datetime] = []
    for s in steps:
        if s.action in CONTAINMENT_ACTIONS and s.ended and s.state in ("applied", "undone", "undoing", "undo-failed"):
            try:
                t = datetime.fromisoformat(s.ended)
            except ValueError:
                continue
            times.append(t if t.tzinfo else t.replace(tzinfo=UTC))
    return min(times) if times else None


def incident_report(
    root: Path,
    incident_id: str,
    *,
    gateways: list[str] | None = None,
    local_domains: set[str] | None = None,
    year: int | None = None,
) -> Report:
    """The report for an incident: its logs, its gateways, its containment time and its steps."""
    from lockdown.engine.incident import read_incident

    view = read_incident(root, incident_id)
    gw, gw_source = choose_gateways(gateways, view.path)
    cont = containment_time(view.steps)
    if year is None:
        created = view.meta.get("created")
        if isinstance(created, str) and len(created) >= 4 and created[:4].isdigit():
            year = int(created[:4])
    report = analyse(
        evidence_sources(view.path),
        gateways=gw,
        gateway_source=gw_source,
        local_domains=local_domains,
        containment_time=cont,
        year=year,
    )
    report.incident = {
        "incident_id": view.id,
        "playbook": view.meta.get("playbook", {}).get("name"),
        "created": view.meta.get("created"),
        "run_status": view.run_status,
        "containment_active": view.containment_active,
        "steps": [
            {
                "number": s.number,
                "id": s.id,
                "action": s.action,
                "state": s.state,
                "started": s.started,
                "ended": s.ended,
                "describe": s.describe,
            }
            for s in view.steps
        ],
    }
    return report


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _top(counter: Counter[str], n: int = 25) -> list[tuple[str, int]]:
    return counter.most_common(n)


def timeline_svg(report: Report, width: int = 900, height: int = 220) -> str:
    """A per-minute bar chart of outside (grey) and signature (red) messages, inline SVG."""
    items = sorted(report.timeline.items())
    if not items:
        return '<p class="muted">no outside messages or rejects to chart</p>'
    start, end = items[0][0], items[-1][0]
    minutes = int((end - start).total_seconds() // 60) + 1
    peak = max(max(v[0], v[2]) for _, v in items) or 1
    pad_l, pad_b, pad_t = 40, 30, 10
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    bar = plot_w / max(minutes, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="messages per minute">',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 10}" y2="{pad_t + plot_h}" stroke="#888"/>',
        f'<text x="2" y="{pad_t + 10}" font-size="10">{peak}</text>',
        f'<text x="2" y="{pad_t + plot_h}" font-size="10">0</text>',
    ]
    for t, (outside, signature, rejects) in items:
        i = int((t - start).total_seconds() // 60)
        x = pad_l + i * bar
        w = max(bar * 0.9, 0.5)
        for value, colour in ((outside, "#999"), (signature, "#c0392b")):
            if value:
                h = plot_h * value / peak
                parts.append(
                    f'<rect x="{x:.2f}" y="{pad_t + plot_h - h:.2f}" width="{w:.2f}" height="{h:.2f}" '
                    f'fill="{colour}"><title>{_e(t.isoformat())}: {value}</title></rect>'
                )
        if rejects:
            y = pad_t + plot_h - plot_h * rejects / peak
            parts.append(f'<circle cx="{x + w / 2:.2f}" cy="{y:.2f}" r="2" fill="#2c7be5"/>')
    if report.containment_time is not None:
        off = (_minute(report.containment_time) - start).total_seconds() / 60
        if 0 <= off <= minutes:
            x = pad_l + off * bar
            parts.append(
                f'<line x1="{x:.2f}" y1="{pad_t}" x2="{x:.2f}" y2="{pad_t + plot_h}" '
                'stroke="#27ae60" stroke-width="2" stroke-dasharray="4 3"/>'
                f'<text x="{x + 3:.2f}" y="{pad_t + 10}" font-size="10" fill="#27ae60">containment</text>'
            )
    parts.append(f'<text x="{pad_l}" y="{height - 8}" font-size="10">{_e(start.strftime("%Y-%m-%d %H:%M"))} UTC</text>')
    parts.append(
        f'<text x="{width - 10}" y="{height - 8}" font-size="10" text-anchor="end">'
        f"{_e(end.strftime('%Y-%m-%d %H:%M'))} UTC</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top;font-size:13px}th{background:#f4f4f4}.muted{color:#777}.bad{color:#c0392b;font-weight:bold}
code{font-family:ui-monospace,monospace;word-break:break-all}
"""


def render_html(report: Report) -> str:
    """One self-contained HTML page: no scripts, no external assets; every value escaped."""
    d = report.as_dict()
    inc = report.incident or {}
    title = f"lockdown report {inc.get('incident_id') or ''}".strip()
    summary = [
        ("messages", d["messages"]),
        ("outside messages (accepted for outside domains)", d["outside_messages"]),
        ("outside recipients", d["outside_recipients"]),
        ("signature messages (gateway client, no SASL)", d["signature_messages"]),
        ("first abuse", d["first_abuse"] or "-"),
        ("last abuse", d["last_abuse"] or "-"),
        ("containment time", d["containment_time"] or "-"),
        ("abusive before containment", "-" if d["before_containment"] is None else d["before_containment"]),
        ("abusive after containment", "-" if d["after_containment"] is None else d["after_containment"]),
        ("rejects", d["rejects"]["total"]),
        ("rejects from a gateway", d["rejects"]["from_gateway"]),
        ("connections from a gateway", d["connects_from_gateway"]),
        ("gateways", f"{', '.join(d['gateways'])} ({d['gateway_source']})"),
        ("log lines read", d["lines"]),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    if inc:
        out.append(
            f"<p>playbook <code>{_e(inc.get('playbook'))}</code>, created {_e(inc.get('created'))}, "
            f"run {_e(inc.get('run_status'))}, containment active: {_e(inc.get('containment_active'))}</p>"
        )
    verdict = (
        f'<p class="bad">{d["signature_messages"]} message(s) relayed to outside domains from a Docker gateway '
        "without authentication: the IPv6-through-docker-proxy open relay signature.</p>"
        if d["signature_messages"]
        else '<p class="muted">No message matches the gateway-without-SASL signature.</p>'
    )
    out.append(verdict)
    out.append("<h2>Summary</h2>" + _table(["", ""], summary))
    out.append("<h2>Timeline (per minute)</h2>" + timeline_svg(report))
    out.append('<p class="muted">grey: outside messages; red: signature messages; blue dots: rejects; '
               "green dashed line: containment.</p>")  # fmt: skip
    out.append("<h2>Outside messages by client address</h2>" + _table(["client", "messages"], _top(report.by_client)))
    out.append("<h2>By sender domain</h2>" + _table(["sender domain", "messages"], _top(report.by_sender_domain)))
    out.append(
        "<h2>By recipient domain</h2>"
        + _table(
            ["recipient domain", "messages", "signature messages"],
            [(k, v, report.signature_by_recipient_domain.get(k, 0)) for k, v in _top(report.by_recipient_domain)],
        )
    )
    out.append(
        "<h2>Rejects by code</h2>" + _table(["code", "count"], sorted(report.rejects_by_code.items()))
    )
    rows = []
    for m in report.sample:
        rcpts = ", ".join(f"{r.address} ({r.status or '?'})" for r in m.recipients if r.outside)
        rows.append(
            (
                m.first_seen.astimezone(UTC).isoformat() if m.first_seen else "",
                m.queue_id + (" → " + " → ".join(m.queued_as) if m.queued_as else ""),
                f"{m.client_host or ''}[{m.client_addr or ''}]",
                m.sender,
                rcpts,
            )
        )
    out.append(
        f"<h2>Signature messages (first {SAMPLE})</h2>"
        + _table(["first seen (UTC)", "queue id", "client", "from", "outside recipients"], rows)
    )
    steps = inc.get("steps") or []
    if steps:
        out.append(
            "<h2>Incident steps</h2>"
            + _table(
                ["#", "step", "action", "state", "started", "ended", "what"],
                [
                    (s["number"], s["id"], s["action"], s["state"], s["started"], s["ended"], s["describe"])
                    for s in steps
                ],
            )
        )
    out.append("<h2>Sources</h2>" + _table(["log"], [(s,) for s in report.sources]))
    out.append(f'<p class="muted">generated by lockdown at {_e(datetime.now(UTC).isoformat())}</p>')
    out.append("</body></html>\n")
    return "\n".join(out)


def write_html(report: Report, path: Path) -> None:
    """Write the HTML report 0600 (it holds addresses), replacing the file atomically."""
    from lockdown.paths import atomic_write

    if path.is_dir():
        raise BadInput(f"--html {path}: is a directory")
    if not path.parent.is_dir():
        raise BadInput(f"--html {path}: directory {path.parent} does not exist")
    try:
        atomic_write(path, render_html(report).encode("utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror}") from None
