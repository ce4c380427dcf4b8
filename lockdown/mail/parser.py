"""Postfix log lines in, messages out. Pure standard library, single pass.

Three layers, each usable alone:

``parse_line(line)``
    One log line -> ``LogLine`` (time, host, service, pid, queue id, message),
    or None for a line that is not from Postfix. Understands RFC 3164
    (``Nov 22 23:43:37 host postfix/smtpd[123]: ...``, the day padded or not), RFC 3339
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
    Each kind of line has one ``_on_*`` method that decides what it means;
    ``feed_block``'s regular-expression first pass only takes fields out of
    the usual lines, and ``_handle`` takes the same fields out of any other.

Everything here reads attacker-controlled text: regular expressions that
cannot backtrack (possessive quantifiers, lookarounds), ``str`` methods, and
every loop bounded by the line.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter, OrderedDict, deque
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


def _stamp_at(s: str) -> tuple[str, int] | None:
    """The RFC 3164 timestamp at the start of ``s``, day space-padded (``Mar  7 02:09:33``), and
    where the text after it starts; None when there is none.

    The day may also be unpadded (``Mar 7 02:09:33``), as some syslog daemons write it.
    """
    if len(s) > 16 and s[3] == " " and s[6] == " " and s[9] == ":" and s[15] == " " and s[:3] in _MONTHS:
        return s[:15], 16
    if (
        len(s) > 15
        and s[3] == " "
        and s[4] in "123456789"
        and s[5] == " "
        and s[8] == ":"
        and s[14] == " "
        and (s[:3] in _MONTHS)
    ):
        return f"{s[:3]}  {s[4:14]}", 15
    return None


def _stamp_time(stamp: str, year: int | None) -> datetime | None:
    """``_time_3164`` of a stamp as ``_FIRST_PASS`` captures it (the day padded or not)."""
    if len(stamp) == 14:
        stamp = f"{stamp[:3]}  {stamp[4:]}"
    return _time_3164(stamp, year, None, None)


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
        elif (found := _stamp_at(after)) is not None:
            docker_time = first
            when = _time_3164(found[0], year, tz, first) or first
            rest = after[found[1] :].lstrip(" ")
        else:
            when = first
            rest = after
    elif (found := _stamp_at(rest)) is not None:
        when = _time_3164(found[0], year, tz, None)
        rest = rest[found[1] :].lstrip(" ")

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
            # zeros, a part over 255), so membership decides.
            result = addr in self.addresses
        else:
            result = self._match(addr)
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[addr] = result
        return result

    def _match(self, addr: str) -> bool:
        """Any other address (IPv6, ``IPv6:`` or ``::ffff:`` forms, or against networks): normalized first."""
        a = normalize_addr(addr)
        result = a in self.addresses
        if not result and (self.networks or _PLAIN_IPV4.fullmatch(a) is None):
            try:
                ip = ipaddress.ip_address(a)
            except ValueError:
                ip = None
            if ip is not None:
                result = str(ip) in self.addresses or any(ip in n for n in self.networks)
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


@dataclass(slots=True, init=False)
class Recipient:
    """One recipient of a message, as its latest delivery line tells it.

    ``__init__`` is written out (the dataclass gives ``==`` and ``repr``) so that the compiled
    parser builds one without a call into interpreted code (``scripts/build-native``)."""

    address: str
    relay: str | None
    status: str | None
    dsn: str | None
    time: datetime | None
    delay: float | None
    detail: str | None
    service: str | None
    outside: bool

    def __init__(
        self,
        address: str,
        relay: str | None = None,
        status: str | None = None,
        dsn: str | None = None,
        time: datetime | None = None,
        delay: float | None = None,
        detail: str | None = None,
        service: str | None = None,
        outside: bool = False,
    ) -> None:
        self.address = address
        self.relay = relay
        self.status = status
        self.dsn = dsn
        self.time = time
        self.delay = delay
        self.detail = detail
        self.service = service
        self.outside = outside

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


@dataclass(slots=True, init=False)
class Message:
    """Everything the log says about one message, joined across its queue ids.

    ``__init__`` is written out, as ``Recipient``'s is."""

    queue_id: str
    client_host: str | None
    client_addr: str | None
    sasl_username: str | None
    sender: str | None
    recipients: list[Recipient]
    first_seen: datetime | None
    last_seen: datetime | None
    queued_as: list[str]
    service: str | None
    message_id: str | None
    size: int | None
    nrcpt: int | None
    sasl_method: str | None
    removed: bool
    seq: int = field(compare=False, repr=False)
    """Order of creation in its Correlator: reports list messages in the order they were first seen."""

    def __init__(
        self,
        queue_id: str,
        client_host: str | None = None,
        client_addr: str | None = None,
        sasl_username: str | None = None,
        sender: str | None = None,
        recipients: list[Recipient] | None = None,
        first_seen: datetime | None = None,
        last_seen: datetime | None = None,
        queued_as: list[str] | None = None,
        service: str | None = None,
        message_id: str | None = None,
        size: int | None = None,
        nrcpt: int | None = None,
        sasl_method: str | None = None,
        removed: bool = False,
        seq: int = 0,
    ) -> None:
        self.queue_id = queue_id
        self.client_host = client_host
        self.client_addr = client_addr
        self.sasl_username = sasl_username
        self.sender = sender
        self.recipients = [] if recipients is None else recipients
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.queued_as = [] if queued_as is None else queued_as
        self.service = service
        self.message_id = message_id
        self.size = size
        self.nrcpt = nrcpt
        self.sasl_method = sasl_method
        self.removed = removed
        self.seq = seq

    @property
    def outside(self) -> bool:
        """True when at least one recipient is in an outside domain."""
        return any(r.outside for r in self.recipients)

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


