"""The report's analysis: read every source once, join lines into messages (``parser.Correlator``)
and add each message up as soon as Postfix is done with it.

``Report.as_dict()`` is the ``--json`` interface. Memory follows the messages still open (queued,
deferred, or not yet ``removed`` for ``RETIRE_AFTER`` lines), not the length of the log: a
message is counted and forgotten once retired.

The *signature* of the IPv6-through-docker-proxy relay: a message for an outside domain whose
client is a Docker gateway address and which carried no SASL authentication. On Mailu, whose
``front`` (nginx's mail proxy) hands each client to Postfix in ``smtp``, a client that is front's
own address (``handoff``: nginx without XCLIENT) arrived through the same path and counts too.

postscreen (mailcow runs it) lets the gateway in before smtpd logs anything about a message:
its ``ALLOWLISTED``/``WHITELISTED`` of a gateway address is the relay's first trace.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lockdown.mail.parser import (
    POSTSCREEN_VERDICTS,
    Correlator,
    GatewayMatcher,
    LineSplitter,
    Message,
    MessageEvent,
    domain_of,
    might_matter,
)
from lockdown.mail.sources import Source, oldest_first

SAMPLE = 50
#: Bytes of log the first pass reads at a time, whatever size the source's chunks have. The text,
#: its decoded copy and the ~300 rows the pass returns for it stay in the CPU's L2 cache (512 KiB
#: a core on the bench machine): 1M lines took 9.3 s of CPU in 32 KiB blocks, 10.7 s in 128 KiB
#: ones (docs/audit.md "Performance").
BLOCK = 32 << 10
#: The cyclic GC's thresholds while a report reads (see ``_fewer_collections``).
READ_GC_THRESHOLDS = (20_000, 20, 100)
#: Lines read after a message's last ``removed`` before it is counted and forgotten.
RETIRE_AFTER = 20_000


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
    postfix_lines: int = 0
    unparsed_lines: int = 0
    unparsed_sample: list[str] = field(default_factory=list)
    messages: int = 0
    outside_messages: int = 0
    outside_recipients: int = 0
    signature_messages: int = 0
    gateway_seen: bool = False
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
    postscreen: Counter[str] = field(default_factory=Counter)
    postscreen_from_gateway: Counter[str] = field(default_factory=Counter)
    first_gateway_trace: MessageEvent | None = None
    handoff: list[str] = field(default_factory=list)
    stack: dict[str, Any] | None = None
    sample: list[Message] = field(default_factory=list)
    learned_local: set[str] = field(default_factory=set)
    held_queue: dict[str, Any] | None = None
    incident: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "gateways": self.gateways,
            "gateway_source": self.gateway_source,
            "gateway_seen": self.gateway_seen,
            "local_domains": self.local_domains,
            "lines": self.lines,
            "duplicate_lines": self.duplicate_lines,
            "cut_lines": self.cut_lines,
            "postfix_lines": self.postfix_lines,
            "unparsed_lines": self.unparsed_lines,
            "unparsed_sample": self.unparsed_sample,
            "messages": self.messages,
            "outside_messages": self.outside_messages,
            "outside_recipients": self.outside_recipients,
            "signature_messages": self.signature_messages,
            "by_client": dict(self.by_client),
            "by_sender_domain": dict(self.by_sender_domain),
            "by_recipient_domain": dict(self.by_recipient_domain),
            "signature_by_recipient_domain": dict(self.signature_by_recipient_domain),
            "first_abuse": _first_seen(self.first_abuse),
            "last_abuse": _first_seen(self.last_abuse),
            "first_abuse_message": self.first_abuse.as_dict() if self.first_abuse else None,
            "last_abuse_message": self.last_abuse.as_dict() if self.last_abuse else None,
            "first_outside": _iso(self.first_outside),
            "last_outside": _iso(self.last_outside),
            "containment_time": _iso(self.containment_time),
            "before_containment": self.before_containment,
            "after_containment": self.after_containment,
            "timeline": [
                {"minute": _iso(t), "outside": v[0], "signature": v[1], "rejects": v[2]}
                for t, v in sorted(self.timeline.items())
            ],
            "rejects": {
                "total": self.rejects,
                "by_code": dict(self.rejects_by_code),
                "from_gateway": self.rejects_from_gateway,
            },
            "connects_from_gateway": self.connects_from_gateway,
            "postscreen_connects_from_gateway": self.postscreen_connects_from_gateway,
            "postscreen": {
                **{_key(v): self.postscreen[v] for v in POSTSCREEN_VERDICTS},
                "from_gateway": {_key(v): self.postscreen_from_gateway[v] for v in POSTSCREEN_VERDICTS},
            },
            "first_gateway_trace": _trace(self.first_gateway_trace),
            "handoff": list(self.handoff),
            "stack": self.stack,
            "signature_sample": [m.as_dict() for m in self.sample],
            "held_queue": self.held_queue,
            "incident": self.incident,
        }


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat() if t else None


def _key(verdict: str) -> str:
    """``PASS OLD`` -> ``pass_old``: a postscreen verdict as a JSON key."""
    return verdict.lower().replace(" ", "_")


def _trace(ev: MessageEvent | None) -> dict[str, Any] | None:
    if ev is None:
        return None
    return {"time": _iso(ev.time), "verdict": ev.code, "client_addr": ev.message.client_addr,
            "service": ev.message.service}  # fmt: skip


def _first_seen(m: Message | None) -> str | None:
    return _iso(m.first_seen) if m else None


def minute(t: datetime) -> datetime:
    """The UTC minute ``t`` falls in: the timeline's unit."""
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def top(counter: Counter[str], n: int) -> list[tuple[str, int]]:
    """The ``n`` largest counts, ties by name (the order messages were counted in is not fixed)."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


# --------------------------------------------------------------------------- reading


def analyse(
    sources: Sequence[Source],
    *,
    gateways: list[str],
    gateway_source: str = "option",
    local_domains: set[str] | None = None,
    containment_time: datetime | None = None,
    year: int | None = None,
    retire_after: int = RETIRE_AFTER,
    handoff: Sequence[str] = (),
) -> Report:
    """Read every source once, in one process, and build the report.

    ``handoff``: addresses that, as a client, mean the proxied path as much as a gateway does
    (Mailu's ``front``, ``evidence.handoff_addresses``).

    With several sources (read oldest first), a line already read from another source (the
    same log kept by ``docker logs`` and ``/var/log/mail.log``) is counted once; that needs one
    hash per line that can matter, so only a single source reads in memory bounded by the open messages.
    """
    if len(sources) > 1:
        sources = oldest_first(sources, year)
    with _fewer_collections():
        return _analyse(sources, gateways, gateway_source, local_domains, containment_time, year, retire_after, handoff)


_gc_lock = threading.Lock()
_gc_readers = 0
_gc_saved: tuple[int, int, int] = gc.get_threshold()


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the GC's young generations less often while a report reads.

    A report allocates millions of short-lived, acyclic objects (rows, fields, messages): they
    are freed by reference counting, and the cyclic GC's default of a collection every 700
    allocations only walks them (~8 % of the CPU time at 1M lines). Collections still run, every
    ``READ_GC_THRESHOLDS[0]`` allocations, so memory stays bounded; the old thresholds come back
    when the last concurrent read ends.
    """
    global _gc_readers, _gc_saved
    with _gc_lock:
        if _gc_readers == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(*READ_GC_THRESHOLDS)
        _gc_readers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_readers -= 1
            if _gc_readers == 0:
                gc.set_threshold(*_gc_saved)


def _analyse(
    sources: Sequence[Source],
    gateways: list[str],
    gateway_source: str,
    local_domains: set[str] | None,
    containment_time: datetime | None,
    year: int | None,
    retire_after: int,
    handoff: Sequence[str],
) -> Report:
    report = Report(
        sources=[s.name for s in sources],
        gateways=list(gateways),
        gateway_source=gateway_source,
        local_domains=sorted(local_domains) if local_domains is not None else None,
        containment_time=containment_time,
        handoff=list(handoff),
    )
    tally = _Tally(report, GatewayMatcher([*gateways, *handoff]))
    correlator = Correlator(
        local_domains,
        retire_after=retire_after,
        events=("reject", "postscreen"),
        count_connects=True,
        count_verdicts=True,
    )
    seen: dict[int, int] | None = {} if len(sources) > 1 else None
    for index, source in enumerate(sources):
        _read(correlator, source, year, tally, seen, index)
    for m in (*correlator.drain(), *correlator.finish()):
        tally.add(m)
    tally.connects(correlator.connects)
    tally.verdicts(correlator.verdicts)
    tally.done()
    report.lines, report.unparsed_lines = correlator.lines, correlator.unparsed
    report.postfix_lines = correlator.lines - correlator.unparsed - correlator.blank
    report.unparsed_sample = list(correlator.unparsed_sample)
    report.learned_local = set(correlator.learned_local)
    return report


def _read(
    correlator: Correlator, source: Source, year: int | None, tally: _Tally, seen: dict[int, int] | None, index: int
) -> None:
    """Feed one source block by block (or line by line, against ``seen``, when several are read)."""
    splitter = LineSplitter()
    for chunk in _blocks(source.open()):
        if seen is None:
            block, count = splitter.feed_block(chunk)
            if count:
                tally.events(correlator.feed_block(block, year, count=count))
        else:
            for text in splitter.feed(chunk):
                _feed_once(correlator, text, year, tally, seen, index)
        for m in correlator.drain():
            tally.add(m)
        tally.connects(correlator.connects)  # counted as they come: memory does not grow with clients
        correlator.connects.clear()
        tally.verdicts(correlator.verdicts)
        correlator.verdicts.clear()
    for text in splitter.flush():
        if seen is None:
            tally.events(correlator.feed_text(text, year))
        else:
            _feed_once(correlator, text, year, tally, seen, index)
    tally.report.cut_lines += splitter.cut_lines


def _blocks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The source's chunks cut to at most ``BLOCK`` bytes."""
    for chunk in chunks:
        if len(chunk) <= BLOCK:
            yield chunk
        else:
            view = memoryview(chunk)
            for at in range(0, len(chunk), BLOCK):
                yield bytes(view[at : at + BLOCK])


def _feed_once(
    correlator: Correlator, text: str, year: int | None, tally: _Tally, seen: dict[int, int], index: int
) -> None:
    if might_matter(text) and _duplicate(seen, text, index):
        tally.report.duplicate_lines += 1
        correlator.lines += 1
        return
    tally.events(correlator.feed_text(text, year))


def _duplicate(seen: dict[int, int], text: str, index: int) -> bool:
    """True when another source already had this line (Docker's timestamp prefix ignored)."""
    if len(text) > 31 and text[10:11] == "T" and text[4:5] == "-":
        rest = text[text.find(" ") + 1 :]
        if rest[3:4] == " " or rest[10:11] == "T":  # a syslog timestamp follows: that was Docker's
            text = rest
    return seen.setdefault(hash(text), index) != index


# --------------------------------------------------------------------------- adding up


class _Tally:
    """Adds up messages one at a time, in any order, into the report.

    What depends on order is decided by each message's ``seq`` (the order the Correlator first
    saw them): the sample is the first ``SAMPLE`` signature messages, the first abuse the
    earliest (the first of them on a tie), the last abuse the latest (the last of them on a tie).
    """

    def __init__(self, report: Report, matcher: GatewayMatcher) -> None:
        self.report = report
        self.matcher = matcher
        self._sample: list[tuple[int, int, Message]] = []  # (-seq, id, message): a max-heap on seq
        self._first: tuple[datetime, int, Message] | None = None
        self._last: tuple[datetime, int, Message] | None = None
        self._minutes: dict[datetime, datetime] = {}

    def events(self, events: Iterable[MessageEvent]) -> None:
        """Rejects: counted by code, from a gateway, and per minute; postscreen's verdicts."""
        r = self.report
        for ev in events:
            if ev.kind == "postscreen":
                self._postscreen(ev)
                continue
            if ev.kind != "reject":
                continue
            r.rejects += 1
            r.rejects_by_code[ev.code or "?"] += 1
            if self.matcher(ev.message.client_addr):
                r.rejects_from_gateway += 1
                r.gateway_seen = True
            if ev.time is not None:
                r.timeline.setdefault(minute(ev.time), [0, 0, 0])[2] += 1

    def _postscreen(self, ev: MessageEvent) -> None:
        """A verdict, counted; the earliest ALLOWLISTED/WHITELISTED of a gateway is the first trace
        (the first of them on a tie: events come in the order their lines were read)."""
        r = self.report
        verdict = ev.code or "?"
        r.postscreen[verdict] += 1
        if not self.matcher(ev.message.client_addr):
            return
        r.postscreen_from_gateway[verdict] += 1
        r.gateway_seen = True
        if verdict not in ("ALLOWLISTED", "WHITELISTED"):
            return
        first = r.first_gateway_trace
        if first is None or (ev.time is not None and (first.time is None or ev.time < first.time)):
            r.first_gateway_trace = ev

    def verdicts(self, verdicts: Counter[tuple[str, str, str]]) -> None:
        """postscreen's verdicts counted by the Correlator (``COUNTED_VERDICTS``: not a first trace)."""
        r = self.report
        for (_, verdict, addr), n in verdicts.items():
            r.postscreen[verdict] += n
            if self.matcher(addr):
                r.postscreen_from_gateway[verdict] += n
                r.gateway_seen = True

    def connects(self, connects: Counter[tuple[str, str]]) -> None:
        r = self.report
        for (service, addr), n in connects.items():
            if self.matcher(addr):
                r.connects_from_gateway += n
                r.gateway_seen = True
                if service.endswith("postscreen"):
                    r.postscreen_connects_from_gateway += n

    def add(self, m: Message) -> None:
        """One message: counted, and if it went outside, by client, sender and recipient domain."""
        r = self.report
        r.messages += 1
        outside = [x for x in m.recipients if x.outside]
        if not outside:
            if not r.gateway_seen and self.matcher(m.client_addr):
                r.gateway_seen = True
            return
        gateway_client = self.matcher(m.client_addr)
        r.gateway_seen = r.gateway_seen or gateway_client
        from_gateway = gateway_client and m.sasl_username is None
        domains = [domain_of(x.address) for x in outside]
        if len(domains) > 1:
            domains = list(dict.fromkeys(domains))
        r.outside_messages += 1
        r.outside_recipients += len(outside)
        r.by_client[m.client_addr or "unknown"] += 1
        r.by_sender_domain[domain_of(m.sender) or ("<>" if m.sender == "" else "unknown")] += 1
        for d in domains:
            r.by_recipient_domain[d] += 1
        t = m.first_seen
        if t is not None:
            if r.first_outside is None or t < r.first_outside:
                r.first_outside = t
            if r.last_outside is None or t > r.last_outside:
                r.last_outside = t
            slot = r.timeline.get(self._minute(t))
            if slot is None:
                slot = r.timeline[self._minute(t)] = [0, 0, 0]
            slot[0] += 1
            slot[1] += from_gateway
        if from_gateway:
            self._signature(m, domains)

    def _minute(self, t: datetime) -> datetime:
        hit = self._minutes.get(t)
        if hit is None:
            if len(self._minutes) > 4096:
                self._minutes.clear()
            hit = self._minutes[t] = minute(t)
        return hit

    def _signature(self, m: Message, domains: list[str]) -> None:
        r = self.report
        r.signature_messages += 1
        r.signature_by_recipient_domain.update(domains)
        item = (-m.seq, id(m), m)
        if len(self._sample) < SAMPLE:
            heapq.heappush(self._sample, item)
        elif item > self._sample[0]:
            heapq.heapreplace(self._sample, item)
        t = m.first_seen
        if t is None:
            return
        if self._first is None or (t, m.seq) < self._first[:2]:
            self._first = (t, m.seq, m)
        if self._last is None or (t, m.seq) > self._last[:2]:
            self._last = (t, m.seq, m)
        if r.containment_time is not None:
            if t < r.containment_time:
                r.before_containment = (r.before_containment or 0) + 1
            else:
                r.after_containment = (r.after_containment or 0) + 1

    def done(self) -> None:
        """The order-dependent picks, into the report."""
        r = self.report
        r.sample = [m for _, _, m in sorted(self._sample, reverse=True)]
        r.first_abuse = self._first[2] if self._first else None
        r.last_abuse = self._last[2] if self._last else None
        if r.containment_time is not None:
            r.before_containment = r.before_containment or 0
            r.after_containment = r.after_containment or 0
