"""The Postfix log parser on real line formats (Postfix 3.7, docker-mailserver, Mailu)."""

# Real log lines are long; they stay verbatim.
# ruff: noqa: E501

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockdown.mail.parser import (
    EVENT_KINDS,
    MAX_LINE,
    Correlator,
    GatewayMatcher,
    LineSplitter,
    LogLine,
    default_gateways,
    is_gateway,
    is_queue_id,
    parse_line,
)


def P(line: str, year: int | None = 2026) -> LogLine:
    parsed = parse_line(line, year)
    assert parsed is not None, line
    return parsed


def feed_all(lines: list[str], local: set[str] | None = None) -> tuple[Correlator, list]:  # type: ignore[type-arg]
    c = Correlator(local)
    events = []
    for raw in lines:
        parsed = parse_line(raw, 2026)
        if parsed is not None:
            events.extend(c.feed(parsed))
    return c, events


# ----------------------------------------------------------------- timestamps


def test_rfc3164_line() -> None:
    ln = P("Nov 22 23:43:37 mail postfix/smtpd[123]: 4F8A21C3D2: client=unknown[172.17.0.1]")
    assert ln.time == datetime(2026, 11, 22, 23, 43, 37, tzinfo=UTC)
    assert (ln.host, ln.service, ln.pid, ln.queue_id) == ("mail", "postfix/smtpd", 123, "4F8A21C3D2")
    assert ln.message == "client=unknown[172.17.0.1]"
    assert ln.docker_time is None


def test_rfc3164_single_digit_day_is_space_padded() -> None:
    ln = P("Dec  2 03:04:05 mx1 postfix/qmgr[9]: 4F8A21C3D2: removed")
    assert ln.time == datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC)
    assert ln.message == "removed"


def test_rfc3164_without_year_uses_current_year_and_never_the_future() -> None:
    now = datetime.now(UTC)
    past = now - timedelta(days=3)
    ln = P(past.strftime("%b %d %H:%M:%S") + " mail postfix/qmgr[9]: 4F8A21C3D2: removed", year=None)
    assert ln.time is not None
    assert ln.time.year == past.year
    future = now + timedelta(days=40)
    ln = P(future.strftime("%b %d %H:%M:%S") + " mail postfix/qmgr[9]: 4F8A21C3D2: removed", year=None)
    assert ln.time is not None and ln.time < now  # last year's line, not next month's


def test_rfc3164_with_explicit_tz() -> None:
    cet = timezone(timedelta(hours=1))
    ln = parse_line("Nov 22 23:43:37 mail postfix/qmgr[9]: 4F8A21C3D2: removed", 2026, tz=cet)
    assert ln is not None and ln.time == datetime(2026, 11, 22, 22, 43, 37, tzinfo=UTC)


def test_rfc3339_docker_mailserver() -> None:
    ln = P(
        "2026-11-22T23:43:37.123456+00:00 mail postfix/submission/smtpd[4711]: "
        "4Q5x7h2Zk3z9abc: client=mail.example.org[203.0.113.9], sasl_method=PLAIN, sasl_username=alice@example.org"
    )
    assert ln.time == datetime(2026, 11, 22, 23, 43, 37, 123456, tzinfo=UTC)
    assert ln.service == "postfix/submission/smtpd"
    assert ln.queue_id == "4Q5x7h2Zk3z9abc"


def test_rfc3339_with_offset() -> None:
    ln = P("2026-11-23T00:43:37.5+01:00 mail postfix/qmgr[9]: 4F8A21C3D2: removed")
    assert ln.time == datetime(2026, 11, 22, 23, 43, 37, 500000, tzinfo=UTC)


def test_docker_prefix_before_rfc3164_prefers_syslog_time_and_takes_docker_year() -> None:
    ln = P(
        "2025-11-22T23:43:38.987654321Z Nov 22 23:43:37 mail postfix/smtpd[123]: connect from unknown[172.17.0.1]",
        year=None,
    )
    assert ln.time == datetime(2025, 11, 22, 23, 43, 37, tzinfo=UTC)
    assert ln.docker_time == datetime(2025, 11, 22, 23, 43, 38, 987654, tzinfo=UTC)
    assert ln.message == "connect from unknown[172.17.0.1]"


def test_docker_prefix_across_new_year() -> None:
    ln = P("2027-01-01T00:00:01.000000001Z Dec 31 23:59:59 mail postfix/qmgr[1]: 4F8A21C3D2: removed", year=None)
    assert ln.time == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_docker_prefix_implies_the_container_offset() -> None:
    # container logs local time (UTC+2); Docker stamps UTC
    ln = P("2026-11-22T21:43:37.100000000Z Nov 22 23:43:37 mail postfix/qmgr[1]: 4F8A21C3D2: removed", year=None)
    assert ln.time == datetime(2026, 11, 22, 21, 43, 37, tzinfo=UTC)


def test_docker_prefix_before_rfc3339() -> None:
    ln = P(
        "2026-11-22T23:43:38.000000001Z 2026-11-22T23:43:37.123456+00:00 mail postfix/smtp[88]: "
        "4F8A21C3D2: to=<a@qq.com>, relay=mx1.qq.com[203.205.219.57]:25, delay=1.2, "
        "delays=0.1/0/0.6/0.5, dsn=2.0.0, status=sent (250 OK: queued as 7E3F)"
    )
    assert ln.time == datetime(2026, 11, 22, 23, 43, 37, 123456, tzinfo=UTC)
    assert ln.docker_time == datetime(2026, 11, 22, 23, 43, 38, tzinfo=UTC)
    assert ln.service == "postfix/smtp"


def test_docker_prefix_alone_is_the_time() -> None:
    ln = P("2026-11-22T23:43:38.5Z mail postfix/qmgr[7]: 4F8A21C3D2: removed")
    assert ln.time == datetime(2026, 11, 22, 23, 43, 38, 500000, tzinfo=UTC)
    assert ln.host == "mail"


def test_no_host_and_syslog_priority() -> None:
    ln = P("<22>Nov 22 23:43:37 postfix/pickup[55]: 4F8A21C3D2: uid=0 from=<root>")
    assert ln.host is None and ln.service == "postfix/pickup" and ln.pid == 55


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "Nov 22 23:43:37 mail sshd[1]: Accepted publickey for root",
        "Nov 22 23:43:37 mail dovecot: imap-login: Login: user=<a@b>",
        "2026-11-22T23:43:37.123456+00:00 mail CRON[12]: (root) CMD (run-parts)",
        "2026-11-22T23:43:38.0Z supervisord: INFO success: postfix entered RUNNING state",
        "Nov 22 23:43:37",
    ],
)
def test_non_postfix_lines_are_none(line: str) -> None:
    assert parse_line(line) is None


# ----------------------------------------------------------------- services and ids