@dataclass(slots=True, init=False)
class MessageEvent:
    """Something worth acting on, as soon as its line is read.

    ``kind``: ``outside-recipient`` (the first time a recipient in an outside
    domain is seen for a message), ``reject`` (``message`` is a stand-in
    holding client, sender and the refused recipient; ``code`` e.g. ``554``) or
    ``connect`` (``message`` holds only the client; queue id ``NOQUEUE``) or
    ``postscreen`` (a verdict of ``POSTSCREEN_VERDICTS`` in ``code``; ``message`` as for ``connect``).
    """

    kind: str
    message: Message
    recipient: Recipient | None
    time: datetime | None
    code: str | None
    detail: str | None

    def __init__(
        self,
        kind: str,
        message: Message,
        recipient: Recipient | None,
        time: datetime | None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:  # written out, as ``Recipient``'s is
        self.kind = kind
        self.message = message
        self.recipient = recipient
        self.time = time
        self.code = code
        self.detail = detail


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

_PROBE_STATUSES = frozenset({"deliverable", "undeliverable"})
"""Statuses of an address-verification probe (``sendmail -bv``, ``reject_unverified_*``): nothing was sent."""

EVENT_KINDS = frozenset({"outside-recipient", "reject", "connect", "postscreen"})
#: The kinds built when none are asked for (``postscreen`` is asked for by name: the report does).
DEFAULT_EVENTS = frozenset({"outside-recipient", "reject", "connect"})

#: postscreen's verdicts on a client, as it logs them before the address: ``ALLOWLISTED [addr]:port``
#: (``WHITELISTED`` before Postfix 3.6) lets a client in without tests, ``PASS OLD``/``PASS NEW``
#: after them, ``DISCONNECT`` ends a connection postscreen kept.
POSTSCREEN_VERDICTS = ("ALLOWLISTED", "WHITELISTED", "PASS OLD", "PASS NEW", "DISCONNECT")
#: The verdicts ``count_verdicts`` counts; the others (a client let in without tests) stay events,
#: with their time.
COUNTED_VERDICTS = frozenset({"PASS OLD", "PASS NEW", "DISCONNECT"})

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
#: An RFC 3164 timestamp as ``_stamp_at`` accepts it: the day space-padded (``Mar  7``) or not (``Mar 7``).
_STAMP = _MONTH + r" (?:[ 0-9][0-9]|[1-9]) [0-9][0-9]:[0-9][0-9]:[0-9][0-9]"
#: A host or tag: no space, and a colon only when no space follows it (``find(": ")`` semantics).
_WORD = r"(?:[^ \n:]++|:(?! ))++"
#: What the message of every line ``Correlator._handle`` acts on starts with (after a queue id).
_MARKERS = (
    r"to=<|client=|from=<|removed|message-id=|reject: |milter-reject: |uid=|connect from |CONNECT from "
    r"|ALLOWLISTED \[|WHITELISTED \[|PASS OLD \[|PASS NEW \[|DISCONNECT \["
)
#: A queue id exactly as ``is_queue_id`` accepts it: short (upper-case hex) or long (with a ``z``).
_QID = r"(?:[0-9A-F]{5,24}+|(?=[0-9A-Za-y]{0,23}+z)[0-9A-Za-z]{12,24}+)(?=: )"
#: The header ``parse_line`` reads, in its usual shape: ``host `` (optional), a tag that starts with
#: ``postfix``, made of a name (captured: the service) and an optional ``[pid]``, then ``: ``.
#: (The host is ``_WORD`` written so that the usual host, without a colon, is one run of a character class.)
_HEADER = r" (?:(?! )[^ \n:]*+(?::(?! )[^ \n:]*+)*+ )?+(?=postfix)([^ \n:\[]++)(?:\[[^ \n:\[\]]*+\])?+: "
_NOT_HEADER = _HEADER.replace("([", "(?:[", 1)
_EOL = r"(?![^\n])"
#: The usual shapes of the lines a message is made of, their fields captured: the fields
#: ``Correlator`` would take out of the same text with ``str`` methods (``_client``, ``_delivery``,
#: ``_qmgr_from``). Each shape's first group is never empty (it keeps a bracket or a key), so it
#: says which shape matched; 16 groups in all keep a row under the 20 items of CPython's tuple cache.
_SHAPES = (
    r"client=([^\[\n,]*+\[)(?:[iI][pP][vV]6:)?+([^\]\n,]*+)\]((?:, sasl_method=[^,\n]*+, sasl_username=[^,\n]*+)?+)"
    + _EOL
    + r"|to=(<[^>\n]*+)>, relay=([^,\n]*+), delay=([^,\n]*+), delays=[^,\n]*+, dsn=([^,\n]*+), status=([^\n]*+)"
    + r"|from=<([^>\n]*+)>, size=([0-9]++), nrcpt=([0-9]++) \(queue active\)"
    + _EOL
    + rf"|(message-id=[^\n]*+|removed{_EOL})"
)
#: Connection lines (no queue id), the client address captured, as ``_connect`` reads it.
_CONNECTS = r"CONNECT from |connect from [^\[\n]*+"
#: postscreen's ``COUNTED_VERDICTS`` (no queue id), the verdict captured, as ``_verdict`` reads them.
_VERDICTS = r"(PASS OLD|PASS NEW|DISCONNECT) "


@functools.cache
def _first_pass(connects: bool, verdicts: bool) -> re.Pattern[str]:
    """The fast first pass of ``Correlator.feed_block`` (``connects``: with ``_CONNECTS``;
    ``verdicts``: with ``_VERDICTS``; either captures the client address that follows).

    For a line with an RFC 3164 timestamp and the usual header, it captures the stamp, the
    service and the queue id, then either the fields of a usual shape (``_SHAPES`` after a
    queue id, ``_CONNECTS`` or ``_VERDICTS`` without one) or the message, when it starts with a marker. A line
    without that timestamp and header (Docker's prefix, RFC 3339, Amavis, other programs, blank
    lines, odd tags) is captured whole in the last group, for ``parse_line``. Lines left out are
    Postfix lines whose message ``_handle`` ignores. Possessive quantifiers, lookarounds and
    conditionals only: no backtracking, whatever the text. Compiled on first use (~20 ms each).
    """
    return re.compile(
        r"\n(?:(" + _STAMP + r")" + _HEADER
        + r"(?:(" + _QID + r"|NOQUEUE): )?+"
        + r"(?:(?(3)(?<!NOQUEUE: )(?:" + _SHAPES + r")|(?!))"
        + r"|(?(3)(?!)|(?:" + (_CONNECTS if connects else r"(?!)") + r"|" + (_VERDICTS if verdicts else r"(?!)()")
        + r")\[(?:[iI][pP][vV]6:)?+([^\] \n]++)\])"
        + r"|((?:" + _MARKERS + r")[^\n]*+))"
        r"|(?!" + _STAMP + _NOT_HEADER + r")([^\n]*+))"
    )  # fmt: skip


#: One row of ``_first_pass``: 19 strings. Typed, so that the compiled parser (mypyc) unpacks a row
#: by index and works on the fields as ``str`` instead of looking each one up as an object.
_Row = tuple[
    str, str, str, str, str, str, str, str, str, str,
    str, str, str, str, str, str, str, str, str,
]
_UNPARSED_SAMPLE = 5
_SAMPLE_CHARS = 200
_CACHE_MAX = 4096


def _agent(service: str) -> str:
    """``postfix/submission/smtpd`` -> ``smtpd``: the Postfix program that wrote the line."""
    return service[service.rfind("/") + 1 :]


def might_matter(text: str) -> bool:
    """False for a Postfix line that cannot change a Correlator's state or cause an event.

    Cheap substring tests: every line ``Correlator._handle`` acts on contains one of these.
    """
    return (
        ": to=<" in text
        or ": client=" in text
        or ": from=<" in text
        or ": removed" in text
        or ": connect from " in text
        or ": CONNECT from " in text
        or "LISTED [" in text  # postscreen's ALLOWLISTED / WHITELISTED
        or ": PASS " in text
        or ": DISCONNECT [" in text
        or ": message-id=" in text
        or "reject: " in text
        or ": uid=" in text
        or "queued_as: " in text
    )


class Correlator:
    """Joins Postfix lines into messages and emits events as lines arrive.

    Each kind of line has one method that decides what it means (``_on_client``,
    ``_on_delivery``, ``_on_queued``, ``_on_message_id``, ``_on_removed``,
    ``_on_connect``, ``_reject``, ``_amavis``; pickup's ``uid=`` in ``_handle``).
    ``feed`` (a parsed line) and ``feed_text`` (a line of text) reach them
    through ``_handle``, which takes the fields out with ``str`` methods;
    ``feed_block`` (many lines) through one regular-expression pass that takes
    the same fields out of the usual lines, and ``_handle`` for the others.

    ``local_domains``: the domains this server delivers locally; any other
    recipient domain is outside. Without it, a recipient is outside when a
    relay agent (smtp, error, retry) handles it for a domain that no local
    agent (local, virtual, lmtp, pipe) has delivered to. A recipient of an
    address-verification probe (status ``deliverable``/``undeliverable``) is
    never outside: nothing was sent.

    ``max_open`` bounds memory for a long-running watch: beyond it, the least
    recently used message is forgotten (``dropped`` counts them).

    ``retire_after`` bounds memory for a report: a message whose queue ids
    were all ``removed`` is handed to ``drain()`` once that many more lines
    were read, and forgotten. The result is the same as keeping it as long
    as no line names the message's queue ids later than that (Postfix logs
    nothing for a queue id after ``removed``, until it reuses it for a new message).

    ``events`` limits the kinds of events built (default: ``DEFAULT_EVENTS``,
    all of ``EVENT_KINDS`` but ``postscreen``). ``count_connects``: instead of a ``connect`` event per
    connection line, count them in ``connects[(service, client address)]``. ``count_verdicts``: instead
    of a ``postscreen`` event per ``COUNTED_VERDICTS`` line, count them in
    ``verdicts[(service, verdict, client address)]``.

    Lines that are not Postfix (or Amavis) lines are counted in ``unparsed``,
    the first few kept in ``unparsed_sample``.
    """

    def __init__(
        self,
        local_domains: set[str] | None = None,
        *,
        max_open: int | None = None,
        retire_after: int | None = None,
        events: Iterable[str] | None = None,
        count_connects: bool = False,
        count_verdicts: bool = False,
    ) -> None:
        self.local_domains = None if local_domains is None else {d.lower().rstrip(".") for d in local_domains}
        self.max_open = max_open
        self.retire_after = retire_after
        wanted = DEFAULT_EVENTS if events is None else frozenset(events)
        if wanted - EVENT_KINDS:
            raise ValueError(f"unknown event kinds: {sorted(wanted - EVENT_KINDS)}")
        self._want_outside = "outside-recipient" in wanted
        self._want_reject = "reject" in wanted
        self._want_connect = "connect" in wanted or count_connects
        self._want_postscreen = "postscreen" in wanted
        self._count_connects = count_connects
        self._count_verdicts = count_verdicts and self._want_postscreen
        self.connects: Counter[tuple[str, str]] = Counter()
        self.verdicts: Counter[tuple[str, str, str]] = Counter()
        self._open: dict[str, Message] = OrderedDict() if max_open is not None else {}
        self._alias: dict[str, str] = OrderedDict() if max_open is not None else {}
        self._closed: list[Message] = []
        self._gone: dict[str, set[str]] = {}  # key -> its queue ids seen ``removed``
        self._closing: deque[tuple[int, str, Message]] = deque()
        self._learned_local: set[str] = set()
        self._filter_relays: dict[str, bool] = {}
        self._stamps: dict[str, datetime | None] = {}
        self._stamp_year: int | None = None
        self._agents: dict[str, str] = {}
        self._out: list[MessageEvent] = []
        self._seq = 0
        self.dropped = 0
        self.lines = 0
        self.unparsed = 0
        self.blank = 0
        self.unparsed_sample: list[str] = []

    # ------------------------------------------------------------ results
    @property
    def learned_local(self) -> frozenset[str]:
        """Without ``local_domains``: the domains seen delivered by a local agent so far."""
        return frozenset(self._learned_local)

    @property
    def messages(self) -> list[Message]:
        """Every message not yet handed out, in the order they were first seen."""
        return sorted([*self._closed, *self._open.values()], key=lambda m: m.seq)

    def finish(self) -> list[Message]:
        """All messages not yet handed out by ``drain``, in the order they were first seen."""
        return self.messages

    def drain(self) -> list[Message]:
        """The messages retired since the last call (``retire_after``), forgotten here."""
        if self.retire_after is not None:
            limit = self.lines - self.retire_after
            closing = self._closing
            while closing and closing[0][0] <= limit:
                _, key, m = closing.popleft()
                if self._open.get(key) is m and self._complete(key, m):
                    self._forget(key, m)
                    self._closed.append(m)
        out, self._closed = self._closed, []
        return out

    def not_postfix(self, text: str) -> None:
        """Count a line that ``parse_line`` could not read (blank lines apart, in ``blank``)."""
        if not text or text.isspace():
            self.blank += 1
            return
        self.unparsed += 1
        if len(self.unparsed_sample) < _UNPARSED_SAMPLE:
            self.unparsed_sample.append(text[:_SAMPLE_CHARS])

    # ------------------------------------------------------------ feeding
    def feed(self, line: LogLine) -> list[MessageEvent]:
        """Take one parsed line; return the events it causes (usually none)."""
        self.lines += 1
        out = self._out = []
        self._handle(line.time, line.service, line.queue_id, line.message)
        return out

    def feed_text(self, text: str, year: int | None = None) -> list[MessageEvent]:
        """``feed(parse_line(text, year))``, counting a line that is not Postfix's."""
        parsed = parse_line(text, year)
        if parsed is not None:
            return self.feed(parsed)
        self.lines += 1
        self.not_postfix(text.rstrip("\r\n"))
        return []

    def feed_block(self, text: str, year: int | None = None, *, count: int | None = None) -> list[MessageEvent]:
        """``feed_text`` for each line of ``text`` (lines joined by ``\\n``), faster.

        ``_first_pass`` takes the fields out of the lines that can matter without a Python step
        per line; the lines it cannot read go through ``parse_line`` one by one, in order.
        Connection lines are counted once per distinct (service, address) of the block.
        ``count`` is the number of lines (``LineSplitter.feed_block`` says it; an empty
        ``text`` is one line).
        """
        self.lines += (text.count("\n") + 1 if text else 1) if count is None else count
        if year != self._stamp_year:
            self._stamps, self._stamp_year = {}, year
        stamps = self._stamps
        out = self._out = []
        connects: list[tuple[str, str]] = []
        verdicts: list[tuple[str, str, str]] = []
        rows: list[_Row] = _first_pass(self._count_connects, self._count_verdicts).findall("\n" + text)
        for (
            stamp, service, qid, host, addr, sasl, to, relay, delay, dsn, status,
            sender, size, nrcpt, mid_or_removed, verdict, client, body, other,
        ) in rows:  # fmt: skip
            if not stamp:
                self._parse(other, year)
                continue
            if client:
                if verdict:
                    verdicts.append((service, verdict, client))
                else:
                    connects.append((service, client))
                continue
            t = stamps.get(stamp, _MISSING)
            if t is _MISSING:
                if len(stamps) > _CACHE_MAX:
                    stamps.clear()
                t = stamps[stamp] = _stamp_time(stamp, year)
            if to:
                status, _, rest = status.partition(" ")
                self._on_delivery(t, service, qid, to[1:], relay, dsn, delay, status, rest or None)
            elif host:
                method = user = None
                if sasl:  # ", sasl_method=X, sasl_username=Y"
                    _, method_item, user_item = sasl.split(", ")
                    method, user = method_item[12:] or None, user_item[14:] or None
                self._on_client(t, service, qid, host[:-1] or None, addr or None, method, user)
            elif size:
                self._on_queued(t, service, qid, sender, int(size), int(nrcpt))
            elif mid_or_removed == "removed":
                self._on_removed(t, service, qid)
            elif mid_or_removed:
                self._on_message_id(t, service, qid, mid_or_removed[11:])
            else:
                self._handle(t, service, qid or None, body)
        for (service, addr), n in Counter(connects).items():
            self._on_connect(None, service, None, addr, n)
        for (service, verdict, addr), n in Counter(verdicts).items():
            self._on_postscreen(None, service, verdict, addr, n)
        return out

    def _parse(self, text: str, year: int | None) -> None:
        parsed = parse_line(text, year)
        if parsed is None:
            self.not_postfix(text)
        else:
            self._handle(parsed.time, parsed.service, parsed.queue_id, parsed.message)

    # ------------------------------------------------------------ meaning
    def _handle(self, t: datetime | None, service: str, qid: str | None, text: str) -> None:
        """What one line's message means: each kind of line has one ``_on_*`` method, the only
        place that decides what it does; here the fields are taken out of the text for it."""
        if qid is None:
            if self._connect_agent(service):
                self._connect(t, service, text)
            elif service.startswith("amavis"):
                self._amavis(t, text)
        elif qid == "NOQUEUE":
            if _is_reject(text):
                self._reject(t, service, text, None)
        elif text.startswith("to=<"):
            self._delivery(t, service, qid, text)
        elif text.startswith("client="):
            self._client(t, service, qid, text)
        elif text.startswith("from=<"):
            self._qmgr_from(t, service, qid, text)
        elif text == "removed":
            self._on_removed(t, service, qid)
        elif text.startswith("message-id="):
            self._on_message_id(t, service, qid, text[11:])
        elif _is_reject(text):
            if (self._agents.get(service) or self._agent(service)) in ("smtpd", "cleanup"):
                self._reject(t, service, text, self._get(qid, t)[1])
        elif text.startswith("uid=") and (self._agents.get(service) or self._agent(service)) == "pickup":
            self._start(qid, t, service).sender = _angle(text, "from=")

    def _agent(self, service: str) -> str:
        agent = self._agents.get(service)
        if agent is None:
            if len(self._agents) > _CACHE_MAX:
                self._agents.clear()
            agent = self._agents[service] = _agent(service)
        return agent

    def _connect_agent(self, service: str) -> bool:
        agent = self._agents.get(service) or self._agent(service)
        return agent == "smtpd" or agent == "postscreen"

    def _client(self, t: datetime | None, service: str, qid: str, text: str) -> None:
        """``client=host[addr]:port, sasl_method=PLAIN, sasl_username=bob``."""
        host = addr = method = user = None
        if ", " not in text:
            host, addr = _split_client(text[7:])
        else:
            for item in text.split(", "):
                k, _, v = item.partition("=")
                if k == "client":
                    host, addr = _split_client(v)
                elif k == "sasl_username":
                    user = v or None
                elif k == "sasl_method":
                    method = v or None
        self._on_client(t, service, qid, host, addr, method, user)

    def _on_client(
        self, t: datetime | None, service: str, qid: str, host: str | None, addr: str | None,
        method: str | None, user: str | None,
    ) -> None:  # fmt: skip
        """smtpd's ``client=`` line begins a message."""
        if (self._agents.get(service) or self._agent(service)) != "smtpd":
            return
        m = self._start(qid, t, service)
        m.client_host, m.client_addr, m.sasl_method, m.sasl_username = host, addr, method, user

    def _qmgr_from(self, t: datetime | None, service: str, qid: str, text: str) -> None:
        """``from=<a@b>, size=1893, nrcpt=2 (queue active)``."""
        end = text.rfind(">, size=")
        size = nrcpt = None
        if end < 0:
            end = text.find(">", 6)
            sender = text[6:end] if end >= 0 else text[6:]
        else:
            sender = text[6:end]
            for item in text[end + 3 :].split(", "):
                k, _, v = item.partition("=")
                v = v.split(" ", 1)[0]
                if k == "size" and v.isdigit():
                    size = int(v)
                elif k == "nrcpt" and v.isdigit():
                    nrcpt = int(v)
        self._on_queued(t, service, qid, sender, size, nrcpt)

    def _on_queued(
        self, t: datetime | None, service: str, qid: str, sender: str, size: int | None, nrcpt: int | None
    ) -> None:
        """qmgr's ``from=<...>`` line: the envelope sender, size and recipient count."""
        if (self._agents.get(service) or self._agent(service)) != "qmgr":
            return
        m = self._get(qid, t)[1]
        m.sender = sender
        if size is not None:
            m.size = size
        if nrcpt is not None:
            m.nrcpt = nrcpt

    def _on_message_id(self, t: datetime | None, service: str, qid: str, value: str) -> None:
        if (self._agents.get(service) or self._agent(service)) == "cleanup":
            self._get(qid, t)[1].message_id = value.strip().strip("<>") or None

    def _delivery(self, t: datetime | None, service: str, qid: str, text: str) -> None:
        """``to=<a@b>, relay=..., delay=1.2, delays=..., dsn=2.0.0, status=sent (250 OK)``."""
        end = text.find(">", 4)
        if end < 0:
            return
        st = text.find(", status=", end)
        status: str | None = None
        rest: str | None = None
        if st < 0:
            st = len(text)
        else:
            status, _, rest = text[st + 9 :].partition(" ")
        relay, dsn = _field(text, ", relay=", end, st), _field(text, ", dsn=", end, st)
        delay = _field(text, ", delay=", end, st)
        self._on_delivery(t, service, qid, text[4:end], relay, dsn, delay, status, rest or None)

    def _on_delivery(
        self, t: datetime | None, service: str, qid: str, address: str, relay: str | None, dsn: str | None,
        delay_text: str | None, status: str | None, rest: str | None,
    ) -> None:  # fmt: skip
        """A delivery agent's ``to=<...>`` line: the recipient's latest state; outside or not."""
        agent = self._agents.get(service) or self._agent(service)
        if agent not in _DELIVERY_AGENTS:
            return
        detail = rest[1:-1] if rest is not None and rest[:1] == "(" and rest[-1:] == ")" else rest
        try:
            delay = float(delay_text) if delay_text is not None else None
        except ValueError:
            delay = None
        key, m = self._get(qid, t)
        r = None
        if m.recipients:
            for known in reversed(m.recipients):  # Message.recipient, inline: once per delivery line
                if known.address == address:
                    r = known
                    break
        if r is None:
            r = Recipient(address=address, relay=relay, status=status, dsn=dsn, time=t, delay=delay,
                          detail=detail or None, service=service)  # fmt: skip
            m.recipients.append(r)
        else:  # the latest delivery line tells the recipient's state
            r.relay, r.status, r.dsn, r.time, r.delay, r.detail, r.service = (
                relay, status, dsn, t, delay, detail or None, service
            )  # fmt: skip
        if not r.outside and status not in _PROBE_STATUSES and self._is_outside(address, agent, relay):
            r.outside = True
            if self._want_outside:
                self._out.append(MessageEvent(kind="outside-recipient", message=m, recipient=r, time=t))
        if status == "sent" and detail and "queued as " in detail:
            second = _queued_as(detail)
            if second is not None and (is_filter_relay(relay) or second in self._open):
                self._link(key, m, second)

    def _is_outside(self, address: str, agent: str, relay: str | None) -> bool:
        dom = domain_of(address)
        if not dom:
            return False
        if self.local_domains is not None:
            return dom not in self.local_domains
        if relay is not None:
            hit = self._filter_relays.get(relay)
            if hit is None:
                if len(self._filter_relays) > _CACHE_MAX:
                    self._filter_relays.clear()
                hit = self._filter_relays[relay] = is_filter_relay(relay)
            if hit:
                return False
        if agent in _LOCAL_AGENTS:
            if len(self._learned_local) < 10000:
                self._learned_local.add(dom)
            return False
        return agent in _RELAY_AGENTS and dom not in self._learned_local

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

    def _connect(self, t: datetime | None, service: str, text: str) -> None:
        """``connect from host[addr]`` (smtpd), ``CONNECT from [addr]:port to ...`` (postscreen), or
        one of postscreen's verdicts (``ALLOWLISTED [addr]:port``, ...)."""
        if text.startswith("CONNECT from "):
            host, addr = None, _split_client(text[13:].split(" ", 1)[0])[1]
        elif text.startswith("connect from "):
            host, addr = _split_client(text[13:])
        else:
            self._verdict(t, service, text)
            return
        if addr is not None:
            self._on_connect(t, service, host, addr, 1)

    def _verdict(self, t: datetime | None, service: str, text: str) -> None:
        """postscreen's ``ALLOWLISTED [addr]:port`` and the other ``POSTSCREEN_VERDICTS``."""
        b = text.find(" [")
        verdict = text[:b]
        if b < 0 or verdict not in POSTSCREEN_VERDICTS:
            return
        addr = _split_client(text[b + 1 :].split(" ", 1)[0])[1]
        if addr is not None:
            self._on_postscreen(t, service, verdict, addr)

    def _on_postscreen(self, t: datetime | None, service: str, verdict: str, addr: str, n: int = 1) -> None:
        """``n`` postscreen verdicts on ``addr``: counted (``count_verdicts``), or a ``postscreen``
        event each (code: the verdict)."""
        if not self._want_postscreen or (self._agents.get(service) or self._agent(service)) != "postscreen":
            return
        if self._count_verdicts and verdict in COUNTED_VERDICTS:
            key = (service, verdict, addr)
            self.verdicts[key] = self.verdicts.get(key, 0) + n
            return
        m = Message(queue_id="NOQUEUE", client_addr=addr, service=service, first_seen=t, last_seen=t)
        self._out.append(MessageEvent(kind="postscreen", message=m, recipient=None, time=t, code=verdict))

    def _on_connect(self, t: datetime | None, service: str, host: str | None, addr: str, n: int) -> None:
        """``n`` connections from ``addr`` to smtpd or postscreen: counted, or a ``connect`` event each."""
        if not self._want_connect or not self._connect_agent(service):
            return
        if self._count_connects:
            key = (service, addr)
            self.connects[key] = self.connects.get(key, 0) + n  # not Counter's __missing__: a Python call
            return
        m = Message(queue_id="NOQUEUE", client_host=host, client_addr=addr, service=service, first_seen=t, last_seen=t)
        self._out.append(MessageEvent(kind="connect", message=m, recipient=None, time=t))

    def _reject(self, t: datetime | None, service: str, text: str, context: Message | None) -> None:
        """``reject: RCPT from unknown[172.17.0.1]: 554 5.7.1 <a@qq.com>: Relay access denied; from=<..> to=<..>``,
        and the same after ``milter-reject:``."""
        if not self._want_reject:
            return
        body = text[text.find(": ") + 2 :]
        host, addr, code, dsn, detail = _reject_reply(body)
        semi = body.rfind("; from=<")
        sender = _angle(body, "from=", semi) if semi >= 0 else None
        rcpt = _angle(body, "to=", semi) if semi >= 0 else None
        m = Message(
            queue_id=context.queue_id if context else "NOQUEUE",
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
            r = Recipient(address=rcpt, status="reject", dsn=dsn, time=t, detail=detail, service=service)
            r.outside = (
                bool(dom)
                and (self.local_domains is None or dom not in self.local_domains)
                and dom not in self._learned_local
            )
            m.recipients.append(r)
        self._out.append(MessageEvent(kind="reject", message=m, recipient=r, time=t, code=code, detail=detail))

    # ------------------------------------------------------------ messages by queue id
    def _new(self, key: str, t: datetime | None, service: str | None = None) -> Message:
        m = Message(queue_id=key, service=service, first_seen=t, last_seen=t, seq=self._seq)
        self._seq += 1
        self._open[key] = m
        if self.max_open is not None:
            opened = self._open
            assert isinstance(opened, OrderedDict)
            while len(opened) > self.max_open:
                opened.popitem(last=False)
                self.dropped += 1
        return m

    def _start(self, qid: str, t: datetime | None, service: str) -> Message:
        """A line that begins a message (smtpd client=, pickup uid=)."""
        self._alias.pop(qid, None)
        old = self._open.get(qid)
        if old is not None:
            if not old.removed and old.client_addr is None and old.service is None:
                old.service = service
                _touch(old, t)
                return old
            self._forget(qid, old)
            if self.max_open is None:
                self._closed.append(old)
        return self._new(qid, t, service)

    def _get(self, qid: str, t: datetime | None) -> tuple[str, Message]:
        key = self._alias.get(qid, qid)
        m = self._open.get(key)
        if m is None:
            return key, self._new(key, t)
        if self.max_open is not None:
            opened = self._open
            assert isinstance(opened, OrderedDict)
            opened.move_to_end(key)
        if t is not None:  # _touch, inline: once per line of a message
            if m.last_seen is None or t > m.last_seen:
                m.last_seen = t
            if m.first_seen is None or t < m.first_seen:
                m.first_seen = t
        return key, m

    def _on_removed(self, t: datetime | None, service: str, qid: str) -> None:
        """qmgr's ``removed``: the queue file is gone; once all of a message's ids are, it may retire."""
        if (self._agents.get(service) or self._agent(service)) != "qmgr":
            return
        key, m = self._get(qid, t)
        m.removed = True
        if self.retire_after is None:
            return
        if key == qid and not m.queued_as:  # no content filter: this was its only queue id
            self._closing.append((self.lines, key, m))
            return
        self._gone.setdefault(key, set()).add(qid)
        if self._complete(key, m):
            self._closing.append((self.lines, key, m))

    def _complete(self, key: str, m: Message) -> bool:
        """True when every queue id of ``m`` was seen ``removed`` (``m.removed``: its last one was)."""
        if not m.queued_as:
            return m.removed
        gone = self._gone.get(key, ())
        return key in gone and all(q in gone for q in m.queued_as)

    def _forget(self, key: str, m: Message) -> None:
        del self._open[key]
        self._gone.pop(key, None)
        for q in m.queued_as:
            if self._alias.get(q) == key:
                del self._alias[q]

    def _link(self, key: str, m: Message, second: str) -> None:
        """``second`` is the queue id a content filter gave the same message."""
        if second == key or second in m.queued_as:
            return
        retiring = self.retire_after is not None
        if retiring and m.removed and not m.queued_as:  # its key's removal was not written down (_on_removed)
            self._gone.setdefault(key, set()).add(key)
        m.queued_as.append(second)
        self._alias[second] = key
        if self.max_open is not None:
            aliases = self._alias
            assert isinstance(aliases, OrderedDict)
            while len(aliases) > self.max_open:
                aliases.popitem(last=False)
        other = self._open.pop(second, None)
        other_gone = self._gone.pop(second, set())
        if other is not None and other.removed and not other.queued_as:
            other_gone.add(second)
        if other_gone and retiring:
            self._gone.setdefault(key, set()).update(other_gone)
        if other is None or other is m:
            return
        _merge(m, other)
        for q in other.queued_as:
            if q not in m.queued_as:
                m.queued_as.append(q)
                self._alias[q] = key


def _merge(m: Message, other: Message) -> None:
    """Add what ``other`` (the same message under a content filter's second queue id) knows to ``m``."""
    for r in other.recipients:
        mine = m.recipient(r.address)
        if mine is None:
            m.recipients.append(r)
        else:
            mine.relay, mine.status, mine.dsn = r.relay, r.status, r.dsn
            mine.time, mine.delay, mine.detail = r.time, r.delay, r.detail
            mine.service = r.service
            mine.outside = mine.outside or r.outside
    m.message_id = m.message_id or other.message_id
    m.size = m.size if m.size is not None else other.size
    m.sender = m.sender if m.sender is not None else other.sender
    if other.last_seen is not None and (m.last_seen is None or other.last_seen > m.last_seen):
        m.last_seen = other.last_seen


def _touch(m: Message, t: datetime | None) -> None:
    if t is None:
        return
    if m.first_seen is None or t < m.first_seen:
        m.first_seen = t
    if m.last_seen is None or t > m.last_seen:
        m.last_seen = t


def _is_reject(text: str) -> bool:
    return text.startswith("reject: ") or text.startswith("milter-reject: ")


def _reject_reply(body: str) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """(client host, client address, SMTP code, DSN, reply text) of a reject:
    ``RCPT from host[addr]: 554 5.7.1 ...``."""
    host = addr = code = dsn = detail = None
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
    return host, addr, code, dsn, detail
