"""Postfix log lines in, messages out. Pure standard library, single pass.

Three layers, each usable alone:

``parse_line(line)``
    One log line -> ``LogLine`` (time, host, service, pid, queue id, message),
    or None for a line that is not from Postfix. Understands RFC 3164
    (``Nov 22 23:43:37 host postfix/smtpd[123]: ...``), RFC 3339
    (docker-mailserver >= 14) and Docker's ``--timestamps`` prefix in front of
    either. Amavis lines (``amavis[pid]: ... queued_as: X``) are parsed too,
    because they link a content filter's second queue id to the first.
``LineSplitter``
    Reassembles lines from byte chunks that are not aligned to lines, with a
    bound on the length of one line.
``Correlator``
    Joins the lines of each message (smtpd ``client=``, cleanup
    ``message-id=``, qmgr ``from=``, delivery agents ``to=``) and emits
    ``MessageEvent``s: ``outside-recipient``, ``reject`` and ``connect``.

Everything here reads attacker-controlled text: no regular expression that
can backtrack, only ``str`` methods, and every loop is bounded by the line.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

MAX_LINE = 64 * 1024
"""Longest line LineSplitter returns; the rest of a longer line is dropped."""

_MONTHS = {
    "Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "May": 5, "Jun": 6,
    "Jul": 7, "Aug": 8, "Sep": 9, "Oct": 10, "Nov": 11, "Dec": 12,
}  # fmt: skip
_HEX_UPPER = "0123456789ABCDEF"
_HALF_YEAR = timedelta(days=183)


# --------------------------------------------------------------------------- lines


@dataclass(slots=True)
class LogLine:
    """One Postfix (or Amavis) log line.

    ``time`` is timezone-aware: the syslog timestamp when there is one, else
    Docker's. ``message`` is the text after ``QUEUEID: `` (or ``NOQUEUE: ``),
    else after ``service[pid]: ``. ``docker_time`` is Docker's prefix, if any.
    """

    time: datetime | None
    host: str | None
    service: str
    pid: int | None
    queue_id: str | None
    message: str
    raw: str
    docker_time: datetime | None = None


def is_queue_id(text: str) -> bool:
    """True for a Postfix queue id: short (upper-case hex) or long (alphanumeric with a ``z``)."""
    n = len(text)
    if n < 5 or n > 24 or not text.isascii() or not text.isalnum():
        return False
    if not text.strip(_HEX_UPPER):
        return True
    return n >= 12 and "z" in text


def _looks_iso(s: str) -> bool:
    return len(s) > 19 and s[4] == "-" and s[7] == "-" and s[10] == "T" and s[:4].isdigit()


def _looks_3164(s: str) -> bool:
    return len(s) > 16 and s[3] == " " and s[6] == " " and s[9] == ":" and s[15] == " " and s[:3] in _MONTHS


def _iso(text: str) -> datetime | None:
    """RFC 3339 / Docker timestamp -> aware datetime (nanoseconds cut to microseconds)."""
    s = text
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    dot = s.find(".", 19)
    if dot > 0:
        end = dot + 1
        n = len(s)
        while end < n and s[end].isdigit():
            end += 1
        frac = s[dot + 1 : end]
        if len(frac) != 6:
            frac = (frac + "000000")[:6]
        s = s[:dot] + "." + frac + s[end:]
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


_3164_CACHE: dict[tuple[str, int], tuple[int, int, int, int, int, int]] = {}


def _fields_3164(stamp: str, year: int) -> tuple[int, int, int, int, int, int] | None:
    key = (stamp, year)
    hit = _3164_CACHE.get(key)
    if hit is not None:
        return hit
    try:
        month = _MONTHS[stamp[:3]]
        day = int(stamp[4:6])
        hh, mm, ss = int(stamp[7:9]), int(stamp[10:12]), int(stamp[13:15])
        datetime(year, month, day, hh, mm, ss)  # validates (Feb 30, 25:00 ...)
    except (KeyError, ValueError):
        return None
    if len(_3164_CACHE) > 8192:
        _3164_CACHE.clear()
    value = (year, month, day, hh, mm, ss)
    _3164_CACHE[key] = value
    return value


def _time_3164(stamp: str, year: int | None, tz: tzinfo | None, hint: datetime | None) -> datetime | None:
    """``Nov 22 23:43:37`` -> aware datetime.

    The year is ``year`` if given, else the year of Docker's timestamp
    ``hint``, else the current year; without an explicit year, a date more
    than half a year (hint) or a day (now) in the future belongs to the year before.
    """
    base = year if year is not None else (hint.year if hint is not None else datetime.now(UTC).year)
    f = _fields_3164(stamp, base)
    if f is None:
        return None
    zone = tz if tz is not None else (_docker_offset(f, hint) if hint is not None else UTC)
    dt = datetime(f[0], f[1], f[2], f[3], f[4], f[5], tzinfo=zone)
    if year is not None:
        return dt
    ref = hint if hint is not None else datetime.now(UTC)
    slack = _HALF_YEAR if hint is not None else timedelta(days=1)
    if dt - ref > slack:
        return _shift_year(dt, -1)
    if hint is not None and ref - dt > _HALF_YEAR:
        return _shift_year(dt, +1)
    return dt


def _shift_year(dt: datetime, by: int) -> datetime:
    try:
        return dt.replace(year=dt.year + by)
    except ValueError:  # Feb 29
        return dt.replace(year=dt.year + by, day=28)


def _docker_offset(f: tuple[int, int, int, int, int, int], hint: datetime) -> tzinfo:
    """The container's UTC offset, read off the gap between its local syslog time and Docker's UTC time.

    Rounded to 15 minutes; UTC when the gap is not a plausible offset (the
    line was written long before Docker read it).
    """
    local = datetime(hint.year, f[1], f[2], f[3], f[4], f[5])
    gap = (local - hint.astimezone(UTC).replace(tzinfo=None)).total_seconds()
    if abs(gap) > 366 * 86400 / 2:  # year boundary: the year is fixed up later
        return UTC
    quarters = round(gap / 900)
    if quarters == 0 or abs(gap - quarters * 900) > 120 or abs(quarters) > 14 * 4:
        return UTC
    return timezone(timedelta(seconds=quarters * 900))


def _is_mail_service(service: str) -> bool:
    head = service.split("/", 1)[0]
    return head.startswith("postfix") or head in ("amavis", "amavisd", "amavisd-new")


def parse_line(line: str, year: int | None = None, *, tz: tzinfo | None = None) -> LogLine | None:
    """One log line -> LogLine, or None when it is not a Postfix (or Amavis) line.

    ``year`` completes RFC 3164 timestamps (default: Docker's prefix, else the
    current year); ``tz`` is their time zone (default UTC, or the offset implied
    by Docker's UTC prefix).
    """
    raw = line.rstrip("\r\n")
    rest = raw
    docker_time: datetime | None = None
    when: datetime | None = None
    if rest[:1] == "<":  # a syslog priority such as <22>
        end = rest.find(">", 1, 6)
        if end > 1 and rest[1:end].isdigit():
            rest = rest[end + 1 :]
    if _looks_iso(rest):
        sp = rest.find(" ")
        if sp < 0:
            return None
        first = _iso(rest[:sp])
        if first is None:
            return None
        after = rest[sp + 1 :]
        if _looks_iso(after):
            sp2 = after.find(" ")
            if sp2 < 0:
                return None
            docker_time = first
            when = _iso(after[:sp2]) or first
            rest = after[sp2 + 1 :]
        elif _looks_3164(after):
            docker_time = first
            when = _time_3164(after[:15], year, tz, first) or first
            rest = after[16:].lstrip(" ")
        else:
            when = first
            rest = after
    elif _looks_3164(rest):
        when = _time_3164(rest[:15], year, tz, None)
        rest = rest[16:].lstrip(" ")

    colon = rest.find(": ")
    if colon < 0:
        if not rest.endswith(":"):
            return None
        colon = len(rest) - 1
    sp = rest.find(" ", 0, colon)
    if sp >= 0:
        host: str | None = rest[:sp]
        tag = rest[sp + 1 : colon]
        if " " in tag:
            return None
    else:
        host = None
        tag = rest[:colon]
    pid: int | None = None
    b = tag.find("[")
    if b > 0 and tag.endswith("]"):
        service = tag[:b]
        pid_text = tag[b + 1 : -1]
        pid = int(pid_text) if pid_text.isdigit() and len(pid_text) < 12 else None
    else:
        service = tag
    if not service or not _is_mail_service(service):
        return None
    message = rest[colon + 2 :]
    queue_id: str | None = None
    q = message.find(": ", 0, 26)
    if q >= 5:
        cand = message[:q]
        if cand == "NOQUEUE" or is_queue_id(cand):
            queue_id = cand
            message = message[q + 2 :]
    return LogLine(when, host or None, service, pid, queue_id, message, raw, docker_time)


class LineSplitter:
    """Reassembles text lines from byte chunks cut anywhere.

    Lines end at ``\\n`` (a trailing ``\\r`` is removed); bytes are decoded as
    UTF-8 with replacement. A line longer than ``max_line`` bytes is cut to
    ``max_line`` and the rest of it, up to its newline, is dropped, so memory
    stays bounded whatever the input.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._overflow = False
        self.cut_lines = 0

    def _hold(self, piece: bytes) -> None:
        room = self.max_line - self._pending_len
        if len(piece) > room:
            piece = piece[: max(room, 0)]
            if not self._overflow:
                self._overflow = True
                self.cut_lines += 1
        if piece:
            self._pending.append(piece)
            self._pending_len += len(piece)

    def _take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending = []
        self._pending_len = 0
        self._overflow = False
        return data

    def feed(self, chunk: bytes) -> list[str]:
        """The lines completed by ``chunk``, in order."""
        first_nl = chunk.find(b"\n")
        if first_nl < 0:
            self._hold(chunk)
            return []
        self._hold(chunk[:first_nl])
        out = [self._take()]
        last_nl = chunk.rfind(b"\n")
        if last_nl > first_nl:
            middle = chunk[first_nl + 1 : last_nl].split(b"\n")
            if max(map(len, middle)) > self.max_line:
                for i, piece in enumerate(middle):
                    if len(piece) > self.max_line:
                        middle[i] = piece[: self.max_line]
                        self.cut_lines += 1
            out.extend(middle)
        self._hold(chunk[last_nl + 1 :])
        text = b"\n".join(out).decode("utf-8", "replace")
        lines = text.split("\n")
        if "\r" in text:
            lines = [s[:-1] if s.endswith("\r") else s for s in lines]
        return lines

    def feed_block(self, chunk: bytes) -> tuple[str, int]:
        """The lines completed by ``chunk`` as one text (joined by ``\\n``, no final newline) and their count.

        The same lines as ``feed``, without building a list of them: ``Correlator.feed_block``
        reads the text with one regular expression pass.
        """
        first_nl = chunk.find(b"\n")
        if first_nl < 0:
            self._hold(chunk)
            return "", 0
        last_nl = chunk.rfind(b"\n")
        middle = chunk[first_nl + 1 : last_nl] if last_nl > first_nl else b""
        if len(middle) > self.max_line and _may_hold_long_line(middle, self.max_line):
            lines = self.feed(chunk)
            return "\n".join(lines), len(lines)
        self._hold(chunk[:first_nl])
        head = self._take()
        self._hold(chunk[last_nl + 1 :])
        if last_nl > first_nl:
            raw = b"".join((head, b"\n", middle))
            count = middle.count(b"\n") + 2
        else:
            raw, count = head, 1
        text = raw.decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            if text.endswith("\r"):
                text = text[:-1]
        return text, count

    def flush(self) -> list[str]:
        """The last line if it had no newline (and reset)."""
        if not self._pending_len and not self._pending:
            return []
        text = self._take().decode("utf-8", "replace")
        return [text[:-1] if text.endswith("\r") else text]


def _may_hold_long_line(data: bytes, max_line: int) -> bool:
    """False when no line of ``data`` can be longer than ``max_line``: every stretch of
    ``max_line // 2`` bytes holds a newline (a longer line would contain a whole stretch)."""
    step = max(max_line // 2, 1)
    find = data.find
    return any(find(b"\n", i, i + step) < 0 for i in range(0, len(data), step)) and (
        max(map(len, data.split(b"\n"))) > max_line
    )


def iter_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE) -> Iterable[str]:
    """Lines from an iterable of byte chunks (a file read in blocks, a socket...)."""
    splitter = LineSplitter(max_line)
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.flush()


# --------------------------------------------------------------------------- gateways


def default_gateways() -> list[str]:
    """The ``.1`` gateway of every subnet in Docker's default address pools.

    172.16.0.0/12 is handed out as /16s (172.16.0.1 ... 172.31.0.1) and
    192.168.0.0/16 as /20s (192.168.0.1, 192.168.16.1 ... 192.168.240.1).
    Used when neither ``--gateway`` nor a reachable Docker daemon names them.
    """
    out = [f"172.{n}.0.1" for n in range(16, 32)]
    out += [f"192.168.{n}.1" for n in range(0, 256, 16)]
    return out


def normalize_addr(addr: str) -> str:
    """``IPv6:2001:db8::1`` -> ``2001:db8::1``; ``::ffff:172.17.0.1`` -> ``172.17.0.1``; lower case."""
    a = addr.strip().lower()
    if a.startswith("ipv6:"):
        a = a[5:]
    if a.startswith("::ffff:") and "." in a:
        a = a[7:]
    return a


#: An IPv4 address that ``ipaddress`` would print back unchanged (when it parses at all).
_PLAIN_IPV4 = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")


class GatewayMatcher:
    """Fast repeated ``is_gateway`` tests against one list (addresses or CIDR networks)."""

    def __init__(self, gateways: Iterable[str]) -> None:
        self.addresses: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for g in gateways:
            g = normalize_addr(g)
            if "/" in g:
                try:
                    self.networks.append(ipaddress.ip_network(g, strict=False))
                except ValueError:
                    continue
            else:
                try:
                    self.addresses.add(str(ipaddress.ip_address(g)))
                except ValueError:
                    self.addresses.add(g)
        self._cache: dict[str, bool] = {}

    def __call__(self, addr: str | None) -> bool:
        if not addr:
            return False
        hit = self._cache.get(addr)
        if hit is not None:
            return hit
        if not self.networks and addr.isascii() and addr.replace(".", "").isdigit():
            # Dotted digits: ``ipaddress`` reads them back unchanged or not at all (leading
            # zeros, a part over 255), so membership decides. A report asks this for every
            # distinct client address (~100,000 in a busy day's log), each once.
            return addr in self.addresses
        a = normalize_addr(addr)
        result = a in self.addresses
        if not result and (self.networks or _PLAIN_IPV4.fullmatch(a) is None):
            try:
                ip = ipaddress.ip_address(a)
            except ValueError:
                ip = None
            if ip is not None:
                result = str(ip) in self.addresses or any(ip in n for n in self.networks)
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[addr] = result
        return result


def is_gateway(addr: str, gateways: list[str]) -> bool:
    """True when ``addr`` (as Postfix logs it) is one of ``gateways`` (addresses or CIDRs)."""
    return GatewayMatcher(gateways)(addr)


# --------------------------------------------------------------------------- messages


def domain_of(address: str | None) -> str:
    """The lower-case domain of an address, '' when there is none."""
    if not address:
        return ""
    at = address.rfind("@")
    return address[at + 1 :].lower().rstrip(".") if at >= 0 else ""


@dataclass(slots=True)
class Recipient:
    """One recipient of a message, as its latest delivery line tells it."""

    address: str
    relay: str | None = None
    status: str | None = None
    dsn: str | None = None
    time: datetime | None = None
    delay: float | None = None
    detail: str | None = None
    service: str | None = None
    outside: bool = False

    @property
    def domain(self) -> str:
        return domain_of(self.address)

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "relay": self.relay,
            "status": self.status,
            "dsn": self.dsn,
            "time": self.time.isoformat() if self.time else None,
            "delay": self.delay,
            "detail": self.detail,
            "outside": self.outside,
        }