@pytest.mark.parametrize(
    "service",
    [
        "postfix/smtpd",
        "postfix/submission/smtpd",
        "postfix/smtps/smtpd",
        "postfix/postscreen",
        "postfix/smtp",
        "postfix/error",
        "postfix/lmtp",
        "postfix/local",
        "postfix/virtual",
        "postfix/cleanup",
        "postfix/qmgr",
        "postfix/bounce",
        "postfix/anvil",
        "postfix/dnsblog",
        "postfix-out/smtp",
    ],
)
def test_service_names(service: str) -> None:
    ln = P(f"Nov 22 23:43:37 mail {service}[42]: warning: something")
    assert ln.service == service and ln.pid == 42 and ln.queue_id is None
    assert ln.message == "warning: something"


def test_service_without_pid() -> None:
    ln = P("Nov 22 23:43:37 mail postfix/postfix-script: starting the Postfix mail system")
    assert ln.service == "postfix/postfix-script" and ln.pid is None


@pytest.mark.parametrize(
    ("qid", "ok"),
    [
        ("4F8A21C3D2", True),
        ("A1B2C", True),
        ("4Q5x7h2Zk3z9abc", True),
        ("4cQFtR0Hhvz1gWb", True),
        ("NOQUEUE", False),  # handled separately
        ("warning", False),
        ("statistics", False),
        ("fatal", False),
        ("deadbeef", False),  # lower-case hex is not a short id
    ],
)
def test_queue_ids(qid: str, ok: bool) -> None:
    assert is_queue_id(qid) is ok


def test_statistics_line_has_no_queue_id() -> None:
    ln = P("Nov 22 23:43:37 mail postfix/anvil[3]: statistics: max connection rate 1/60s for (smtp:172.17.0.1)")
    assert ln.queue_id is None and ln.message.startswith("statistics: ")


# ----------------------------------------------------------------- our lab's exact lines

LAB = """\
Nov 22 23:43:37 mail postfix/postscreen[301]: CONNECT from [172.17.0.1]:51234 to [172.17.0.2]:25
Nov 22 23:43:37 mail postfix/postscreen[301]: PASS OLD [172.17.0.1]:51234
Nov 22 23:43:37 mail postfix/smtpd[302]: connect from unknown[172.17.0.1]
Nov 22 23:43:38 mail postfix/smtpd[302]: 4F8A21C3D2: client=unknown[172.17.0.1]
Nov 22 23:43:38 mail postfix/cleanup[303]: 4F8A21C3D2: message-id=<20261122234338.4F8A21C3D2@mail.example.org>
Nov 22 23:43:38 mail postfix/qmgr[290]: 4F8A21C3D2: from=<admin@example.org>, size=1893, nrcpt=2 (queue active)
Nov 22 23:43:38 mail postfix/smtpd[302]: disconnect from unknown[172.17.0.1] ehlo=1 mail=1 rcpt=2 data=1 quit=1 commands=6
Nov 22 23:43:40 mail postfix/smtp[304]: 4F8A21C3D2: to=<1234567@qq.com>, relay=mx3.qq.com[203.205.219.57]:25, delay=2.1, delays=0.05/0.01/1.2/0.84, dsn=2.0.0, status=sent (250 OK: queued as)
Nov 22 23:43:41 mail postfix/smtp[305]: 4F8A21C3D2: to=<7654321@qq.com>, relay=mx3.qq.com[203.205.219.57]:25, delay=3.0, delays=0.05/0.01/2/0.9, dsn=4.7.0, status=deferred (host mx3.qq.com[203.205.219.57] said: 451 4.7.0 Temporary rejected (in reply to RCPT TO command))
Nov 22 23:43:41 mail postfix/qmgr[290]: 4F8A21C3D2: removed
Nov 22 23:44:02 mail postfix/smtpd[302]: NOQUEUE: reject: RCPT from unknown[172.17.0.1]: 454 4.7.1 <x@gmail.com>: Relay access denied; from=<spam@example.net> to=<x@gmail.com> proto=ESMTP helo=<WIN-7Q2>
Nov 22 23:44:03 mail postfix/smtpd[306]: NOQUEUE: reject: RCPT from unknown[198.51.100.23]: 554 5.7.1 <y@163.com>: Relay access denied; from=<a@b.example> to=<y@163.com> proto=ESMTP helo=<ylmf-pc>
"""


def test_lab_relay_through_the_gateway() -> None:
    c, events = feed_all(LAB.splitlines(), local={"example.org"})
    [m] = c.finish()
    assert m.queue_id == "4F8A21C3D2"
    assert (m.client_host, m.client_addr, m.sasl_username) == ("unknown", "172.17.0.1", None)
    assert m.sender == "admin@example.org" and m.size == 1893 and m.nrcpt == 2
    assert m.message_id == "20261122234338.4F8A21C3D2@mail.example.org"
    assert m.service == "postfix/smtpd" and m.removed
    assert m.first_seen == datetime(2026, 11, 22, 23, 43, 38, tzinfo=UTC)
    assert m.last_seen == datetime(2026, 11, 22, 23, 43, 41, tzinfo=UTC)
    assert [(r.address, r.status, r.dsn, r.delay) for r in m.recipients] == [
        ("1234567@qq.com", "sent", "2.0.0", 2.1),
        ("7654321@qq.com", "deferred", "4.7.0", 3.0),
    ]
    assert m.recipients[0].relay == "mx3.qq.com[203.205.219.57]:25"
    kinds = [e.kind for e in events]
    assert kinds == ["connect", "connect", "outside-recipient", "outside-recipient", "reject", "reject"]
    assert events[0].message.client_addr == "172.17.0.1" and events[0].message.service == "postfix/postscreen"
    assert events[1].message.client_host == "unknown"
    assert is_gateway(m.client_addr or "", default_gateways())


def test_reject_454_and_554() -> None:
    _, events = feed_all(LAB.splitlines()[-2:])
    r454, r554 = events
    assert (r454.kind, r454.code, r454.message.client_addr) == ("reject", "454", "172.17.0.1")
    assert r454.message.sender == "spam@example.net"
    assert r454.recipient is not None and r454.recipient.address == "x@gmail.com"
    assert r454.recipient.dsn == "4.7.1" and r454.detail == "454 4.7.1 <x@gmail.com>: Relay access denied"
    assert (r554.code, r554.message.client_addr, r554.message.client_host) == ("554", "198.51.100.23", "unknown")
    assert r554.recipient is not None and r554.recipient.address == "y@163.com"
    assert r554.message.queue_id == "NOQUEUE"


def test_postscreen_reject_uses_commas() -> None:
    _, [ev] = feed_all(
        [
            "Nov 22 23:44:05 mail postfix/postscreen[301]: NOQUEUE: reject: RCPT from [198.51.100.7]:40112: "
            "550 5.7.1 Service unavailable; client [198.51.100.7] blocked using zen.spamhaus.org; "
            "from=<a@spam.example>, to=<b@qq.com>, proto=ESMTP, helo=<x>"
        ]
    )
    assert (ev.code, ev.message.client_addr, ev.message.sender) == ("550", "198.51.100.7", "a@spam.example")
    assert ev.recipient is not None and ev.recipient.address == "b@qq.com"


