"""``lockdown report``: the CLI on generated logs, its JSON interface, the HTML file, an incident's logs."""

from __future__ import annotations

import gc
import gzip
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockdown.mail import analysis
from tests.conftest import docker_bridge, run_cli
from tests.mailevidence import incident_with_log, write_log

GW = "172.17.0.1"


def relayed(i: int, minute: int, *, client: str = GW, sasl: str | None = None, domain: str = "qq.com") -> list[str]:
    """One message through Postfix: client=, cleanup, qmgr, a delivery to ``domain``, removed."""
    q = f"4F1A2B{i:04X}"
    t = f"Nov 22 23:{minute:02d}:{10 + i % 40:02d}"
    extra = f", sasl_method=PLAIN, sasl_username={sasl}" if sasl else ""
    agent, relay = (
        ("lmtp", "dovecot[private/dovecot-lmtp]") if domain == "lab.example" else ("smtp", "mx.x[203.0.113.7]:25")
    )
    return [
        f"{t} mail postfix/smtpd[100]: connect from unknown[{client}]",
        f"{t} mail postfix/smtpd[100]: {q}: client=unknown[{client}]{extra}",
        f"{t} mail postfix/cleanup[101]: {q}: message-id=<{i}@spam.example>",
        f"{t} mail postfix/qmgr[102]: {q}: from=<bot{i}@spam.example>, size=1000, nrcpt=1 (queue active)",
        f"{t} mail postfix/{agent}[103]: {q}: to=<u{i}@{domain}>, relay={relay}, delay=0.5, "
        "delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 OK)",
        f"{t} mail postfix/qmgr[102]: {q}: removed",
    ]


def incident_log() -> list[str]:
    lines: list[str] = []
    for i in range(5):  # the signature: gateway, no SASL, outside domain
        lines += relayed(i, 43)
    for i in range(5, 8):
        lines += relayed(i, 45)
    lines += relayed(20, 44, client="198.51.100.7", sasl="alice@lab.example", domain="gmail.com")  # authenticated
    lines += relayed(21, 44, client="198.51.100.8", domain="lab.example")  # inbound, local delivery
    lines.append(
        "Nov 22 23:46:01 mail postfix/smtpd[110]: NOQUEUE: reject: RCPT from unknown[172.17.0.1]: 554 5.7.1 "
        "<x@qq.com>: Relay access denied; from=<bot@spam.example> to=<x@qq.com> proto=ESMTP helo=<a>"
    )
    lines.append(
        "Nov 22 23:46:02 mail postfix/smtpd[110]: NOQUEUE: reject: RCPT from unknown[198.51.100.9]: 454 4.7.1 "
        "<y@163.com>: Relay access denied; from=<bot@spam.example> to=<y@163.com> proto=ESMTP helo=<b>"
    )
    lines.append("Nov 22 23:46:03 mail postfix/postscreen[77]: CONNECT from [172.17.0.1]:40312 to [172.17.0.2]:25")
    lines.append("Nov 22 23:46:04 mail dovecot: imap-login: Login: user=<alice@lab.example>")
    return lines


def report(*args: str) -> tuple[int, str, str]:
    r = run_cli("report", *args)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def log(tmp_path: Path) -> Path:
    p = tmp_path / "mail.log"
    p.write_text("\n".join(incident_log()) + "\n")
    return p