@dataclass(slots=True)
class Message:
    """Everything the log says about one message, joined across its queue ids."""

    queue_id: str
    client_host: str | None = None
    client_addr: str | None = None
    sasl_username: str | None = None
    sender: str | None = None
    recipients: list[Recipient] = field(default_factory=list)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    queued_as: list[str] = field(default_factory=list)
    service: str | None = None
    message_id: str | None = None
    size: int | None = None
    nrcpt: int | None = None
    sasl_method: str | None = None
    removed: bool = False

    @property
    def outside(self) -> bool:
        """True when at least one recipient is in an outside domain."""
        return any(r.outside for r in self.recipients)

    @property
    def sender_domain(self) -> str:
        return domain_of(self.sender)

    def recipient(self, address: str) -> Recipient | None:
        for r in reversed(self.recipients):
            if r.address == address:
                return r
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id,
            "queued_as": list(self.queued_as),
            "client_host": self.client_host,
            "client_addr": self.client_addr,
            "sasl_username": self.sasl_username,
            "sasl_method": self.sasl_method,
            "sender": self.sender,
            "service": self.service,
            "message_id": self.message_id,
            "size": self.size,
            "nrcpt": self.nrcpt,
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "recipients": [r.as_dict() for r in self.recipients],
        }


@dataclass(slots=True)
class MessageEvent:
    """Something worth acting on, as soon as its line is read.

    ``kind``: ``outside-recipient`` (the first time a recipient in an outside
    domain is seen for a message), ``reject`` (``message`` is a stand-in
    holding client, sender and the refused recipient; ``code`` e.g. ``554``) or
    ``connect`` (``message`` holds only the client; queue id ``NOQUEUE``).
    """

    kind: str
    message: Message
    recipient: Recipient | None
    time: datetime | None
    code: str | None = None
    detail: str | None = None