def test_cleanup_header_reject() -> None:
    _, events = feed_all(
        [
            "Nov 22 23:44:05 mail postfix/smtpd[3]: 5A1B2C3D4E: client=unknown[198.51.100.7]",
            "Nov 22 23:44:06 mail postfix/cleanup[4]: 5A1B2C3D4E: reject: header Subject: buy now from "
            "unknown[198.51.100.7]; from=<a@spam.example> to=<b@example.org> proto=ESMTP helo=<x>: "
            "5.7.1 message content rejected",
        ]
    )
    [ev] = events
    assert ev.kind == "reject" and ev.code == "550" and ev.recipient is not None
    assert ev.recipient.dsn == "5.7.1" and ev.message.queue_id == "5A1B2C3D4E"


def test_ipv6_client_and_sasl() -> None:
    c, events = feed_all(
        [
            "2026-11-22T10:00:00.000001+00:00 mx postfix/submission/smtpd[10]: connect from unknown[2001:db8::7]",
            "2026-11-22T10:00:01.000001+00:00 mx postfix/submission/smtpd[10]: 4Q5x7h2Zk3z9abc: "
            "client=unknown[2001:db8::7]:41234, sasl_method=LOGIN, sasl_username=bob@example.org",
            "2026-11-22T10:00:01.100000+00:00 mx postfix/qmgr[2]: 4Q5x7h2Zk3z9abc: "
            "from=<bob@example.org>, size=512, nrcpt=1 (queue active)",
            "2026-11-22T10:00:02.000000+00:00 mx postfix/lmtp[11]: 4Q5x7h2Zk3z9abc: to=<carol@example.org>, "
            "relay=dovecot[private/dovecot-lmtp], delay=1, delays=0.1/0/0/0.9, dsn=2.0.0, status=sent (250 2.0.0 Saved)",
        ]
    )
    [m] = c.finish()
    assert m.client_addr == "2001:db8::7" and m.sasl_username == "bob@example.org" and m.sasl_method == "LOGIN"
    assert m.service == "postfix/submission/smtpd"
    assert not m.outside
    assert [e.kind for e in events] == ["connect"]


def test_local_delivery_teaches_local_domains_without_a_list() -> None:
    c, events = feed_all(
        [
            "Nov 22 10:00:00 mx postfix/smtpd[1]: 1A2B3C4D5E: client=a[198.51.100.1]",
            "Nov 22 10:00:01 mx postfix/virtual[2]: 1A2B3C4D5E: to=<u@example.org>, relay=virtual, delay=1, "
            "delays=0/0/0/0, dsn=2.0.0, status=sent (delivered to maildir)",
            "Nov 22 10:00:02 mx postfix/smtpd[1]: 2A2B3C4D5E: client=unknown[172.17.0.1]",
            "Nov 22 10:00:03 mx postfix/error[3]: 2A2B3C4D5E: to=<u@example.org>, relay=none, delay=1, "
            "delays=0/0/0/0, dsn=4.4.1, status=deferred (delivery temporarily suspended)",
            "Nov 22 10:00:04 mx postfix/error[3]: 2A2B3C4D5E: to=<v@qq.com>, relay=none, delay=1, "
            "delays=0/0/0/0, dsn=4.4.1, status=deferred (delivery temporarily suspended: connect timed out)",
        ],
        local=None,
    )
    first, second = c.finish()
    assert not first.outside
    assert [r.outside for r in second.recipients] == [False, True]
    assert [(e.kind, e.recipient.address) for e in events if e.recipient] == [("outside-recipient", "v@qq.com")]


# ----------------------------------------------------------------- amavis: a second queue id

AMAVIS = """\
Nov 22 23:50:00 mail postfix/smtpd[401]: 3C4D5E6F7A: client=unknown[172.17.0.1]
Nov 22 23:50:00 mail postfix/cleanup[402]: 3C4D5E6F7A: message-id=<abc@spam.example>
Nov 22 23:50:00 mail postfix/qmgr[290]: 3C4D5E6F7A: from=<x@spam.example>, size=2200, nrcpt=1 (queue active)
Nov 22 23:50:01 mail postfix/smtpd[410]: 9D8E7F6A5B: client=localhost[127.0.0.1]
Nov 22 23:50:01 mail postfix/cleanup[402]: 9D8E7F6A5B: message-id=<abc@spam.example>
Nov 22 23:50:01 mail postfix/qmgr[290]: 9D8E7F6A5B: from=<x@spam.example>, size=2800, nrcpt=1 (queue active)
Nov 22 23:50:01 mail amavis[399]: (00399-01) Passed CLEAN {RelayedOutbound}, LOCAL [172.17.0.1]:40000 <x@spam.example> -> <5551234@qq.com>, Queue-ID: 3C4D5E6F7A, Message-ID: <abc@spam.example>, mail_id: q1w2e3, Hits: -0.1, size: 2200, queued_as: 9D8E7F6A5B, 412 ms
Nov 22 23:50:01 mail postfix/smtp[403]: 3C4D5E6F7A: to=<5551234@qq.com>, relay=127.0.0.1[127.0.0.1]:10024, delay=1.3, delays=0.1/0/0/1.2, dsn=2.0.0, status=sent (250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as 9D8E7F6A5B)
Nov 22 23:50:01 mail postfix/qmgr[290]: 3C4D5E6F7A: removed
Nov 22 23:50:03 mail postfix/smtp[404]: 9D8E7F6A5B: to=<5551234@qq.com>, relay=mx3.qq.com[203.205.219.57]:25, delay=2, delays=0/0/1/1, dsn=2.0.0, status=sent (250 OK)
Nov 22 23:50:03 mail postfix/qmgr[290]: 9D8E7F6A5B: removed
"""


@pytest.mark.parametrize("with_amavis_line", [True, False])
def test_amavis_second_queue_id_maps_back(with_amavis_line: bool) -> None:
    lines = [ln for ln in AMAVIS.splitlines() if with_amavis_line or "amavis[" not in ln]
    c, events = feed_all(lines, local=None)
    [m] = c.finish()
    assert m.queue_id == "3C4D5E6F7A" and m.queued_as == ["9D8E7F6A5B"]
    assert m.client_addr == "172.17.0.1" and m.sasl_username is None
    [r] = m.recipients
    assert (r.address, r.relay, r.status, r.outside) == (
        "5551234@qq.com",
        "mx3.qq.com[203.205.219.57]:25",
        "sent",
        True,
    )
    assert m.last_seen == datetime(2026, 11, 22, 23, 50, 3, tzinfo=UTC)
    outside = [e for e in events if e.kind == "outside-recipient"]
    assert len(outside) == 1 and outside[0].message is m


