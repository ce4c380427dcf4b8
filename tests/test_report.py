"""``lockdown report``: the CLI on generated logs, its JSON interface, the HTML file, an incident's logs."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import docker_bridge, run_cli, unavailable

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
    if not Path("/var/run/docker.sock").exists():
        unavailable("logs.files needs the Docker socket (its privilege check)")
    pb = tmp_path / "logs.toml"
    pb.write_text(
        'name = "mail-evidence"\n[[steps]]\nid = "logs"\naction = "logs.files"\ncontainer = "none"\n'
        f'host_paths = ["{log}"]\n'
    )
    state = tmp_path / "state"
    r = run_cli("run", str(pb), "--json", state_dir=state)
    assert r.returncode == 0, r.stdout + r.stderr
    incident = json.loads(r.stdout)["incident_id"]
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