_LOCAL_AGENTS = frozenset({"local", "virtual", "lmtp", "pipe"})
_RELAY_AGENTS = frozenset({"smtp", "error", "retry"})
_DELIVERY_AGENTS = _LOCAL_AGENTS | _RELAY_AGENTS | {"discard"}


def _split_client(text: str) -> tuple[str | None, str | None]:
    """``unknown[172.17.0.1]:5432`` -> (``unknown``, ``172.17.0.1``); ``[::1]`` -> (None, ``::1``)."""
    b = text.find("[")
    if b < 0:
        return (text or None), None
    e = text.find("]", b)
    if e < 0:
        return (text[:b] or None), None
    addr = text[b + 1 : e]
    if addr[:5].lower() == "ipv6:":
        addr = addr[5:]
    return (text[:b] or None), (addr or None)


def _field(text: str, key: str, start: int, end: int) -> str | None:
    """The value of ``, key=value`` between ``start`` and ``end`` (up to the next ``, ``)."""
    i = text.find(key, start, end)
    if i < 0:
        return None
    i += len(key)
    j = text.find(", ", i, end)
    return text[i : j if j >= 0 else end]


def _angle(text: str, key: str, start: int = 0) -> str | None:
    """The address in ``key<...>`` (e.g. ``from=<a@b>``), or None."""
    i = text.find(key + "<", start)
    if i < 0:
        return None
    i += len(key) + 1
    e = text.find(">", i)
    return text[i:e] if e >= 0 else text[i:]