def test_amavis_with_local_domains_flags_the_filter_hop() -> None:
    c, events = feed_all(AMAVIS.splitlines(), local={"example.org"})
    [m] = c.finish()
    outside = [e for e in events if e.kind == "outside-recipient"]
    assert len(outside) == 1 and outside[0].message.queue_id == "3C4D5E6F7A"
    assert outside[0].time == datetime(2026, 11, 22, 23, 50, 1, tzinfo=UTC)
    assert m.recipients[0].relay == "mx3.qq.com[203.205.219.57]:25"


def test_remote_queued_as_does_not_link() -> None:
    remote = (
        "Nov 22 23:45:00 mail postfix/smtp[1]: 4F8A21C3D2: to=<z@gmail.com>, relay=gmail-smtp-in.l.google.com"
        "[142.250.1.27]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 OK: queued as 7E3F2A1B0C)"
    )
    c, _ = feed_all([*LAB.splitlines()[:8], remote])
    [m] = c.finish()
    assert m.queued_as == []


def test_queue_id_reused_after_removal_starts_a_new_message() -> None:
    c, _ = feed_all(
        [
            "Nov 22 10:00:00 mx postfix/smtpd[1]: 1A2B3C4D5E: client=a[198.51.100.1]",
            "Nov 22 10:00:01 mx postfix/qmgr[2]: 1A2B3C4D5E: removed",
            "Nov 22 11:00:00 mx postfix/smtpd[1]: 1A2B3C4D5E: client=b[198.51.100.2]",
        ]
    )
    assert [m.client_host for m in c.finish()] == ["a", "b"]


def test_max_open_bounds_memory() -> None:
    c = Correlator(max_open=10)
    for i in range(100):
        ln = P(f"Nov 22 10:00:00 mx postfix/smtpd[1]: {i + 0x10000:X}: client=a[198.51.100.1]")
        c.feed(ln)
    assert len(c.messages) == 10 and c.dropped == 90


def test_hostile_text_does_not_break_the_parser() -> None:
    hostile = (
        "Nov 22 10:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[172.17.0.1]: 554 5.7.1 "
        '<"<script>alert(1)</script>"@qq.com>: Relay access denied; from=<a, b=c> to=<x@qq.com> proto=ESMTP '
        "helo=<; from=<evil>"
    )
    _, [ev] = feed_all([hostile, "Nov 22 10:00:00 mx postfix/smtpd[1]: " + "[" * 10000 + ": " + "]" * 10000])
    assert ev.kind == "reject" and ev.message.client_addr == "172.17.0.1"


# ----------------------------------------------------------------- gateways


def test_default_gateways() -> None:
    gw = default_gateways()
    assert "172.17.0.1" in gw and "172.31.0.1" in gw and "192.168.0.1" in gw and "192.168.16.1" in gw
    assert "172.32.0.1" not in gw and "10.0.0.1" not in gw


def test_is_gateway() -> None:
    assert is_gateway("172.17.0.1", ["172.17.0.1"])
    assert is_gateway("::ffff:172.17.0.1", ["172.17.0.1"])
    assert is_gateway("IPv6:2001:DB8::1", ["2001:db8::1"])
    assert is_gateway("172.20.0.1", ["172.16.0.0/12"])
    assert not is_gateway("172.17.0.2", ["172.17.0.1"])
    assert not is_gateway("unknown", ["172.17.0.1"])
    assert not is_gateway("172.017.0.1", ["172.17.0.1"])  # leading zero: not an address
    assert not is_gateway("\u0661.1.1.1", ["1.1.1.1"])  # a non-ASCII digit


def _reference_is_gateway(addr: str, gateways: list[str]) -> bool:
    """What ``is_gateway`` means, spelled with ``ipaddress`` and nothing cached or shortened."""
    import ipaddress

    a = addr.strip().lower().removeprefix("ipv6:")
    if a.startswith("::ffff:") and "." in a:
        a = a[7:]
    try:
        ip = ipaddress.ip_address(a)
    except ValueError:
        return any(a == g.strip().lower() for g in gateways)
    for g in gateways:
        g = g.strip().lower()
        try:
            if ip in ipaddress.ip_network(g, strict=False) if "/" in g else ip == ipaddress.ip_address(g):
                return True
        except ValueError:
            continue
    return False


_OCTET = st.sampled_from(["0", "1", "17", "172", "255", "256", "01", "007", "1000", "", "\u0661"])


@given(
    st.lists(st.builds(".".join, st.lists(_OCTET, min_size=1, max_size=5)), min_size=1, max_size=40),
    st.lists(st.sampled_from(["172.17.0.1", "1.1.1.1", "0.0.0.0", "172.16.0.0/12", "255.255.255.255"]), max_size=3),
)
def test_gateway_matcher_agrees_with_ipaddress(addrs: list[str], gateways: list[str]) -> None:
    matcher = GatewayMatcher(gateways)
    for a in addrs:
        assert matcher(a) == _reference_is_gateway(a, gateways), (a, gateways)


# ----------------------------------------------------------------- chunks


def test_splitter_basic_and_crlf() -> None:
    s = LineSplitter()
    assert s.feed(b"a\r\nb") == ["a"]
    assert s.feed(b"c\nd\n\ne") == ["bc", "d", ""]
    assert s.flush() == ["e"]
    assert s.flush() == []


def test_splitter_utf8_split_inside_a_character() -> None:
    data = "é€😀\n".encode()
    s = LineSplitter()
    out = [*s.feed(data[:1]), *s.feed(data[1:5]), *s.feed(data[5:])]
    assert out == ["é€😀"]


def test_splitter_cuts_long_lines() -> None:
    s = LineSplitter()
    out: list[str] = []
    for _ in range(300):
        out += s.feed(b"x" * 1000)
    out += s.feed(b"tail\nnext\n")
    assert [len(x) for x in out] == [MAX_LINE, 4] and out[1] == "next"
    assert s.cut_lines == 1
    s2 = LineSplitter(max_line=10)
    assert s2.feed(b"short\n" + b"y" * 50 + b"\nok\n") == ["short", "y" * 10, "ok"]