def test_json_fields_are_the_interface(log: Path) -> None:
    code, out, err = report("--log", str(log), "--gateway", GW, "--year", "2026", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["messages"] == 10
    assert d["outside_messages"] == 9  # 8 from the gateway + the authenticated one
    assert d["signature_messages"] == 8
    assert d["by_client"] == {GW: 8, "198.51.100.7": 1}
    assert d["by_sender_domain"] == {"spam.example": 9}
    assert d["by_recipient_domain"] == {"qq.com": 8, "gmail.com": 1}
    assert d["first_abuse"] == "2026-11-22T23:43:10+00:00"
    assert d["last_abuse"] == "2026-11-22T23:45:17+00:00"
    assert d["rejects"] == {"total": 2, "by_code": {"554": 1, "454": 1}, "from_gateway": 1}
    assert d["connects_from_gateway"] == 9 and d["postscreen_connects_from_gateway"] == 1
    assert d["gateway_source"] == "option" and d["gateways"] == [GW]
    assert d["lines"] == len(incident_log())
    minutes = {t["minute"]: (t["outside"], t["signature"], t["rejects"]) for t in d["timeline"]}
    assert minutes == {
        "2026-11-22T23:43:00+00:00": (5, 5, 0),
        "2026-11-22T23:44:00+00:00": (1, 0, 0),
        "2026-11-22T23:45:00+00:00": (3, 3, 0),
        "2026-11-22T23:46:00+00:00": (0, 0, 2),
    }


def test_docker_timestamps_gzip_and_a_cut_chunk_give_the_same_figures(log: Path, tmp_path: Path) -> None:
    prefixed = tmp_path / "docker.log.gz"
    with gzip.open(prefixed, "wt") as fh:
        for line in incident_log():
            stamp = line[:15]
            fh.write(f"2026-{stamp[:3].replace('Nov', '11')}-22T{stamp[7:]}.123456789Z {line}\n")
    plain = json.loads(report("--log", str(log), "--gateway", GW, "--year", "2026", "--json")[1])
    code, out, err = report("--log", str(prefixed), "--gateway", GW, "--json")
    assert code == 0, err
    docker = json.loads(out)
    for key in (
        "messages",
        "outside_messages",
        "signature_messages",
        "by_client",
        "by_sender_domain",
        "by_recipient_domain",
        "first_abuse",
        "last_abuse",
        "rejects",
    ):
        assert docker[key] == plain[key], key


def test_default_gateways_without_docker_fall_back_to_the_default_pools(log: Path) -> None:
    code, out, _ = report("--log", str(log), "--year", "2026", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["gateway_source"] in ("docker", "default-pools")
    r = run_cli("report", "--log", str(log), "--year", "2026", "--json", env={"DOCKER_HOST": "unix:///nonexistent"})
    d = json.loads(r.stdout)
    assert d["gateway_source"] == "default-pools"
    assert "172.17.0.1" in d["gateways"] and "192.168.16.1" in d["gateways"]
    assert d["signature_messages"] == 8


def test_gateways_come_from_the_live_docker_engine(log: Path, docker_engine: Any) -> None:
    """Read straight over the daemon's socket, they are the gateways the SDK reports: with the
    product's reading of IPAM (the subnet's first address when a network names no Gateway, as
    Debian's docker.io 20.10 leaves the default bridge), so the default networks are enough."""
    from lockdown.dockerapi import gateways_from_ipam

    expected = {gw for net in docker_engine.api.networks() for gw in gateways_from_ipam(net.get("IPAM") or {})}
    assert docker_bridge().gateway in expected
    code, out, err = report("--log", str(log), "--year", "2026", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["gateway_source"] == "docker"
    assert set(d["gateways"]) >= expected


def test_a_stale_docker_socket_means_default_pools_without_the_sdk(log: Path, tmp_path: Path) -> None:
    """A socket file nobody listens on (dockerd died) is 'not reachable', at once."""
    import socket

    stale = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))
    assert stale.is_socket()
    code = (
        "import sys\n"
        "from lockdown.cli import main\n"
        f"rc = main(['report', '--log', {str(log)!r}, '--year', '2026', '--json'])\n"
        "print('docker' in sys.modules, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    import subprocess
    import sys

    env = {**os.environ, "DOCKER_HOST": f"unix://{stale}"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gateway_source"] == "default-pools"
    assert r.stderr.strip().splitlines()[-1] == "False", "the Docker SDK was imported"


def test_html_is_one_self_contained_file(log: Path, tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    code, out, err = report("--log", str(log), "--gateway", GW, "--year", "2026", "--html", str(html))
    assert code == 0, err
    assert f"lockdown: HTML report written to {html}" in err
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<svg" in text and "</svg>" in text and text.count("<rect") >= 3
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)
    assert "default-src 'none'" in text
    assert "qq.com" in text and "4F1A2B0000" in text
    assert html.stat().st_mode & 0o777 == 0o600
    assert "signature messages:  8" in out


def test_text_output(log: Path) -> None:
    code, out, _ = report("--log", str(log), "--gateway", GW, "--year", "2026")
    assert code == 0
    assert "outside messages:    9 (9 recipients)" in out
    assert "first abuse:         2026-11-22T23:43:10+00:00" in out
    assert re.search(r"^172\.17\.0\.1\s+8$", out, re.M)


def test_hostile_names_are_escaped_in_html(tmp_path: Path) -> None:
    p = tmp_path / "mail.log"
    lines = relayed(1, 43)
    lines[3] = lines[3].replace("bot1@spam.example", "<script>alert(1)</script>@x.example")
    p.write_text("\n".join(lines) + "\n")
    html = tmp_path / "r.html"
    assert report("--log", str(p), "--gateway", GW, "--html", str(html))[0] == 0
    assert "<script>alert" not in html.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log", "/nonexistent/mail.log"], "no such log file: /nonexistent/mail.log"),
        (["--log", "/"], "/ is a directory: give log files"),
        ([], "what should I report on? give an INCIDENT, --last, or --log FILE..."),
        (["--log", "/etc/hostname", "--gateway", "gw"], "--gateway 'gw': not an IP address or network"),
        (["--log", "/etc/hostname", "--year", "12"], "--year 12: out of range"),
    ],
)
def test_bad_input(args: list[str], message: str) -> None:
    code, out, err = report(*args, "--json")
    assert code == 2
    assert err.splitlines()[0] == f"lockdown: error: {message}"
    assert json.loads(out)["error"]["message"] == message


def test_incident_and_log_together_is_bad_input(log: Path) -> None:
    code, _, err = report("20261122T234500Z-x-abcd", "--log", str(log))
    assert code == 2
    assert err.splitlines()[0] == "lockdown: error: give an INCIDENT or --log FILE..., not both"


def test_incident_mode_reads_the_collected_logs(log: Path, tmp_path: Path) -> None:
    state, incident = incident_with_log(tmp_path, log)
    html = tmp_path / "incident.html"
    r = run_cli("report", "--last", "--gateway", GW, "--json", "--html", str(html), state_dir=state)
    assert r.returncode == 0, r.stderr
    d: dict[str, Any] = json.loads(r.stdout)
    assert d["incident"]["incident_id"] == incident
    assert d["signature_messages"] == 8 and d["messages"] == 10
    assert d["first_abuse"].endswith("-11-22T23:43:10+00:00")
    assert [s["id"] for s in d["incident"]["steps"]] == ["logs"]
    assert d["containment_time"] is None and d["before_containment"] is None
    text = html.read_text()
    assert "Incident steps" in text and incident in text


def test_watch_and_report_read_the_same_gateways_from_docker_networks() -> None:
    """One reading of ``GET /networks`` for both: a network whose IPAM names no gateway counts
    its subnet's first address (what Docker gives it), for the watch as for the report."""
    from lockdown.dockerapi import network_gateways

    nets = [
        {"Name": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}},
        {"Name": "mail_default", "IPAM": {"Config": [{"Subnet": "172.30.0.0/16"}, {"Subnet": "2001:db8:1::/64"}]}},
        {"Name": "none", "IPAM": {"Config": []}},
    ]
    assert network_gateways(nets) == ["172.17.0.1", "172.30.0.1", "2001:db8:1::1"]