def is_filter_relay(relay: str | None) -> bool:
    """A relay that is a local content filter (Amavis on 127.0.0.1:10024 and the like)."""
    if not relay:
        return False
    _, addr = _split_client(relay)
    if addr is not None and (addr.startswith("127.") or addr == "::1"):
        return True
    low = relay.lower()
    return low.startswith("amavis") or low.endswith(":10024") or low.endswith(":10026")


def _queued_as(detail: str | None) -> str | None:
    if not detail:
        return None
    i = detail.rfind("queued as ")
    if i < 0:
        return None
    token = detail[i + 10 : i + 40].split(" ", 1)[0].rstrip(").,;")
    return token if is_queue_id(token) else None


_MISSING: Any = object()

_STAMP_CACHES: dict[int | None, dict[str, datetime | None]] = {}


def _stamp_cache(year: int | None) -> dict[str, datetime | None]:
    cache = _STAMP_CACHES.get(year)
    if cache is None or len(cache) > 200_000:
        cache = _STAMP_CACHES[year] = {}
    return cache


def _service_of(tag: str, cache: dict[str, str | None]) -> str | None:
    """The mail service named by a syslog tag (``postfix/smtpd[123]`` -> ``postfix/smtpd``), or None
    when it is not one; what ``_tag_info`` says, cached by the tag without its pid (pids vary)."""
    b = tag.find("[")
    name = tag[:b] if b > 0 and tag[-1] == "]" else tag
    if name in cache:
        return cache[name]
    if len(cache) > 10_000:
        cache.clear()
    service = name if name and " " not in tag and _is_mail_service(name) else None
    cache[name] = service
    return service


def _tag_info(tag: str) -> tuple[str, int | None] | None:
    """``postfix/smtpd[123]`` -> (``postfix/smtpd``, 123); None when not a mail service (as parse_line)."""
    if " " in tag:
        return None
    pid: int | None = None
    b = tag.find("[")
    if b > 0 and tag.endswith("]"):
        service = tag[:b]
        pid_text = tag[b + 1 : -1]
        pid = int(pid_text) if pid_text.isdigit() and len(pid_text) < 12 else None
    else:
        service = tag
    if not service or not _is_mail_service(service):
        return None
    return service, pid


def might_matter(text: str) -> bool:
    """False for a line that cannot change a Correlator's state or cause an event.

    Cheap substring tests: every line ``Correlator.feed`` acts on contains one
    of these markers.
    """
    return (
        ": to=<" in text
        or ": client=" in text
        or ": from=<" in text
        or ": removed" in text
        or ": connect from " in text
        or ": CONNECT from " in text
        or ": message-id=" in text
        or "reject: " in text
        or ": uid=" in text
        or "queued_as: " in text
    )


EVENT_KINDS = frozenset({"outside-recipient", "reject", "connect"})

_STAMP = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]"
#: A host or tag: no space, and a colon only when no space follows it (``find(": ")`` semantics).
_WORD = r"(?:[^ \n:]++|:(?! ))++"
_MARKERS = r"to=<|client=|from=<|removed|message-id=|reject: |milter-reject: |uid="


def _block_pattern(markers: str) -> re.Pattern[str]:
    return re.compile(
        rf"\n({_STAMP}) (?:{_WORD} )?+({_WORD}): (?:([0-9A-Za-z]{{5,24}}+): )?+((?:{markers})[^\n]*+)"
    )


_BLOCK = _block_pattern(_MARKERS + "|connect from |CONNECT from ")
_BLOCK_NO_CONNECT = _block_pattern(_MARKERS)

#: A queue id exactly as ``is_queue_id`` accepts it: short (upper-case hex) or long (with a ``z``).
_QID = r"(?:[0-9A-F]{5,24}+|(?=[0-9A-Za-y]{0,23}+z)[0-9A-Za-z]{12,24}+)(?=: )"
#: The usual shape of each line the report needs, fields captured, so that Python does no
#: string searching for it. Each shape is one ``feed_text`` provably reads the same way
#: (see ``Correlator._fast_pass``); any other shape falls through to the generic branch.
_FAST_SHAPES = (
    r"(c)lient=([^\[\n,]*+)\[(?i:ipv6:)?+([^\]\n,]*+)\]"
    r"(?:(,) sasl_method=([^,\n]*+), sasl_username=([^,\n]*+))?+(?=\n)"
    r"|(t)o=<([^>\n]*+)>, relay=([^,\n]*+), delay=([^,\n]*+), delays=[^,\n]*+, dsn=([^,\n]*+), "
    r"status=([^ \n]*+)( [^\n]*+)?+(?=\n)"
    r"|from=<([^>\n]*+)>, size=([0-9]++), nrcpt=([0-9]++) \(queue active\)(?=\n)"
    r"|message-id=([^\n]*+)"
    r"|remove(d)(?=\n)"
)


def _fast_pattern(markers: str, connects: bool) -> re.Pattern[str]:
    """The block pattern of ``Correlator._fast_pass``.

    A line that does not start with an RFC 3164 timestamp, a space and a non-space (Docker's
    prefix, a continuation) is returned whole, in the last group, for ``feed_text``. The
    header is either the usual ``host name[pid]: `` (service name captured) or anything
    ``_BLOCK`` accepts (whole tag captured); the atomic group commits to the first when it
    matches, which is safe because ``_BLOCK`` splits such a header the same way.
    """
    connect = r"|CONNECT from \[(?i:ipv6:)?+([^\] \n]++)\]|connect from [^\[\n]*+\[(?i:ipv6:)?+([^\]\n]++)\]"
    return re.compile(
        r"\n(?:(" + _STAMP + r") (?>[^ \n:]++ ([^ \n:\[\]]++)\[[0-9]++\](?=: )|(?:" + _WORD + r" )?+(" + _WORD + r")): "
        r"(?:(" + _QID + r"): (?:" + _FAST_SHAPES + r")"
        + (connect if connects else r"|(?!)()()")
        + r"|(?:([0-9A-Za-z]{5,24}+): )?+((?:" + markers + r")[^\n]*+))"
        r"|(?!" + _STAMP + r" [^ \n])([^\n]++))"
    )


_FAST = _fast_pattern(_MARKERS + "|connect from |CONNECT from ", False)
_FAST_COUNT = _fast_pattern(_MARKERS + "|connect from |CONNECT from ", True)
_FAST_NO_CONNECT = _fast_pattern(_MARKERS, False)