LOG = (LAB + AMAVIS + "Nov 22 23:59:59 mail postfix/smtpd[1]: héllo wörld\r\n").encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(LOG)), max_size=40))
def test_random_chunking_gives_the_same_lines(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [LOG[a:b] for a, b in zip([0, *points], [*points, len(LOG)], strict=True)]
    s = LineSplitter()
    got: list[str] = []
    for ch in chunks:
        got += s.feed(ch)
    got += s.flush()
    expected = [ln.rstrip("\r") for ln in LOG.decode().split("\n")]
    if expected[-1] == "":
        expected.pop()
    assert got == expected
    parsed_whole = [parse_line(x, 2026) for x in expected]
    assert [parse_line(x, 2026) for x in got] == parsed_whole


# ----------------------------------------------------------------- feed_block == feed_text, line by line

VARIED = [
    "Nov 22 23:43:37 mail postfix/postscreen[77]: ALLOWLISTED [172.22.1.1]:40022",
    "2026-11-22T23:43:37.5Z Nov 22 23:43:37 mail postfix/postscreen[77]: WHITELISTED [172.22.1.1]:40023",
    "Nov 22 23:43:37 mail postfix/postscreen[77]: PASS NEW [2001:db8::5]:40024",
    "Nov 22 23:43:37 mail postfix/postscreen[77]: DISCONNECT [198.51.100.7]:40025",
    "Nov 22 23:43:37 mail postfix/smtpd[9]: ALLOWLISTED [172.22.1.1]:40022",
    *LAB.splitlines(),
    *AMAVIS.splitlines(),
    "Nov 22 23:43:37 postfix/smtpd[9]: 5D1C2A3B4E: client=unknown[172.17.0.1]",  # no host
    "Feb 30 23:43:37 mail postfix/smtpd[9]: 5D1C2A3B4F: client=unknown[172.17.0.1]",  # no such date
    "Foo 22 23:43:37 mail postfix/smtpd[9]: 5D1C2A3B50: client=unknown[172.17.0.1]",  # no such month
    "Nov 22 23:43:37  mail postfix/smtpd[9]: 5D1C2A3B51: client=unknown[172.17.0.1]",  # two spaces
    "Nov 22 23:43:37 mail: postfix/smtpd[9]: 5D1C2A3B52: client=unknown[172.17.0.1]",
    "Nov 22 23:43:37 mail postfix/smtpd[9]: 5D1C2A3B53: client=unknown[172.17.0.1], sasl_method=PLAIN, sasl_username=a@b",
    "Nov 22 23:43:38 mail postfix/qmgr[2]: 5D1C2A3B53: from=<a@b>, size=10, nrcpt=1 (queue active)",
    "Nov 22 23:43:38 mail postfix/smtp[3]: 5D1C2A3B53: to=<x@qq.com>, relay=mx.qq.com[203.0.113.1]:25, delay=1, delays=1/0/0/0, dsn=2.0.0, status=sent (250 ok)",
    "Nov 22 23:43:38 mail postfix/smtp[3]: 5D1C2A3B51: to=<y@qq.com>, relay=none, delay=1, dsn=4.4.1, status=deferred (connect to x: timed out)",
    "Nov 22 23:43:39 mail postfix/qmgr[2]: 5D1C2A3B53: removed",
    "Nov 22 23:43:39 mail postfix/postscreen[4]: CONNECT from [172.17.0.1]:5555 to [172.17.0.2]:25",
    "Nov 22 23:43:39 mail postfix/postscreen[4]: CONNECT from [IPv6:2001:db8::5]:5555 to [172.17.0.2]:25",
    "Nov 22 23:43:39 mail postfix/tlsproxy[5]: CONNECT from [172.17.0.1]:5556",
    "Nov 22 23:43:39 mail postfix/submission/smtpd[6]: connect from laptop[198.51.100.7]",
    "Nov 22 23:43:40 mail postfix/smtpd[6]: NOQUEUE: reject: RCPT from unknown[172.17.0.1]: 454 4.7.1 <z@163.com>: Relay access denied; from=<a@b> to=<z@163.com> proto=ESMTP helo=<x>",
    "Nov 22 23:43:40 mail postfix/smtpd[6]: abc12: client=unknown[172.17.0.1]",  # not a queue id
    "Nov 22 23:43:40 mail postfix/smtpd[6]: ABCDEFABCDEFABCDEFABCDEFAB: client=unknown[172.17.0.1]",  # too long
    "Nov 22 23:43:40 mail postfix/qmgr[2]: removed",
    "Nov 22 23:43:40 mail dovecot: imap-login: Login: user=<a@b>, client=1.2.3.4",
    "Nov 22 23:43:40 mail postfix-sub/smtpd[7]: 6A6A6A6A6A: client=x[10.0.0.1]",
    "Nov 22 23:43:40 mail last message repeated 3 times",
    "2026-11-22T23:43:41.123456789Z Nov 22 23:43:41 mail postfix/smtpd[8]: 7B7B7B7B7B: client=unknown[172.17.0.1]",
    "",
    "Nov 22 23:43:41 mail postfix/pickup[9]: 8C8C8C8C8C: uid=0 from=<root>",
    "Nov 22 23:43:41 mail postfix/cleanup[9]: 8C8C8C8C8C: message-id=<m@x>",
    "Nov 22 23:43:41 mail postfix/cleanup[9]: 8C8C8C8C8C: milter-reject: END-OF-MESSAGE from x[1.2.3.4]: 5.7.1 no; from=<a@b> to=<c@d>",
    "Mar 7 02:09:33 mail postfix/smtpd[1234]: 1D8CC1CA0A7F: milter-reject: DATA from host[192.0.2.151]: 550 5.7.1 Spam; from=<a@b> to=<c@qq.com> proto=ESMTP helo=<x>",
    "Mar  7 02:09:34 mail postfix/smtpd[1234]: NOQUEUE: milter-reject: MAIL from host[192.0.2.151]: 553 5.7.1 no; from=<a@b> proto=ESMTP helo=<x>",
    "Mar 7 02:09:35 mail postfix/smtpd[9]: 9E9E9E9E9E: client=unknown[172.17.0.1]",
    "Mar 7 02:09:35 mail postfix/smtp[9]: 9E9E9E9E9E: to=<v@qq.com>, relay=mx.qq.com[203.0.113.1]:25, delay=0.2, delays=0/0/0/0.2, dsn=2.1.5, status=deliverable (250 2.1.5 Ok)",
    "Mar 7 02:09:35 mail postfix/bounce[9]: 9E9E9E9E9E: sender delivery status notification: 0F0F0F0F0F",
    "Nov 22 23:43:42 mail postfix/smtpd[1]x: 5D1C2A3B60: client=unknown[172.17.0.1]",  # odd tag
    "Nov 22 23:43:42 mail postfix:smtpd: 5D1C2A3B61: client=unknown[172.17.0.1]",
    "Nov 22 23:43:42 mail postfix/smtpd[1]: 5D1C2A3B62: client=unknown[172.17.0.1]:2525, sasl_method=PLAIN",
    "Nov 22 23:43:42 mail kernel: [12345.6789] lkd-h0: link up",
    "smtp            25/tcp          mail",
]


def _as_line_by_line(lines: list[str], count: bool) -> tuple[object, ...]:
    """What ``Correlator.feed`` makes of ``parse_line`` of each line, one at a time."""
    c = Correlator(count_connects=count, events=EVENT_KINDS)
    kinds: list[str] = []
    for line in lines:
        parsed = parse_line(line, 2026)
        if parsed is None:
            c.lines += 1
            c.not_postfix(line)
        else:
            kinds += [f"{e.kind}:{e.code}" for e in c.feed(parsed)]
    return [m.as_dict() for m in c.finish()], dict(c.connects), sorted(kinds), c.lines, c.unparsed, c.unparsed_sample


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(VARIED), max_size=60),
    st.lists(st.integers(min_value=1, max_value=4000), max_size=8),
    st.booleans(),
    st.booleans(),
)
def test_feed_block_is_feed_text_line_by_line(lines: list[str], cuts: list[int], crlf: bool, count: bool) -> None:
    data = "".join(ln + ("\r\n" if crlf else "\n") for ln in lines).encode()
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    c = Correlator(count_connects=count, events=EVENT_KINDS)
    s = LineSplitter()
    kinds: list[str] = []
    total = 0
    for ch in chunks:
        block, n = s.feed_block(ch)
        total += n
        if n:
            kinds += [f"{e.kind}:{e.code}" for e in c.feed_block(block, 2026)]
    for line in s.flush():
        total += 1
        kinds += [f"{e.kind}:{e.code}" for e in c.feed_text(line, 2026)]
    expected = _as_line_by_line(lines, count)
    got = [m.as_dict() for m in c.finish()], dict(c.connects), sorted(kinds), c.lines, c.unparsed, c.unparsed_sample
    assert got == expected
    assert total == len(lines)