# ----------------------------------------------------------------- right on real logs (issue 15, item 6)

MILTER = [
    # rspamd/opendkim as a milter: refused at end of DATA (a queue id) and at MAIL FROM (NOQUEUE)
    "Mar  7 02:09:30 mail postfix/smtpd[1234]: connect from host[192.0.2.151]",
    "Mar  7 02:09:31 mail postfix/smtpd[1234]: 1D8CC1CA0A7F: client=host[192.0.2.151]",
    "Mar  7 02:09:33 mail postfix/smtpd[1234]: 1D8CC1CA0A7F: milter-reject: END-OF-MESSAGE from host[192.0.2.151]: "
    "5.7.1 Spam message rejected; from=<a@spam.example> to=<c@lab.example> proto=ESMTP helo=<x>",
    "Mar  7 02:09:34 mail postfix/smtpd[1234]: 2E9DD2DB1B80: client=unknown[172.17.0.1]",
    "Mar  7 02:09:35 mail postfix/smtpd[1234]: 2E9DD2DB1B80: milter-reject: DATA from unknown[172.17.0.1]: "
    "550 5.7.1 Gtube pattern; from=<a@spam.example> to=<d@qq.com> proto=ESMTP helo=<x>",
    "Mar  7 02:09:36 mail postfix/smtpd[1235]: NOQUEUE: milter-reject: MAIL from unknown[172.17.0.1]: "
    "451 4.7.1 Try again later; from=<b@spam.example> proto=ESMTP helo=<y>",
]