class Correlator:
    """Joins Postfix lines into messages and emits events as lines arrive.

    ``feed(parse_line(text))`` and ``feed_text(text)`` are equivalent;
    ``feed_text`` is the fast path for bulk reading (it skips lines that cannot
    matter before parsing them, and parses RFC 3164 headers inline).

    ``local_domains``: the domains this server delivers locally; any other
    recipient domain is outside. Without it, a recipient is outside when a
    relay agent (smtp, error, retry) handles it for a domain that no local
    agent (local, virtual, lmtp, pipe) has delivered to.

    ``max_open`` bounds memory for a long-running watch: beyond it, the least
    recently used message is forgotten (``dropped`` counts them) and only open
    messages are returned by ``messages``.

    ``events`` limits the kinds of events built (default: all of
    ``EVENT_KINDS``); messages are joined the same either way.

    ``count_connects``: instead of a ``connect`` event per connection line,
    count them in ``connects[(service, client address)]`` (a report needs
    only the counts, and they are a fifth of a busy log).
    """

    def __init__(
        self,
        local_domains: set[str] | None = None,
        *,
        max_open: int | None = None,
        events: Iterable[str] | None = None,
        count_connects: bool = False,
    ) -> None:
        self.local_domains = None if local_domains is None else {d.lower().rstrip(".") for d in local_domains}
        self.max_open = max_open
        wanted = EVENT_KINDS if events is None else frozenset(events)
        if wanted - EVENT_KINDS:
            raise ValueError(f"unknown event kinds: {sorted(wanted - EVENT_KINDS)}")
        self._want_outside = "outside-recipient" in wanted
        self._want_reject = "reject" in wanted
        self._want_connect = "connect" in wanted or count_connects
        self._count_connects = count_connects
        self.connects: Counter[tuple[str, str]] = Counter()
        self._outside_cache: dict[tuple[str, str, str | None], bool] = {}
        self._stamp_year: int | None = None
        self._stamps: dict[str, datetime | None] = _stamp_cache(None)
        self._open: dict[str, Message] = OrderedDict() if max_open is not None else {}
        self._closed: list[Message] = []
        self._alias: dict[str, str] = OrderedDict() if max_open is not None else {}
        self._learned_local: set[str] = set()
        self._agents: dict[str, str] = {}
        self._services: dict[str, str | None] = {}
        self._fast_names: dict[str, tuple[str, str] | None] = {}
        self._filter_relays: dict[str, bool] = {}
        self.dropped = 0
        self.lines = 0

    # ------------------------------------------------------------ results
    @property
    def messages(self) -> list[Message]:
        """Every message seen so far (only the open ones when ``max_open`` is set)."""
        return [*self._closed, *self._open.values()]

    def finish(self) -> list[Message]:
        """All messages, in the order they were first seen."""
        return self.messages

    # ------------------------------------------------------------ plumbing
    def _store(self, key: str, m: Message) -> None:
        self._open[key] = m
        if self.max_open is not None:
            opened = self._open
            assert isinstance(opened, OrderedDict)
            while len(opened) > self.max_open:
                opened.popitem(last=False)
                self.dropped += 1

    def _start(self, qid: str, t: datetime | None, service: str) -> Message:
        """A line that begins a message (smtpd client=, pickup uid=)."""
        self._alias.pop(qid, None)
        old = self._open.get(qid)
        if old is not None:
            if not old.removed and old.client_addr is None and old.service is None:
                old.service = service
                self._touch(old, t)
                return old
            del self._open[qid]
            if self.max_open is None:
                self._closed.append(old)
        m = Message(qid, service=service, first_seen=t, last_seen=t)
        self._store(qid, m)
        return m

    def _get(self, qid: str, t: datetime | None) -> tuple[str, Message]:
        key = self._alias.get(qid, qid)
        m = self._open.get(key)
        if m is None:
            m = Message(key, first_seen=t, last_seen=t)
            self._store(key, m)
        else:
            if self.max_open is not None:
                opened = self._open
                assert isinstance(opened, OrderedDict)
                opened.move_to_end(key)
            if t is not None:
                if m.last_seen is None or t > m.last_seen:
                    m.last_seen = t
                if m.first_seen is None or t < m.first_seen:
                    m.first_seen = t
        return key, m

    @staticmethod
    def _touch(m: Message, t: datetime | None) -> None:
        if t is None:
            return
        if m.first_seen is None or t < m.first_seen:
            m.first_seen = t
        if m.last_seen is None or t > m.last_seen:
            m.last_seen = t

    def _is_outside(self, address: str, agent: str, relay: str | None) -> bool:
        dom = domain_of(address)
        if not dom:
            return False
        if self.local_domains is not None:
            return dom not in self.local_domains
        if relay is not None:
            cache = self._filter_relays
            hit = cache.get(relay)
            if hit is None:
                if len(cache) > 10_000:
                    cache.clear()
                hit = cache[relay] = is_filter_relay(relay)
            if hit:
                return False
        if agent in _LOCAL_AGENTS:
            if len(self._learned_local) < 10000:
                self._learned_local.add(dom)
            return False
        return agent in _RELAY_AGENTS and dom not in self._learned_local

    def _link(self, key: str, m: Message, second: str) -> None:
        """``second`` is the queue id a content filter gave the same message."""
        if second == key or second in m.queued_as:
            return
        m.queued_as.append(second)
        self._alias[second] = key
        if self.max_open is not None:
            aliases = self._alias
            assert isinstance(aliases, OrderedDict)
            while len(aliases) > self.max_open:
                aliases.popitem(last=False)
        other = self._open.pop(second, None)
        if other is None or other is m:
            return
        for r in other.recipients:
            mine = m.recipient(r.address)
            if mine is None:
                m.recipients.append(r)
            else:
                mine.relay, mine.status, mine.dsn = r.relay, r.status, r.dsn
                mine.time, mine.delay, mine.detail = r.time, r.delay, r.detail
                mine.service = r.service
                mine.outside = mine.outside or r.outside
        for q in other.queued_as:
            if q not in m.queued_as:
                m.queued_as.append(q)
                self._alias[q] = key
        m.message_id = m.message_id or other.message_id
        m.size = m.size if m.size is not None else other.size
        m.sender = m.sender if m.sender is not None else other.sender
        if other.last_seen is not None and (m.last_seen is None or other.last_seen > m.last_seen):
            m.last_seen = other.last_seen

    # ------------------------------------------------------------ feed
    def feed(self, line: LogLine) -> list[MessageEvent]:
        """Take one parsed line; return the events it causes (usually none)."""
        self.lines += 1
        return self._handle(line.time, line.service, line.queue_id, line.message)

    def feed_text(self, text: str, year: int | None = None) -> list[MessageEvent]:
        """``feed(parse_line(text, year))``, faster: for bulk reading of log files."""
        self.lines += 1
        return self._text(text, year)

    def _text(self, text: str, year: int | None) -> list[MessageEvent]:
        if not (
            ": to=<" in text
            or ": client=" in text
            or ": from=<" in text
            or ": removed" in text
            or (self._want_connect and (": connect from " in text or ": CONNECT from " in text))
            or ": message-id=" in text
            or "reject: " in text
            or ": uid=" in text
            or "queued_as: " in text
        ):
            return []
        if text[-1:] in ("\n", "\r"):
            text = text.rstrip("\r\n")
        # inline RFC 3164 header without a Docker prefix (the common case); else parse_line
        if year != self._stamp_year:
            self._stamps = _stamp_cache(year)
            self._stamp_year = year
        stamps = self._stamps
        stamp = text[:15]
        if stamp in stamps:
            t = stamps[stamp]
        else:
            t = stamps[stamp] = _time_3164(stamp, year, None, None) if _looks_3164(text) else None
        if t is not None and text[15:16] == " " and text[16:17] != " ":
            colon = text.find(": ", 16)
            sp = text.find(" ", 16, colon) if colon > 0 else -1
            if sp > 16:
                tag = text[sp + 1 : colon]
                services = self._services
                service = services[tag] if tag in services else _service_of(tag, services)
                if service is None:
                    return []
                start = colon + 2
                q = text.find(": ", start, start + 26)
                qid: str | None = None
                if q >= start + 5:
                    cand = text[start:q]
                    if cand in self._open or cand in self._alias or cand == "NOQUEUE" or is_queue_id(cand):
                        qid = cand
                        start = q + 2
                return self._handle(t, service, qid, text[start:])
        parsed = parse_line(text, year)
        if parsed is None:
            return []
        return self._handle(parsed.time, parsed.service, parsed.queue_id, parsed.message)

    def feed_block(self, text: str, year: int | None = None, *, count: int | None = None) -> list[MessageEvent]:
        """``feed_text`` for each line of ``text`` (lines joined by ``\\n``), in one regex pass.

        The pass returns only the lines that can matter, already split into
        timestamp, service, queue id and, for the usual shapes of the lines a
        message is made of, their fields; the other lines never reach Python
        code. The expression has possessive quantifiers and atomic groups only,
        so it cannot backtrack whatever the text. A line the pass cannot read
        exactly as ``feed_text`` would (one without an RFC 3164 timestamp, such
        as Docker's prefix, or Amavis's ``queued_as``) is fed on its own, in order.
        An empty ``text`` is one empty line (``LineSplitter.feed_block`` says
        how many lines it holds: skip the call when that is none, and pass it
        as ``count`` to save counting them again).
        """
        if not text:
            self.lines += 1
            return []
        self.lines += text.count("\n") + 1 if count is None else count
        if year != self._stamp_year:
            self._stamps = _stamp_cache(year)
            self._stamp_year = year
        block = "\n" + text + "\n"
        if "queued_as: " not in text:
            return self._fast_pass(block, year)
        cuts: list[int] = []
        i = block.find("queued_as: ")
        while i >= 0:
            cuts.append(block.rfind("\n", 0, i))
            i = block.find("queued_as: ", block.find("\n", i))
        out: list[MessageEvent] = []
        pos = 0
        for start in cuts:
            end = block.find("\n", start + 1)
            if start > pos:
                out.extend(self._fast_pass(block[pos : start + 1], year))
            out.extend(self._text(block[start + 1 : end], year))
            pos = end
        if pos < len(block) - 1:
            out.extend(self._fast_pass(block[pos:], year))
        return out

    def _fast_pass(self, block: str, year: int | None) -> list[MessageEvent]:
        """The lines of ``block`` (``\\n`` before and after each line), as ``feed_text`` would
        take them one by one.

        A line in one of the usual shapes (``_FAST_SHAPES``) is applied here
        directly: each branch below is what ``_handle`` and its helpers
        (``_get``, ``_start``, ``_client``, ``_qmgr_from``, ``_delivery``,
        ``_is_outside``, ``_connect``) do with exactly that shape, inlined
        because a call costs more than the work. Anything else goes through ``_handle``.
        """
        stamps, services, names = self._stamps, self._services, self._fast_names
        opened, alias, agents = self._open, self._alias, self._agents
        bounded = self.max_open is not None
        want_outside, want_reject = self._want_outside, self._want_reject
        local_domains, learned, filter_relays = self.local_domains, self._learned_local, self._filter_relays
        connects = self.connects
        handle, store = self._handle, self._store
        out: list[MessageEvent] = []
        seen_connects: list[tuple[str, str]] = []
        pattern = (_FAST_COUNT if self._count_connects else _FAST) if self._want_connect else _FAST_NO_CONNECT
        for (
            stamp, name, tag, qid,
            client, c_host, c_addr, sasl, s_method, s_user,
            to, address, relay, delay_text, dsn, status, status_rest,
            sender, size, nrcpt, message_id, removed,
            connect_bare, connect_addr, g_qid, body, odd,
        ) in pattern.findall(block):  # fmt: skip
            if name and (connect_bare or connect_addr):
                # counted below, once per distinct (name, address): a fifth of a busy log
                seen_connects.append((name, connect_bare or connect_addr))
                continue
            if name:
                known = names.get(name, _MISSING)
                if known is _MISSING:
                    known = names[name] = self._service_agent(name if _is_mail_service(name) else None)
                if known is None:
                    continue
                service, agent = known
            else:
                if odd:
                    ev = self._text(odd, year)
                    if ev:
                        out.extend(ev)
                    continue
                svc = services[tag] if tag in services else _service_of(tag, services)
                if svc is None:
                    continue
                service = svc
                agent = agents.get(service) or agents.setdefault(service, service[service.rfind("/") + 1 :])
            if connect_bare:
                if agent == "smtpd" or agent == "postscreen":
                    connects[(service, connect_bare)] += 1
                continue
            if connect_addr:
                if agent == "smtpd" or agent == "postscreen":
                    connects[(service, connect_addr)] += 1
                continue
            t = stamps.get(stamp, _MISSING)
            if t is _MISSING:
                t = stamps[stamp] = _time_3164(stamp, year, None, None)
            if qid:
                if client:
                    if agent != "smtpd":
                        continue
                    if bounded or qid in opened:
                        m = self._start(qid, t, service)
                        m.client_host, m.client_addr = c_host or None, c_addr or None
                        if sasl:
                            m.sasl_method, m.sasl_username = s_method or None, s_user or None
                        continue
                    if alias:
                        alias.pop(qid, None)
                    # _start of a new message, with what _client sets
                    if sasl:
                        opened[qid] = Message(qid, c_host or None, c_addr or None, s_user or None, None, [], t, t,
                                              [], service, None, None, None, s_method or None)  # fmt: skip
                    else:
                        opened[qid] = Message(qid, c_host or None, c_addr or None, None, None, [], t, t, [], service)
                    continue
                if to:
                    if agent not in _DELIVERY_AGENTS:
                        continue
                elif size or removed:
                    if agent != "qmgr":
                        continue
                elif agent != "cleanup":
                    continue
                # _get
                key = alias.get(qid, qid) if alias else qid
                m = opened.get(key)  # type: ignore[assignment]
                if m is None:
                    m = Message(key, first_seen=t, last_seen=t)
                    store(key, m)
                else:
                    if bounded:
                        opened.move_to_end(key)  # type: ignore[attr-defined]
                    if t is not None:
                        if m.last_seen is None or t > m.last_seen:
                            m.last_seen = t
                        if m.first_seen is None or t < m.first_seen:
                            m.first_seen = t
                if not to:
                    if size:
                        m.sender, m.size, m.nrcpt = sender, int(size), int(nrcpt)
                    elif removed:
                        m.removed = True
                    else:
                        m.message_id = message_id.strip().strip("<>") or None
                    continue
                # _delivery
                rest = status_rest[1:]
                if rest[:1] == "(" and rest[-1:] == ")":
                    rest = rest[1:-1]
                detail = rest or None
                try:
                    delay: float | None = float(delay_text)
                except ValueError:
                    delay = None
                recipients = m.recipients
                r = None
                if recipients:
                    for known_r in reversed(recipients):
                        if known_r.address == address:
                            r = known_r
                            break
                if r is None:
                    r = Recipient(address, relay, status, dsn, t, delay, detail, service)
                    recipients.append(r)
                else:
                    r.relay, r.status, r.dsn, r.time, r.delay, r.detail, r.service = (
                        relay, status, dsn, t, delay, detail, service
                    )  # fmt: skip
                if not r.outside:
                    # _is_outside
                    at = address.rfind("@")
                    dom = address[at + 1 :].lower().rstrip(".") if at >= 0 else ""
                    if not dom:
                        outside = False
                    elif local_domains is not None:
                        outside = dom not in local_domains
                    else:
                        hit = filter_relays.get(relay)
                        if hit is None:
                            if len(filter_relays) > 10_000:
                                filter_relays.clear()
                            hit = filter_relays[relay] = is_filter_relay(relay)
                        if hit:
                            outside = False
                        elif agent in _LOCAL_AGENTS:
                            if len(learned) < 10000:
                                learned.add(dom)
                            outside = False
                        else:
                            outside = agent in _RELAY_AGENTS and dom not in learned
                    if outside:
                        r.outside = True
                        if want_outside:
                            out.append(MessageEvent("outside-recipient", m, r, t))
                if status == "sent" and detail is not None and "queued as " in detail:
                    second = _queued_as(detail)
                    if second is not None and (is_filter_relay(relay) or second in opened):
                        self._link(key, m, second)
            elif g_qid:
                if g_qid == "NOQUEUE":
                    # _handle of a NOQUEUE line: only a reject matters
                    if want_reject and body.startswith("reject: "):
                        out.append(self._reject(t, service, body, None))
                    continue
                if is_queue_id(g_qid):
                    ev = handle(t, service, g_qid, body)
                else:
                    ev = handle(t, service, None, f"{g_qid}: {body}")
                if ev:
                    out.extend(ev)
            else:
                ev = handle(t, service, None, body)
                if ev:
                    out.extend(ev)
        if seen_connects:
            for (name, addr), n in Counter(seen_connects).items():
                known = names.get(name, _MISSING)
                if known is _MISSING:
                    known = names[name] = self._service_agent(name if _is_mail_service(name) else None)
                if known is not None and (known[1] == "smtpd" or known[1] == "postscreen"):
                    connects[(known[0], addr)] += n
        return out

    def _service_agent(self, service: str | None) -> tuple[str, str] | None:
        if service is None:
            return None
        agent = self._agents.get(service)
        if agent is None:
            agent = self._agents[service] = service[service.rfind("/") + 1 :]
        return service, agent

    def _handle(self, t: datetime | None, service: str, qid: str | None, text: str) -> list[MessageEvent]:
        agent = self._agents.get(service)
        if agent is None:
            agent = self._agents[service] = service[service.rfind("/") + 1 :]
        if qid is None:
            if agent == "smtpd" or agent == "postscreen":
                return self._connect(t, service, text)
            if service.startswith("amavis"):
                self._amavis(t, text)
            return []
        if qid == "NOQUEUE":
            if text.startswith("reject: ") and self._want_reject:
                return [self._reject(t, service, text, None)]
            return []
        if agent in _DELIVERY_AGENTS:
            if text.startswith("to=<"):
                return self._delivery(t, service, qid, agent, text)
            return []
        if agent == "smtpd":
            if text.startswith("client="):
                self._client(self._start(qid, t, service), text)
            elif text.startswith("reject: "):
                _, m = self._get(qid, t)
                return [self._reject(t, service, text, m)] if self._want_reject else []
            return []
        if agent == "qmgr":
            if text.startswith("from=<"):
                self._qmgr_from(self._get(qid, t)[1], text)
            elif text == "removed":
                self._get(qid, t)[1].removed = True
            return []
        if agent == "cleanup":
            if text.startswith("message-id="):
                self._get(qid, t)[1].message_id = text[11:].strip().strip("<>") or None
            elif text.startswith("reject: ") or text.startswith("milter-reject: "):
                _, m = self._get(qid, t)
                return [self._reject(t, service, text, m)] if self._want_reject else []
            return []
        if agent == "pickup":
            if text.startswith("uid="):
                m = self._start(qid, t, service)
                m.sender = _angle(text, "from=")
            return []
        return []

    def _client(self, m: Message, text: str) -> None:
        if ", " not in text:
            m.client_host, m.client_addr = _split_client(text[7:])
            return
        for item in text.split(", "):
            k, _, v = item.partition("=")
            if k == "client":
                m.client_host, m.client_addr = _split_client(v)
            elif k == "sasl_username":
                m.sasl_username = v or None
            elif k == "sasl_method":
                m.sasl_method = v or None

    @staticmethod
    def _qmgr_from(m: Message, text: str) -> None:
        end = text.rfind(">, size=")
        if end < 0:
            end = text.find(">", 6)
            m.sender = text[6:end] if end >= 0 else text[6:]
            return
        m.sender = text[6:end]
        for item in text[end + 3 :].split(", "):
            k, _, v = item.partition("=")
            v = v.split(" ", 1)[0]
            if k == "size" and v.isdigit():
                m.size = int(v)
            elif k == "nrcpt" and v.isdigit():
                m.nrcpt = int(v)

    def _delivery(self, t: datetime | None, service: str, qid: str, agent: str, text: str) -> list[MessageEvent]:
        end = text.find(">", 4)
        if end < 0:
            return []
        address = text[4:end]
        st = text.find(", status=", end)
        if st < 0:
            st = len(text)
            status: str | None = None
            detail: str | None = None
        else:
            status, _, rest = text[st + 9 :].partition(" ")
            if rest[:1] == "(" and rest[-1:] == ")":
                rest = rest[1:-1]
            detail = rest or None
        relay = _field(text, ", relay=", end, st)
        dsn = _field(text, ", dsn=", end, st)
        delay_text = _field(text, ", delay=", end, st)
        delay: float | None = None
        if delay_text is not None:
            try:
                delay = float(delay_text)
            except ValueError:
                delay = None
        key, m = self._get(qid, t)
        r = m.recipient(address) if m.recipients else None
        if r is None:
            r = Recipient(address, relay, status, dsn, t, delay, detail, service)
            m.recipients.append(r)
        else:
            r.relay, r.status, r.dsn, r.time, r.delay, r.detail, r.service = (
                relay, status, dsn, t, delay, detail, service
            )  # fmt: skip
        events: list[MessageEvent] = []
        if not r.outside and self._is_outside(address, agent, relay):
            r.outside = True
            if self._want_outside:
                events.append(MessageEvent("outside-recipient", m, r, t))
        if status == "sent" and detail is not None and "queued as " in detail:
            second = _queued_as(detail)
            if second is not None and (is_filter_relay(relay) or second in self._open):
                self._link(key, m, second)
        return events

    def _amavis(self, t: datetime | None, text: str) -> None:
        """``... Queue-ID: 4F8A21C3D2, ... queued_as: 5B2C1D3E4F, ...`` links the two ids."""
        i = text.find("Queue-ID: ")
        j = text.find("queued_as: ")
        if i < 0 or j < 0:
            return
        first = text[i + 10 : i + 40].split(",", 1)[0].strip()
        if not is_queue_id(first):
            return
        key, m = self._get(first, t)
        for second in text[j + 11 : j + 200].split(",", 1)[0].strip().split("/"):
            if is_queue_id(second):
                self._link(key, m, second)

    def _connect(self, t: datetime | None, service: str, text: str) -> list[MessageEvent]:
        if not self._want_connect:
            return []
        if self._count_connects and text[13:14] == "[" and text.startswith("CONNECT from "):
            e = text.find("]", 14)
            if e > 14 and " " not in text[14:e]:  # postscreen: [addr]:port; same result as _split_client
                bare = text[14:e]
                if bare[:5].lower() == "ipv6:":
                    bare = bare[5:]
                if bare:
                    self.connects[(service, bare)] += 1
                return []
        if text.startswith("CONNECT from "):
            _, addr = _split_client(text[13:].split(" ", 1)[0])
            host = None
        elif text.startswith("connect from "):
            host, addr = _split_client(text[13:])
        else:
            return []
        if addr is None:
            return []
        if self._count_connects:
            self.connects[(service, addr)] += 1
            return []
        m = Message("NOQUEUE", client_host=host, client_addr=addr, service=service, first_seen=t, last_seen=t)
        return [MessageEvent("connect", m, None, t)]

    def _reject(self, t: datetime | None, service: str, text: str, context: Message | None) -> MessageEvent:
        """``reject: RCPT from unknown[172.17.0.1]: 554 5.7.1 <a@qq.com>: Relay access denied; from=<..> to=<..>``."""
        body = text[text.find(": ") + 2 :]
        host: str | None = None
        addr: str | None = None
        code: str | None = None
        dsn: str | None = None
        detail: str | None = None
        f = body.find(" from ")
        if f >= 0:
            e = body.find("]", f)
            if e >= 0:
                host, addr = _split_client(body[f + 6 : e + 1])
                c = body.find(": ", e)
                if c >= 0:
                    reply = body[c + 2 :]
                    semi = reply.rfind("; from=<")
                    detail = reply[:semi] if semi >= 0 else reply
                    parts = detail.split(" ", 2)
                    if parts and len(parts[0]) == 3 and parts[0].isdigit():
                        code = parts[0]
                        if len(parts) > 1 and parts[1][:1].isdigit() and "." in parts[1]:
                            dsn = parts[1]
        if code is None:  # cleanup: "...: 5.7.1 message content rejected"
            tail = body.rsplit(": ", 1)[-1].split(" ", 1)
            if tail and tail[0][:1] in ("4", "5") and tail[0].count(".") == 2:
                dsn = tail[0]
                code = "550" if dsn.startswith("5") else "450"
                detail = body.rsplit(": ", 1)[-1]
        semi = body.rfind("; from=<")
        sender = _angle(body, "from=", semi) if semi >= 0 else None
        rcpt = _angle(body, "to=", semi) if semi >= 0 else None
        m = Message(
            context.queue_id if context else "NOQUEUE",
            client_host=host or (context.client_host if context else None),
            client_addr=addr or (context.client_addr if context else None),
            sasl_username=context.sasl_username if context else None,
            sender=sender if sender is not None else (context.sender if context else None),
            service=service,
            first_seen=t,
            last_seen=t,
        )
        r: Recipient | None = None
        if rcpt is not None:
            dom = domain_of(rcpt)
            r = Recipient(rcpt, status="reject", dsn=dsn, time=t, detail=detail, service=service)
            r.outside = (
                bool(dom)
                and (self.local_domains is None or dom not in self.local_domains)
                and dom not in self._learned_local
            )
            m.recipients.append(r)
        return MessageEvent("reject", m, r, t, code=code, detail=detail)