def test_count_verdicts_counts_pass_and_disconnect_and_keeps_allowlisted_as_events() -> None:
    lines = [
        "Nov 22 23:43:37 mail postfix/postscreen[77]: PASS OLD [172.17.0.1]:40022",
        "Nov 22 23:43:38 mail postfix/postscreen[77]: PASS OLD [172.17.0.1]:40023",
        "Nov 22 23:43:39 mail postfix/postscreen[77]: ALLOWLISTED [172.17.0.1]:40024",
        "Nov 22 23:43:40 mail postfix/postscreen[77]: DISCONNECT [IPv6:2001:db8::5]:40025",
        "Nov 22 23:43:41 mail postfix/smtpd[9]: PASS OLD [172.17.0.1]:40026",  # not postscreen: nothing
    ]
    expected = {
        ("postfix/postscreen", "PASS OLD", "172.17.0.1"): 2,
        ("postfix/postscreen", "DISCONNECT", "2001:db8::5"): 1,
    }
    by_block = Correlator(events=("postscreen",), count_verdicts=True)
    events = by_block.feed_block("\n".join(lines), 2026)
    assert dict(by_block.verdicts) == expected
    assert [(e.code, e.message.client_addr, e.time) for e in events] == [
        ("ALLOWLISTED", "172.17.0.1", datetime(2026, 11, 22, 23, 43, 39, tzinfo=UTC))
    ]
    by_line = Correlator(events=("postscreen",), count_verdicts=True)
    assert [e.code for line in lines for e in by_line.feed_text(line, 2026)] == ["ALLOWLISTED"]
    assert dict(by_line.verdicts) == expected
    without = Correlator(events=("reject",), count_verdicts=True)  # postscreen not asked for: not counted either
    without.feed_block("\n".join(lines), 2026)
    assert not without.verdicts


# ----------------------------------------------------------------- analyse's Report == line-by-line parse_line + feed

_GW = "172.17.0.1"
_TIMES = ["Nov 22 23:43:37", "Nov 22 23:43:38", "Nov 22 23:44:01", "Dec  1 00:00:05", "Feb 30 01:00:00"]


def _stamp(fmt: int, i: int) -> str:
    """A line prefix: RFC 3164, Docker's --timestamps prefix before it, RFC 3339, Docker's before
    RFC 3339, RFC 3164 with a second space, a timestamp-shaped date that does not exist, or
    RFC 3164 with the day not padded (``Dec 1``)."""
    t3164 = _TIMES[i % len(_TIMES)]
    iso = f"2026-11-22T23:{43 + i % 3:02d}:{i % 60:02d}.{i:06d}Z"
    unpadded = t3164[:4] + t3164[4:].lstrip(" 0") if t3164[4] in " 0" else t3164
    return [t3164, f"{iso} {t3164}", iso.replace("Z", "+01:00"), f"{iso} {iso}", f"{t3164} ", "Feb 31 25:61:00",
            unpadded][fmt]  # fmt: skip