def test_milter_rejects_in_both_forms_are_rejects(tmp_path: Path) -> None:
    code, out, err = report("--log", str(write_log(tmp_path, MILTER)), "--gateway", GW, "--year", "2026", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["rejects"] == {"total": 3, "by_code": {"550": 2, "451": 1}, "from_gateway": 2}
    assert d["unparsed_lines"] == 0


def test_a_day_without_padding_is_read(tmp_path: Path) -> None:
    """``Mar 7 02:09:33`` (some syslog daemons write the day unpadded) is read like ``Mar  7``."""
    padded = [ln.replace("Nov 22", "Mar  7") for ln in relayed(1, 43)]
    unpadded = [ln.replace("Mar  7", "Mar 7") for ln in padded]
    assert unpadded[0].startswith("Mar 7 23:43:")
    args = ("--gateway", GW, "--year", "2026", "--json")
    one = json.loads(report("--log", str(write_log(tmp_path, padded, "a.log")), *args)[1])
    two = json.loads(report("--log", str(write_log(tmp_path, unpadded, "b.log")), *args)[1])
    assert two["messages"] == 1 and two["signature_messages"] == 1 and two["unparsed_lines"] == 0
    assert two["first_abuse"] == one["first_abuse"] == "2026-03-07T23:43:11+00:00"


VERIFY = [
    # ``sendmail -bv someone@gmail.com`` as root: a probe (nothing is sent), then its report to root
    "Mar  7 02:10:00 mail postfix/pickup[200]: 3A1B2C3D4E: uid=0 from=<root>",
    "Mar  7 02:10:00 mail postfix/cleanup[201]: 3A1B2C3D4E: message-id=<20260307021000.3A1B2C3D4E@mail.lab.example>",
    "Mar  7 02:10:00 mail postfix/qmgr[202]: 3A1B2C3D4E: from=<root@mail.lab.example>, size=300, nrcpt=1 "
    "(queue active)",
    "Mar  7 02:10:01 mail postfix/smtp[203]: 3A1B2C3D4E: to=<someone@gmail.com>, "
    "relay=gmail-smtp-in.l.google.com[142.250.1.27]:25, delay=0.9, delays=0.01/0/0.5/0.4, dsn=2.1.5, "
    "status=deliverable (250 2.1.5 OK)",
    "Mar  7 02:10:01 mail postfix/bounce[204]: 3A1B2C3D4E: sender delivery status notification: 4B2C3D4E5F",
    "Mar  7 02:10:01 mail postfix/cleanup[201]: 4B2C3D4E5F: message-id=<20260307021001.4B2C3D4E5F@mail.lab.example>",
    "Mar  7 02:10:01 mail postfix/qmgr[202]: 4B2C3D4E5F: from=<>, size=2000, nrcpt=1 (queue active)",
    "Mar  7 02:10:01 mail postfix/local[205]: 4B2C3D4E5F: to=<root@mail.lab.example>, relay=local, delay=0.01, "
    "delays=0/0/0/0, dsn=2.0.0, status=sent (delivered to mailbox)",
    "Mar  7 02:10:01 mail postfix/qmgr[202]: 4B2C3D4E5F: removed",
    "Mar  7 02:10:01 mail postfix/qmgr[202]: 3A1B2C3D4E: removed",
    # smtpd's reject_unverified_recipient probe from the gateway-facing smtpd: undeliverable
    "Mar  7 02:11:00 mail postfix/cleanup[201]: 5C3D4E5F6A: message-id=<20260307021100.5C3D4E5F6A@mail.lab.example>",
    "Mar  7 02:11:00 mail postfix/qmgr[202]: 5C3D4E5F6A: from=<double-bounce@mail.lab.example>, size=250, nrcpt=1 "
    "(queue active)",
    "Mar  7 02:11:01 mail postfix/smtp[203]: 5C3D4E5F6A: to=<nobody@163.com>, relay=mx.163.com[203.0.113.9]:25, "
    "delay=0.5, delays=0/0/0.3/0.2, dsn=5.1.1, status=undeliverable (host mx.163.com[203.0.113.9] said: "
    "550 5.1.1 no such user (in reply to RCPT TO command))",
    "Mar  7 02:11:01 mail postfix/qmgr[202]: 5C3D4E5F6A: removed",
]


def test_address_verification_is_not_mail_relayed_outside(tmp_path: Path) -> None:
    code, out, err = report("--log", str(write_log(tmp_path, VERIFY)), "--gateway", GW, "--year", "2026", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["messages"] == 3
    assert (d["outside_messages"], d["outside_recipients"], d["by_recipient_domain"]) == (0, 0, {})


def test_lines_that_are_not_postfix_are_counted_and_shown(log: Path) -> None:
    code, out, err = report("--log", str(log), "--gateway", GW, "--year", "2026", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["unparsed_lines"] == 1
    assert d["unparsed_sample"] == ["Nov 22 23:46:04 mail dovecot: imap-login: Login: user=<alice@lab.example>"]
    code, out, err = report("--log", str(log), "--gateway", GW, "--year", "2026")
    assert "not Postfix:         1 line(s), e.g.\n  Nov 22 23:46:04 mail dovecot: imap-login:" in out
    assert "lockdown: note" not in err


def test_a_file_that_is_not_a_mail_log_says_nothing_looked_like_postfix() -> None:
    text = Path("/etc/services").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    code, out, err = report("--log", "/etc/services", "--gateway", GW, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["lines"] == len(text.splitlines()) and d["unparsed_lines"] == len(lines) and d["messages"] == 0
    assert d["unparsed_sample"] == lines[:5]
    assert err.splitlines() == [
        f"lockdown: note: nothing in the log looked like Postfix: none of its {d['lines']} line(s) is a "
        "postfix/* (or amavis) syslog line"
    ]


def test_hostile_bytes_in_a_line_that_is_not_postfix_are_escaped(tmp_path: Path) -> None:
    p = tmp_path / "mail.log"
    p.write_bytes(b"evil \x1b[2J\x1b]0;pwned\x07 line\n")
    code, out, _ = report("--log", str(p), "--gateway", GW)
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "  evil \\x1b[2J\\x1b]0;pwned\\x07 line" in out


def test_log_without_a_gateway_client_says_so_and_suggests_the_option(tmp_path: Path) -> None:
    lines = relayed(1, 43, client="198.51.100.7")
    r = run_cli("report", "--log", str(write_log(tmp_path, lines)), "--year", "2026", "--json",
                env={"DOCKER_HOST": "unix:///nonexistent"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["gateway_source"], d["gateway_seen"]) == ("default-pools", False)
    assert r.stderr.splitlines() == [
        "lockdown: note: no client in the log is one of the gateways (default-pools): if the mail server's "
        "Docker network uses another, give it with --gateway ADDR"
    ]
    code, out, err = report("--log", str(write_log(tmp_path, lines)), "--gateway", "172.18.0.1", "--json")
    assert code == 0 and json.loads(out)["gateway_seen"] is False and err == ""


# ----------------------------------------------------------------- what the incident's own evidence says


def _inspect(gateway: str, v6: str = "") -> dict[str, Any]:
    """The part of ``docker inspect`` that docker.inspect writes to evidence/docker/<name>/inspect.json."""
    return {
        "Id": "0123456789ab" * 5 + "cdef",
        "Name": "/mailserver",
        "NetworkSettings": {
            "Networks": {
                "mail_default": {"Gateway": gateway, "IPAddress": "172.30.0.2", "IPv6Gateway": v6, "MacAddress": ""}
            }
        },
    }


POSTCONF = """\
mydestination = $myhostname, localhost.$mydomain, localhost, $mydomain
myhostname = mail.lab.example
mydomain = lab.example
relay_domains = partner.example
virtual_mailbox_domains =
"""

POSTQUEUE = [
    {"queue_name": "hold", "queue_id": "7F1A2B3C4D", "arrival_time": 1763854000, "message_size": 1800,
     "forced_expire": False, "sender": "bot1@spam.example",
     "recipients": [{"address": "11111@qq.com", "delay_reason": "connect to mx3.qq.com[203.0.113.7]:25: timed out"},
                    {"address": "22222@163.com"}]},
    {"queue_name": "hold", "queue_id": "8A2B3C4D5E", "arrival_time": 1763854001, "message_size": 900,
     "forced_expire": False, "sender": "", "recipients": [{"address": "postmaster@lab.example"}]},
]  # fmt: skip


def _evidence(incident_dir: Path) -> None:
    ev = incident_dir / "evidence"
    (ev / "docker" / "mailserver").mkdir(parents=True, exist_ok=True)
    (ev / "docker" / "mailserver" / "inspect.json").write_text(json.dumps(_inspect("172.30.0.1", "2001:db8:30::1")))
    (ev / "queue" / "mailserver").mkdir(parents=True, exist_ok=True)
    (ev / "queue" / "mailserver" / "postqueue.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in POSTQUEUE) + "{not json\n"
    )
    (ev / "queue" / "mailserver" / "postconf.txt").write_text(POSTCONF)


def test_incident_gateways_local_domains_and_held_spam_come_from_its_own_evidence(tmp_path: Path) -> None:
    from lockdown.mail.evidence import choose_gateways, held_queue, local_domains_from_evidence

    inc = tmp_path / "incident"
    inc.mkdir()
    assert choose_gateways(None, inc)[1] == "default-pools"  # never this host's Docker
    _evidence(inc)
    assert choose_gateways(None, inc) == (["172.30.0.1", "2001:db8:30::1"], "incident")
    assert choose_gateways([GW], inc) == ([GW], "option")
    assert local_domains_from_evidence(inc) == {"mail.lab.example", "localhost.lab.example", "localhost",
                                                "lab.example", "partner.example"}  # fmt: skip
    held = held_queue(inc, {"lab.example"}, set())
    assert held is not None
    d = held.as_dict()
    assert (d["messages"], d["recipients"], d["outside_recipients"], d["unreadable_lines"]) == (2, 3, 2, 1)
    assert d["by_recipient_domain"] == {"qq.com": 1, "163.com": 1}
    assert d["sample"][0] == {
        "container": "mailserver", "queue_id": "7F1A2B3C4D", "queue_name": "hold", "sender": "bot1@spam.example",
        "arrival_time": 1763854000,
        "recipients": [{"address": "11111@qq.com", "outside": True}, {"address": "22222@163.com", "outside": True}],
    }  # fmt: skip


def test_incident_report_uses_its_evidence(log: Path, tmp_path: Path) -> None:
    """A real incident (logs.files), with the evidence docker.inspect, postfix.hold_queue and postconf leave."""
    lines = incident_log() + relayed(30, 47, client="172.30.0.1", domain="partner.example")
    state, incident = incident_with_log(tmp_path, write_log(tmp_path, lines, "inc.log"))
    _evidence(state / "incidents" / incident)
    r = run_cli("report", "--last", "--json", state_dir=state)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["gateway_source"], d["gateways"]) == ("incident", ["172.30.0.1", "2001:db8:30::1"])
    assert "partner.example" in d["local_domains"] and "partner.example" not in d["by_recipient_domain"]
    assert d["signature_messages"] == 0  # 172.17.0.1 is not this incident's gateway
    assert d["held_queue"]["outside_recipients"] == 2 and d["held_queue"]["by_recipient_domain"] == {
        "qq.com": 1, "163.com": 1}  # fmt: skip
    html = tmp_path / "incident.html"
    r = run_cli("report", "--last", "--html", str(html), state_dir=state)
    assert "held at containment: 2 message(s), 2 of 3 recipient(s) outside" in r.stdout
    assert re.search(r"^qq\.com\s+1$", r.stdout, re.M)
    page = html.read_text()
    assert "Held in the queue at containment: 2 message(s), 2 of 3 recipient(s) outside" in page
    assert "11111@qq.com (outside)" in page and "postmaster@lab.example" in page


class _Chunks:
    """A log source that hands ``analyse`` the text in the chunks given, noting the GC's thresholds."""

    def __init__(self, data: bytes, size: int) -> None:
        self.name, self.data, self.size = "chunks", data, size
        self.thresholds: set[tuple[int, int, int]] = set()

    def open(self) -> Iterator[bytes]:
        for at in range(0, len(self.data), self.size):
            self.thresholds.add(gc.get_threshold())
            yield self.data[at : at + self.size]


def test_chunks_larger_than_a_block_give_the_same_report_and_the_gc_thresholds_come_back() -> None:
    # Many messages, so that the text spans several BLOCKs and lines straddle their edges.
    lines = [line for i in range(400) for line in relayed(i, i % 60)] + incident_log()
    data = ("\n".join(lines) + "\n").encode()
    assert len(data) > 3 * analysis.BLOCK
    before = gc.get_threshold()
    assert before != analysis.READ_GC_THRESHOLDS
    docs = []
    for size in (len(data), analysis.BLOCK + 7, 97):  # one chunk, a block and a bit, small pieces
        src = _Chunks(data, size)
        rep = analysis.analyse([src], gateways=[GW], year=2026)
        docs.append(json.dumps(rep.as_dict(), sort_keys=True, default=str))
        assert src.thresholds == {analysis.READ_GC_THRESHOLDS}
        assert gc.get_threshold() == before
    assert docs[0] == docs[1] == docs[2]
    assert json.loads(docs[0])["signature_messages"] > 400
