"""``lockdown report`` on each stack's logs, as ``docker logs --timestamps`` and their files give them:
mailcow's postscreen ALLOWLISTED/WHITELISTED of the gateway (the relay's first trace),
docker-mailserver's RFC 3339 mail.log (file and container log together), Mailu's hand-off from
``front`` (the XCLIENT gateway, or front's own address read from the incident's stack evidence),
and real Postfix running postscreen."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.conftest import run_cli
from tests.dockerlab import host_port, incident_dir, lab, send_spam, wait_smtp
from tests.mailevidence import incident_with_log, write_log

MAILCOW_GW = "172.22.1.1"
MAILU_GW, MAILU_FRONT = "192.168.203.1", "192.168.203.3"
DMS_GW = "172.17.0.1"


def message(stamp: str, host: str, i: int, client: str, *, to: str = "qq.com") -> list[str]:
    """One relayed message as smtpd, cleanup, qmgr and smtp log it (``stamp``: the line's prefix)."""
    q = f"4F1A2B{i:04X}"
    return [
        f"{stamp} {host} postfix/smtpd[513]: {q}: client={client}",
        f"{stamp} {host} postfix/cleanup[514]: {q}: message-id=<{i}@spam.example>",
        f"{stamp} {host} postfix/qmgr[515]: {q}: from=<bot{i}@spam.example>, size=1000, nrcpt=1 (queue active)",
        f"{stamp} {host} postfix/smtp[516]: {q}: to=<u{i}@{to}>, relay=none, delay=1, delays=0/0/1/0, dsn=4.4.1, "
        "status=deferred (connect to mx.qq.com[203.0.113.7]:25: Connection timed out)",
    ]


def mailcow_log(verdict: str = "ALLOWLISTED") -> list[str]:
    """postfix-mailcow's container log: supervisord, then syslog-ng's pipe to stdout (RFC 3164,
    the container's hostname), Docker's ``--timestamps`` prefix in front of each line."""

    def d(second: int) -> str:
        return f"2026-11-22T23:43:{second:02d}.500000000Z Nov 22 23:43:{second:02d}"

    lines = [
        "2026-11-22T23:40:00.100000000Z 2026-11-22 23:40:00,100 INFO success: syslog-ng entered RUNNING state, "
        "process has stayed up for > than 1 seconds (startsecs)",
        f"{d(5)} mail postfix/postscreen[512]: CONNECT from [198.51.100.7]:51000 to [172.22.1.253]:25",
        f"{d(6)} mail postfix/postscreen[512]: PASS NEW [198.51.100.7]:51000",
        f"{d(7)} mail postfix/postscreen[512]: DISCONNECT [198.51.100.7]:51000",
    ]
    for i, second in enumerate((10, 20)):
        lines += [
            f"{d(second)} mail postfix/postscreen[512]: CONNECT from [{MAILCOW_GW}]:4031{i} to [172.22.1.253]:25",
            f"{d(second)} mail postfix/postscreen[512]: {verdict} [{MAILCOW_GW}]:4031{i}",
            f"{d(second)} mail postfix/smtpd[513]: connect from unknown[{MAILCOW_GW}]",
        ]
        lines += message(d(second + 1), "mail", i, f"unknown[{MAILCOW_GW}]")
    return lines


def report_json(*args: str, state_dir: Path | None = None) -> dict[str, Any]:
    r = run_cli("report", *args, "--year", "2026", "--json", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def report_text(*args: str, state_dir: Path | None = None) -> list[str]:
    r = run_cli("report", *args, "--year", "2026", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_mailcow_postscreen_allowlisted_gateway_is_the_relays_first_trace(tmp_path: Path) -> None:
    log = write_log(tmp_path, mailcow_log(), "postfix-mailcow.log")
    d = report_json("--log", str(log), "--gateway", MAILCOW_GW)
    assert d["postscreen"] == {
        "allowlisted": 2, "whitelisted": 0, "pass_old": 0, "pass_new": 1, "disconnect": 1,
        "from_gateway": {"allowlisted": 2, "whitelisted": 0, "pass_old": 0, "pass_new": 0, "disconnect": 0},
    }  # fmt: skip
    assert d["first_gateway_trace"] == {
        "time": "2026-11-22T23:43:10+00:00",
        "verdict": "ALLOWLISTED",
        "client_addr": MAILCOW_GW,
        "service": "postfix/postscreen",
    }
    assert d["postscreen_connects_from_gateway"] == 2 and d["connects_from_gateway"] == 4
    assert d["signature_messages"] == 2 and d["by_client"] == {MAILCOW_GW: 2}
    assert d["first_abuse"] == "2026-11-22T23:43:11+00:00"
    assert (d["lines"], d["postfix_lines"], d["unparsed_lines"]) == (18, 17, 1)
    assert d["unparsed_sample"][0].startswith("2026-11-22T23:40:00.100000000Z 2026-11-22 23:40:00,100 INFO success")
    assert d["handoff"] == [] and d["stack"] is None
    html = tmp_path / "r.html"
    report_text("--log", str(log), "--gateway", MAILCOW_GW, "--html", str(html))
    page = html.read_text()
    trace_row = "<td>first gateway trace (postscreen)</td><td>2026-11-22T23:43:10+00:00 ALLOWLISTED [172.22.1.1]</td>"
    assert trace_row in page
    text = report_text("--log", str(log), "--gateway", MAILCOW_GW)
    assert "postscreen:          allowlisted 2, pass_new 1, disconnect 1 (from a gateway: allowlisted 2)" in text
    assert (
        "first gateway trace: 2026-11-22T23:43:10+00:00 postscreen ALLOWLISTED [172.22.1.1] "
        "(the gateway path: let in without postscreen's tests)"
    ) in text


def test_older_postfix_whitelisted_gateway_is_the_first_trace_too(tmp_path: Path) -> None:
    log = write_log(tmp_path, mailcow_log("WHITELISTED"), "postfix-mailcow.log")
    d = report_json("--log", str(log), "--gateway", MAILCOW_GW)
    assert d["postscreen"]["whitelisted"] == 2 and d["postscreen"]["allowlisted"] == 0
    assert d["postscreen"]["from_gateway"]["whitelisted"] == 2
    assert d["first_gateway_trace"] == {
        "time": "2026-11-22T23:43:10+00:00",
        "verdict": "WHITELISTED",
        "client_addr": MAILCOW_GW,
        "service": "postfix/postscreen",
    }


def test_a_log_without_postscreen_has_no_first_trace(tmp_path: Path) -> None:
    log = write_log(tmp_path, message("Nov 22 23:43:10", "mail", 1, f"unknown[{MAILCOW_GW}]"), "mail.log")
    d = report_json("--log", str(log), "--gateway", MAILCOW_GW)
    assert d["first_gateway_trace"] is None and d["signature_messages"] == 1
    assert d["postscreen"]["allowlisted"] == 0 and d["postscreen"]["from_gateway"]["allowlisted"] == 0
    assert not any(line.startswith(("postscreen:", "first gateway trace:")) for line in report_text("--log", str(log)))


def dms_mail_log() -> list[str]:
    """docker-mailserver's /var/log/mail/mail.log: rsyslog, RFC 3339 with microseconds and offset."""
    lines = [f"2026-11-22T23:43:10.498877+00:00 mail postfix/smtpd[812]: connect from unknown[{DMS_GW}]"]
    for i in range(3):
        lines += message(f"2026-11-22T23:43:1{i}.5{i}0000+00:00", "mail", i, f"unknown[{DMS_GW}]")
    return lines


def test_dms_container_log_and_mail_log_count_each_line_once(tmp_path: Path) -> None:
    """The container log (supervisord's and the start script's lines, then mail.log tailed, each
    behind Docker's prefix) and the file say the same: every Postfix line counts once."""
    file_lines = dms_mail_log()
    container = [
        "2026-11-22T23:42:58.000000001Z [   INF   ]  Welcome to docker-mailserver v14.0.0",
        "2026-11-22T23:42:59.000000001Z 2026-11-22 23:42:59,001 INFO spawned: 'postfix' with pid 812",
        *(f"2026-11-22T23:43:1{i % 3}.600000000Z {line}" for i, line in enumerate(file_lines)),
    ]
    f = write_log(tmp_path, file_lines, "mail.log")
    c = write_log(tmp_path, container, "mailserver.container.log")
    alone = report_json("--log", str(c), "--gateway", DMS_GW)
    both = report_json("--log", str(f), "--log", str(c), "--gateway", DMS_GW)
    assert alone["signature_messages"] == both["signature_messages"] == 3
    assert alone["unparsed_lines"] == both["unparsed_lines"] == 2
    assert both["duplicate_lines"] == len(file_lines) and both["lines"] == 2 * len(file_lines) + 2
    assert both["first_abuse"] == "2026-11-22T23:43:10.500000+00:00"
    assert both["connects_from_gateway"] == 1


def mailu_smtp_log(client: str) -> list[str]:
    """Mailu smtp's container log: rsyslog writes mail.* to /dev/stdout (its built-in file format:
    RFC 3339 and the container's hostname). smtpd logs front's connection, then after XCLIENT the
    client= nginx handed it."""
    p, host = "2026-11-22T23:43:10.700000000Z 2026-11-22T23:43:10.698877+00:00", "7f3c2a1b9d0e"
    return [
        f"{p} {host} postfix/smtpd[300]: connect from mailu-front-1.mailu_default[{MAILU_FRONT}]",
        *message(p, host, 1, client),
        f"{p} {host} postfix/smtpd[300]: disconnect from unknown[{MAILU_GW}] ehlo=1 xclient=1 mail=1 rcpt=1 "
        "data=1 quit=1",
    ]


def test_mailu_xclient_hand_off_logs_the_gateway(tmp_path: Path) -> None:
    """nginx's smtp proxy (``xclient on``, the default) sends ``XCLIENT ADDR=`` the address it
    accepted from: docker-proxy's, the gateway. Postfix in smtp logs that as client=."""
    front = (
        "2026-11-22T23:43:10.690000000Z 2026/11/22 23:43:10 [info] 9#9: *12 client 192.168.203.1:40312 "
        "connected to 0.0.0.0:25"
    )
    log = write_log(tmp_path, [front, *mailu_smtp_log(f"unknown[{MAILU_GW}]")], "mailu.log")
    d = report_json("--log", str(log), "--gateway", MAILU_GW)
    assert d["signature_messages"] == 1 and d["by_client"] == {MAILU_GW: 1}
    assert d["first_abuse"] == "2026-11-22T23:43:10.698877+00:00"
    assert d["unparsed_lines"] == 1 and d["unparsed_sample"] == [front]


def mailu_incident(tmp_path: Path, log: Path) -> tuple[Path, str]:
    """A real incident (logs.files collects ``log``) whose evidence also holds what docker.inspect
    writes on a Mailu stack: docker/stack.json and front's and smtp's inspect.json."""
    state, incident = incident_with_log(tmp_path, log)
    docker = incident_dir(state, incident) / "evidence" / "docker"
    stack = {
        "stack": "mailu", "title": "Mailu", "project": "mailu", "reasons": ["mailu-front-1: image ghcr.io/mailu/nginx"],
        "postfix": "mailu-smtp-1", "inbound": ["mailu-front-1", "mailu-smtp-1"],
        "logs": {"container_log": ["mailu-smtp-1", "mailu-front-1"], "files": []},
        "network": {"name": "mailu_default", "subnets": ["192.168.203.0/24"], "gateways": [MAILU_GW]},
        "gateway": MAILU_GW, "knob": "SUBNET in mailu.env",
    }  # fmt: skip
    docker.mkdir(parents=True, exist_ok=True)
    (docker / "stack.json").write_text(json.dumps(stack))
    for name, service, addr in (("mailu-front-1", "front", MAILU_FRONT), ("mailu-smtp-1", "smtp", "192.168.203.5")):
        (docker / name).mkdir()
        inspect = {
            "Name": f"/{name}",
            "Config": {"Labels": {"com.docker.compose.project": "mailu", "com.docker.compose.service": service}},
            "NetworkSettings": {"Networks": {"mailu_default": {"IPAddress": addr, "Gateway": MAILU_GW}}},
        }
        (docker / name / "inspect.json").write_text(json.dumps(inspect))
    return state, incident


def test_mailu_without_xclient_front_address_is_the_hand_off_path(tmp_path: Path) -> None:
    """nginx without XCLIENT: Postfix logs front's own address. On a Mailu incident the report reads
    front's address from the stack evidence and counts such messages as the proxied path."""
    log = write_log(tmp_path, mailu_smtp_log(f"mailu-front-1.mailu_default[{MAILU_FRONT}]"), "smtp.log")
    state, incident = mailu_incident(tmp_path, log)
    d = report_json(incident, state_dir=state)
    assert d["gateways"] == [MAILU_GW] and d["gateway_source"] == "incident"
    assert d["handoff"] == [MAILU_FRONT]
    assert d["stack"] == {
        "stack": "mailu", "title": "Mailu", "gateway": MAILU_GW, "inbound": ["mailu-front-1", "mailu-smtp-1"],
    }  # fmt: skip
    assert d["signature_messages"] == 1 and d["by_client"] == {MAILU_FRONT: 1}
    text = report_text(incident, state_dir=state)
    assert "stack:               Mailu (incident evidence); front hands clients over from 192.168.203.3" in text
    # the same log without the stack evidence: front's address is just a client
    alone = report_json("--log", str(log), "--gateway", MAILU_GW)
    assert alone["signature_messages"] == 0 and alone["handoff"] == []


def test_mailu_xclient_gateway_on_an_incident_is_the_signature(tmp_path: Path) -> None:
    log = write_log(tmp_path, mailu_smtp_log(f"unknown[{MAILU_GW}]"), "smtp.log")
    state, incident = mailu_incident(tmp_path, log)
    d = report_json(incident, state_dir=state)
    assert d["signature_messages"] == 1 and d["by_client"] == {MAILU_GW: 1} and d["handoff"] == [MAILU_FRONT]


def test_a_broken_stack_json_is_no_stack(tmp_path: Path) -> None:
    log = write_log(tmp_path, mailu_smtp_log(f"mailu-front-1.mailu_default[{MAILU_FRONT}]"), "smtp.log")
    state, incident = mailu_incident(tmp_path, log)
    (incident_dir(state, incident) / "evidence" / "docker" / "stack.json").write_text("[" * 100000)
    d = report_json(incident, state_dir=state)
    assert d["stack"] is None and d["handoff"] == [] and d["signature_messages"] == 0


# ----------------------------------------------------------------- real Postfix running postscreen

POSTSCREEN = [
    ["postconf", "-M", "smtp/inet=smtp inet n - n - 1 postscreen"],
    ["postconf", "-M", "smtpd/pass=smtpd pass - - n - - smtpd"],
    ["postconf", "-M", "dnsblog/unix=dnsblog unix - - n - 0 dnsblog"],
    ["postconf", "-M", "tlsproxy/unix=tlsproxy unix - - n - 0 tlsproxy"],
    ["postconf", "-e", "postscreen_access_list=permit_mynetworks"],
]


def _exec(container: Any, *cmd: str) -> None:
    code, out = container.exec_run(list(cmd))
    assert code == 0, out.decode(errors="replace")


def _wait_log(container: Any, text: str, count: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        logs = container.logs(timestamps=True).decode(errors="replace")
        if logs.count(text) >= count:
            return logs
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not {count} times in the container log after {timeout} s:\n{logs[-3000:]}")


def test_real_postscreen_allowlisted_and_whitelisted_are_read(docker_engine: Any, tmp_path: Path) -> None:
    """Postfix 3.7 with postscreen in front of smtpd and the Docker networks in mynetworks: a client
    arriving through the published port is the gateway, ALLOWLISTED (WHITELISTED with
    ``respectful_logging = no``, as Postfix before 3.6 logged it). The report reads the real lines."""
    with lab(docker_engine) as the_lab:
        c = the_lab.postfix()
        for cmd in POSTSCREEN:
            _exec(c, *cmd)
        _exec(c, "postfix", "reload")
        port = host_port(c)
        wait_smtp(port)
        send_spam(port, 1, "allow")
        _wait_log(c, " ALLOWLISTED [", 1)
        _exec(c, "postconf", "-e", "respectful_logging=no")
        _exec(c, "postfix", "reload")
        wait_smtp(port)
        send_spam(port, 1, "white")
        logs = _wait_log(c, "status=deferred", 2)
        c.reload()
        gateway = c.attrs["NetworkSettings"]["Networks"]["bridge"]["Gateway"]
    log = write_log(tmp_path, logs.splitlines(), "container.log")
    d = report_json("--log", str(log), "--gateway", gateway)
    allow = [ln for ln in logs.splitlines() if "ALLOWLISTED [" in ln]
    white = [ln for ln in logs.splitlines() if "WHITELISTED [" in ln]
    assert allow and white, logs
    assert f"ALLOWLISTED [{gateway}]:" in allow[0], allow
    assert d["postscreen"]["from_gateway"]["allowlisted"] == len(allow)
    assert d["postscreen"]["from_gateway"]["whitelisted"] == len(white)
    trace = d["first_gateway_trace"]
    assert (trace["verdict"], trace["client_addr"], trace["service"]) == ("ALLOWLISTED", gateway, "postfix/postscreen")
    stamp = allow[0].split(" ", 1)[1][:15]  # the syslog time after Docker's prefix: "Nov 30 22:11:59"
    when = datetime.strptime(f"{allow[0][:4]} {stamp}", "%Y %b %d %H:%M:%S").replace(tzinfo=UTC)
    assert trace["time"] == when.isoformat()
    assert d["signature_messages"] == 2 and d["by_client"] == {gateway: 2}
    assert d["postscreen_connects_from_gateway"] >= 2


def test_postconf_naming_a_table_leaves_the_domains_to_be_learned(tmp_path: Path) -> None:
    """mailcow keeps its domains in MySQL: a postconf.txt naming a table gives no list (None, the
    report learns them from deliveries), not a partial one that would make the server's own domains
    outside."""
    from lockdown.mail.evidence import local_domains_from_evidence

    ev = tmp_path / "evidence" / "postfix" / "postfix-mailcow"
    ev.mkdir(parents=True)
    (ev / "postconf.txt").write_text(
        "mydestination = localhost.$mydomain, localhost\nmydomain = localdomain\n"
        "virtual_mailbox_domains = proxy:mysql:/opt/postfix/conf/sql/mysql_virtual_domains_maps.cf\n"
        "relay_domains = proxy:mysql:/opt/postfix/conf/sql/mysql_virtual_relay_domain_maps.cf\n"
    )
    assert local_domains_from_evidence(tmp_path) is None
    (ev / "postconf.txt").write_text("mydestination = $mydomain, localhost\nmydomain = lab.example\nrelay_domains =\n")
    assert local_domains_from_evidence(tmp_path) == {"lab.example", "localhost"}
    (ev / "postconf.txt").write_text("relay_domains = partner.example, hash:/etc/postfix/relay_domains\n")
    assert local_domains_from_evidence(tmp_path) is None
    (ev / "postconf.txt").write_text("virtual_mailbox_domains = /etc/postfix/vhost\n")
    assert local_domains_from_evidence(tmp_path) is None
    (ev / "postconf.txt").write_text("myhostname = mail.lab.example\n")
    assert local_domains_from_evidence(tmp_path) is None