@st.composite
def _mail_log(draw: st.DrawFn) -> list[str]:
    """Messages (queue ids from a small pool, so some are reused), Amavis re-queues, rejects, connects and noise."""
    qids = ["4F8A21C3D2", "5B2C1D3E4F", "6C3D2E4F5A", "4Q5x7h2Zk3z9abc", "7D4E3F5A6B"]
    lines: list[str] = []
    n = draw(st.integers(min_value=0, max_value=12))
    for _ in range(n):
        fmt = draw(st.sampled_from([0, 0, 0, 0, 1, 2, 3, 4, 5, 6]))
        i = draw(st.integers(min_value=0, max_value=200))

        def emit(text: str) -> None:
            lines.append(f"{_stamp(fmt, i)} mail {text}")  # noqa: B023

        kind = draw(st.sampled_from(["message", "message", "message", "reject", "connect", "noise", "amavis"]))
        q = draw(st.sampled_from(qids))
        addr = draw(st.sampled_from([_GW, "198.51.100.7", "IPv6:2001:db8::5", "::ffff:172.17.0.1"]))
        if kind == "reject":
            code = draw(st.sampled_from(["454 4.7.1", "554 5.7.1"]))
            qpart = draw(st.sampled_from(["NOQUEUE", q]))
            kind = draw(st.sampled_from(["reject: RCPT", "milter-reject: DATA"]))
            emit(
                f"postfix/smtpd[9]: {qpart}: {kind} from unknown[{addr}]: {code} <x@qq.com>: "
                "Relay access denied; from=<a@spam.example> to=<x@qq.com> proto=ESMTP helo=<x>"
            )
        elif kind == "connect":
            emit(draw(st.sampled_from([
                f"postfix/postscreen[77]: CONNECT from [{addr}]:4444 to [172.17.0.2]:25",
                f"postfix/smtpd[9]: connect from unknown[{addr}]",
                f"postfix/submission/smtpd[9]: connect from host.example[{addr}]",
                "postfix/postscreen[77]: CONNECT from [ipv6:]:1 to [172.17.0.2]:25",
                f"postfix/postscreen[77]: ALLOWLISTED [{addr}]:4444",
                f"postfix/postscreen[77]: WHITELISTED [{addr}]:4444",
                f"postfix/postscreen[77]: PASS OLD [{addr}]:4444",
                f"postfix/postscreen[77]: PASS NEW [{addr}]:4444",
                f"postfix/postscreen[77]: DISCONNECT [{addr}]:4444",
                f"postfix/smtpd[9]: ALLOWLISTED [{addr}]:4444",
                "postfix/postscreen[77]: ALLOWLISTED 172.17.0.1",
                f"postfix/postscreen[77]: PREGREET 11 after 0.1 from [{addr}]:4444: EHLO x",
            ])))  # fmt: skip
        elif kind == "noise":
            emit(draw(st.sampled_from([
                "dovecot: imap-login: Login: user=<a@b>, client=1.2.3.4",
                "postfix/anvil[90]: statistics: max connection rate 3/60s for (smtp:1.2.3.4)",
                "postfix/smtpd[9]: disconnect from unknown[172.17.0.1] ehlo=1 quit=1 commands=2",
                "postfix/qmgr[2]: removed",
                "postfix/smtpd[9]: abc12: client=unknown[172.17.0.1]",
                "kernel: [12345.6789] lkd-h0: link up",
                "postfix/bounce[9]: 4F8A21C3D2: sender delivery status notification: 5B2C1D3E4F",
            ])))  # fmt: skip
        elif kind == "amavis":
            second = draw(st.sampled_from(qids))
            emit(f"postfix/smtpd[410]: {second}: client=localhost[127.0.0.1]")
            emit(
                f"amavis[399]: (00399-01) Passed CLEAN {{RelayedOutbound}}, LOCAL [{addr}]:40000 <x@spam.example> -> "
                f"<5551234@qq.com>, Queue-ID: {q}, Message-ID: <abc@spam.example>, queued_as: {second}, 412 ms"
            )
            emit(
                f"postfix/smtp[403]: {q}: to=<5551234@qq.com>, relay=127.0.0.1[127.0.0.1]:10024, delay=1.3, "
                f"delays=0.1/0/0/1.2, dsn=2.0.0, status=sent (250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): "
                f"250 2.0.0 Ok: queued as {second})"
            )
            emit(f"postfix/smtp[404]: {second}: to=<5551234@qq.com>, relay=mx3.qq.com[203.0.113.5]:25, delay=2, "
                 "delays=0/0/1/1, dsn=2.0.0, status=sent (250 OK)")  # fmt: skip
        else:
            sasl = draw(st.sampled_from(["", ", sasl_method=PLAIN, sasl_username=alice@example.org",
                                         ", sasl_method=, sasl_username=", ", sasl_username=bob"]))  # fmt: skip
            service = draw(st.sampled_from(["postfix/smtpd[9]", "postfix/submission/smtpd[10]", "postfix/smtpd"]))
            order = draw(st.permutations(["client", "mid", "from", "to", "to2", "removed"]))
            for part in order[: draw(st.integers(min_value=1, max_value=6))]:
                if part == "client":
                    emit(f"{service}: {q}: client=unknown[{addr}]{sasl}")
                elif part == "mid":
                    emit(f"postfix/cleanup[11]: {q}: message-id=<{i}@spam.example>")
                elif part == "from":
                    emit(f"postfix/qmgr[2]: {q}: from=<bot{i}@spam.example>, size={i}, nrcpt=2 (queue active)")
                elif part in ("to", "to2"):
                    dom = draw(st.sampled_from(["qq.com", "example.org", "Gmail.COM.", "local"]))
                    agent = draw(st.sampled_from(["smtp", "lmtp", "virtual", "error"]))
                    status = draw(st.sampled_from(["sent (250 OK)", "deferred (451 try later)", "bounced", "sent",
                                                   "deliverable (250 2.1.5 Ok)"]))  # fmt: skip
                    extra = draw(st.sampled_from(["", ", orig_to=<x@y>"]))
                    emit(f"postfix/{agent}[12]: {q}: to=<u{i}@{dom}>{extra}, relay=mx.{dom}[203.0.113.1]:25, "
                         f"delay={draw(st.sampled_from(['0.5', 'x', '']))}, delays=0/0/0/0, dsn=2.0.0, status={status}")  # fmt: skip
                else:
                    emit(f"postfix/qmgr[2]: {q}: removed")
    return lines


class _Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self.name = "generated"
        self._chunks = chunks

    def open(self) -> Iterator[bytes]:
        yield from self._chunks


def _reference_report(lines: list[str], year: int) -> dict[str, Any]:
    """What ``analyse`` must say, built the slow way: ``Correlator.feed(parse_line(line))`` line by line."""
    from lockdown.mail import report as rp

    rep = rp.Report(sources=["generated"], gateways=[_GW], gateway_source="option", local_domains=None)
    matcher = GatewayMatcher([_GW])
    c = Correlator(None, events=("reject", "postscreen"), count_connects=True)
    traces = []
    for line in lines:
        parsed = parse_line(line, year)
        if parsed is None:
            if line.strip():
                rep.unparsed_lines += 1
                rep.unparsed_sample = [*rep.unparsed_sample, line[:200]][:5]
            continue
        rep.postfix_lines += 1
        for ev in c.feed(parsed):  # rejects and postscreen verdicts, counted plainly (not with the module's own code)
            if ev.kind == "postscreen":
                rep.postscreen[ev.code] += 1
                if matcher(ev.message.client_addr):
                    rep.gateway_seen = True
                    rep.postscreen_from_gateway[ev.code] += 1
                    if ev.code in ("ALLOWLISTED", "WHITELISTED"):
                        traces.append(ev)
                continue
            assert ev.kind == "reject"
            rep.rejects += 1
            rep.rejects_by_code[ev.code or "?"] += 1
            rep.rejects_from_gateway += int(matcher(ev.message.client_addr))
            rep.gateway_seen = rep.gateway_seen or matcher(ev.message.client_addr)
            if ev.time is not None:
                minute = ev.time.astimezone(UTC).replace(second=0, microsecond=0)
                rep.timeline.setdefault(minute, [0, 0, 0])[2] += 1
    for (service, addr), n in c.connects.items():
        if matcher(addr):
            rep.gateway_seen = True
            rep.connects_from_gateway += n
            if service.endswith("postscreen"):
                rep.postscreen_connects_from_gateway += n
    timed = [ev for ev in traces if ev.time is not None]
    rep.first_gateway_trace = min(timed, key=lambda ev: ev.time) if timed else (traces[0] if traces else None)
    rep.lines = len(lines)
    _reference_summary(rep, c.finish(), matcher)
    return rep.as_dict()


def _reference_summary(rep: Any, messages: list[Any], matcher: GatewayMatcher) -> None:
    """The summary written plainly, over the messages in the order they were first seen."""
    from lockdown.mail.parser import domain_of
    from lockdown.mail.report import SAMPLE

    rep.messages = len(messages)
    signature_messages = []
    for m in messages:
        rep.gateway_seen = rep.gateway_seen or matcher(m.client_addr)
        outside = [r for r in m.recipients if r.outside]
        if not outside:
            continue
        rep.outside_messages += 1
        rep.outside_recipients += len(outside)
        rep.by_client[m.client_addr or "unknown"] += 1
        rep.by_sender_domain[domain_of(m.sender) or ("<>" if m.sender == "" else "unknown")] += 1
        domains = list(dict.fromkeys(domain_of(r.address) for r in outside))
        for d in domains:
            rep.by_recipient_domain[d] += 1
        signature = m.sasl_username is None and matcher(m.client_addr)
        t = m.first_seen
        if t is not None:
            rep.first_outside = t if rep.first_outside is None else min(rep.first_outside, t)
            rep.last_outside = t if rep.last_outside is None else max(rep.last_outside, t)
            slot = rep.timeline.setdefault(t.astimezone(UTC).replace(second=0, microsecond=0), [0, 0, 0])
            slot[0] += 1
            slot[1] += int(signature)
        if signature:
            rep.signature_messages += 1
            for d in domains:
                rep.signature_by_recipient_domain[d] += 1
            signature_messages.append(m)
    rep.sample = signature_messages[:SAMPLE]
    timed = [m for m in signature_messages if m.first_seen is not None]
    rep.first_abuse = min(timed, key=lambda m: m.first_seen, default=None)  # the first of the earliest
    rep.last_abuse = max(reversed(timed), key=lambda m: m.first_seen, default=None)  # the last of the latest


@settings(max_examples=300, deadline=None)
@given(
    _mail_log(),
    st.lists(st.integers(min_value=1, max_value=6000), max_size=6),
    st.booleans(),
)
def test_analyse_report_is_line_by_line_parsing(lines: list[str], cuts: list[int], crlf: bool) -> None:
    from lockdown.mail import report as rp

    data = "".join(ln + ("\r\n" if crlf else "\n") for ln in lines).encode()
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    got = rp.analyse([_Chunks(chunks)], gateways=[_GW], year=2026).as_dict()
    assert got == _reference_report(lines, 2026)


# ----------------------------------------------------------------- bounded memory == everything kept


def _busy_log(n: int) -> list[str]:
    """``n`` messages: gateway relays to qq.com, SASL submissions, local deliveries to ``local.example``
    (learned as local early, then relayed to by smtp), rejects and connects; every fifth message's
    deliveries come 60 messages later, so many messages are open at once; one message in 50 goes
    through a content filter (a second queue id); one in 40 is never removed (deferred)."""
    lines: list[str] = []
    late: dict[int, list[str]] = {}
    t = datetime(2026, 11, 22, 10, 0, 0)
    for i in range(n):
        t += timedelta(seconds=7)
        out = lines
        stamp = t.strftime("%b %d %H:%M:%S")
        q, q2 = f"{0x100000 + i * 17:X}", f"{0x900000 + i * 17:X}"
        gw = i % 3 != 0
        addr = _GW if gw else f"198.51.100.{i % 250 + 1}"
        out.append(f"{stamp} mail postfix/postscreen[7]: CONNECT from [{addr}]:{4000 + i} to [172.17.0.2]:25")
        out.append(f"{stamp} mail postfix/smtpd[9]: connect from unknown[{addr}]")
        if i % 11 == 0:
            out.append(f"{stamp} mail postfix/smtpd[9]: NOQUEUE: reject: RCPT from unknown[{addr}]: 554 5.7.1 "
                       f"<v{i}@qq.com>: Relay access denied; from=<s@spam.example> to=<v{i}@qq.com> proto=ESMTP")  # fmt: skip
            continue
        sasl = ", sasl_method=PLAIN, sasl_username=alice" if i % 7 == 0 else ""
        out.append(f"{stamp} mail postfix/smtpd[9]: {q}: client=unknown[{addr}]{sasl}")
        out.append(f"{stamp} mail postfix/cleanup[11]: {q}: message-id=<{i}@spam.example>")
        out.append(f"{stamp} mail postfix/qmgr[2]: {q}: from=<bot{i}@spam.example>, size={900 + i}, nrcpt=2 (queue active)")
        if i % 5 == 0:
            out = late.setdefault(i + 60, [])
        dom = "local.example" if i % 4 == 1 else "qq.com"
        if i % 50 == 3:
            out.append(f"{stamp} mail postfix/smtp[13]: {q}: to=<u{i}@{dom}>, relay=127.0.0.1[127.0.0.1]:10024, "
                       f"delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {q2})")  # fmt: skip
            out.append(f"{stamp} mail postfix/qmgr[2]: {q}: removed")
            q = q2
        if i < n // 3 and i % 4 == 1:
            out.append(f"{stamp} mail postfix/lmtp[12]: {q}: to=<u{i}@local.example>, relay=dovecot[private/lmtp], "
                       "delay=0.3, delays=0/0/0/0.3, dsn=2.0.0, status=sent (250 2.0.0 Saved)")  # fmt: skip
        else:
            out.append(f"{stamp} mail postfix/smtp[12]: {q}: to=<u{i}@{dom}>, relay=mx.{dom}[203.0.113.1]:25, "
                       "delay=1.2, delays=0/0/1/0.2, dsn=4.7.0, status=deferred (451 4.7.0 try later)")  # fmt: skip
        if i % 40 != 7:
            out.append(f"{stamp} mail postfix/qmgr[2]: {q}: removed")
        lines.extend(late.pop(i, []))
    for rest in late.values():
        lines.extend(rest)
    return lines


@pytest.mark.parametrize("local", [None, {"local.example", "example.org"}])
def test_retiring_removed_messages_gives_the_report_that_keeps_them_all(tmp_path: Any, local: set[str] | None) -> None:
    """The report counts a message and forgets it once all its queue ids were ``removed`` (here
    after 1 line, instead of 20,000): the same report as keeping every message to the end, and
    only the messages still open are held."""
    from lockdown.mail import report as rp

    path = tmp_path / "mail.log"
    path.write_text("".join(ln + "\n" for ln in _busy_log(900)))
    source = rp.LogSource(name="generated", path=path)
    cont = datetime(2026, 11, 22, 10, 35, tzinfo=UTC)
    kept = rp.analyse([source], gateways=[_GW], local_domains=local, containment_time=cont, year=2026,
                      retire_after=10**9)  # fmt: skip
    bounded = rp.analyse([source], gateways=[_GW], local_domains=local, containment_time=cont, year=2026,
                         retire_after=1)  # fmt: skip
    assert bounded.as_dict() == kept.as_dict()
    assert kept.signature_messages > 50 and kept.rejects > 0 and kept.before_containment and kept.after_containment
    assert any(m.queued_as for m in kept.sample)  # a content filter's second queue id was joined


def test_a_retiring_correlator_holds_only_open_messages() -> None:
    c = Correlator(retire_after=10, count_connects=True)
    lines = _busy_log(2000)
    for start in range(0, len(lines), 100):
        c.feed_block("\n".join(lines[start : start + 100]), 2026)
        assert all(m.removed for m in c.drain())
    c.feed_block("\n".join(["Nov 22 23:59:59 mail postfix/anvil[90]: statistics: max cache size 1"] * 10), 2026)
    assert all(m.removed for m in c.drain())
    never_removed = sum(1 for i in range(2000) if i % 11 != 0 and i % 40 == 7)
    assert len(c.finish()) == never_removed and not any(m.removed for m in c.finish())
