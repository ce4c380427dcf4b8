"""``lockdown audit`` against containers, veth pairs and logs the tests create.

The vulnerable configuration is the postmortem's: port 25 published on every
address (docker-proxy then forwards IPv6 into the IPv4-only container),
mynetworks holding the bridge gateway, docker-mailserver's
PERMIT_DOCKER=network. The corrected one publishes on 127.0.0.1 and keeps the
gateway out of mynetworks. The probe talks SMTP to a real Postfix over a
2001:db8:: address on a veth pair the test creates (both ends its own, the
peer inside the test's namespace).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockdown import hostfacts
from lockdown.audit import (
    AuditResult,
    Finding,
    daemon_config,
    parse_matchlist,
    parse_proxy_cmdline,
    trusted_by,
)
from tests.bridge import mynetworks
from tests.conftest import docker_bridge, run_cli, sh, unique
from tests.dockerlab import BUSYBOX, POSTFIX, TEST_LABEL, lab, postqueue, v6_host_port, wait_smtp
from tests.netlab import nsexec

FINDING_KEYS = {"id", "severity", "title", "evidence", "fix"}
#: Added by stack recognition (issue 18), present when the container belongs to a recognised stack.
STACK_KEYS = {"stack", "fix_file", "fix_setting", "check"}
CHAIN_IDS = {
    "mail-port-all-addresses",
    "host-ipv6-container-ipv4",
    "proxy-ipv6-to-ipv4",
    "postfix-trusts-gateway",
    "dms-permit-docker",
    "ipv6-relay-path",
}
GATEWAY_IDS = {"postfix-trusts-gateway", "dms-permit-docker", "ipv6-relay-path", "mailu-subnet-gateway"}


# ------------------------------------------------------------------ helpers


@pytest.fixture
def host_v6(netns: str) -> Iterator[str]:
    """A global 2001:db8:: address on the host end of a veth pair this test owns (peer in ``netns``)."""
    host_if, peer = unique(), unique()
    # Compressed form (2001:db8:fe6::1, not 2001:db8:0fe6::1), as the kernel and the findings print it.
    address = str(ipaddress.IPv6Address(f"2001:db8:{secrets.token_hex(2)}::1"))
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer, "netns", netns)
    try:
        sh("ip", "addr", "add", f"{address}/64", "dev", host_if, "nodad")
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", netns, "link", "set", peer, "up")
        yield address
    finally:
        sh("ip", "link", "del", host_if, check=False)


def mail_container(the_lab: Any, *, host_ip: str, env: dict[str, str], **labels: str) -> Any:
    """A Postfix container publishing 25/tcp on a free port of ``host_ip`` ('' = every address)."""
    c = the_lab.client.containers.run(
        POSTFIX,
        name=unique(),
        detach=True,
        labels={TEST_LABEL: the_lab.owner, **labels},
        environment=env,
        ports={"25/tcp": (host_ip, None) if host_ip else None},
    )
    the_lab.containers.append(c)
    c.reload()
    port = int(c.attrs["NetworkSettings"]["Ports"]["25/tcp"][0]["HostPort"])
    wait_smtp(port)
    return c


def audit(*args: str, tmp_path: Path, netns: str | None = None) -> tuple[int, dict[str, Any], str]:
    """Run ``lockdown audit --json`` with a daemon.json the test controls (inside ``netns`` when given);
    return code, document, stderr."""
    daemon = tmp_path / "daemon.json"
    if not daemon.exists():
        daemon.write_text("{}\n")
    r = run_cli("audit", "--json", "--daemon-json", str(daemon), *args, netns=netns)
    doc = json.loads(r.stdout) if r.stdout.strip() else {}
    return r.returncode, doc, r.stderr


def of(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The findings that are about container ``name``."""
    return [f for f in doc["findings"] if name in f["title"] or name in f["evidence"]]


def check_shape(doc: dict[str, Any]) -> None:
    assert set(doc) == {"findings", "exposed", "stacks"}
    for f in doc["findings"]:
        assert set(f) in (FINDING_KEYS, FINDING_KEYS | STACK_KEYS), set(f)
        assert f["severity"] in ("info", "low", "medium", "high", "critical")
        assert all(isinstance(f[k], str) and f[k] for k in FINDING_KEYS)


def vulnerable() -> dict[str, str]:
    """docker-mailserver's PERMIT_DOCKER=network trust, for this engine's bridge (172.16.0.0/12
    when the bridge is inside it, else the bridge's own subnet): vulnerable on any host."""
    return {"POSTFIX_MYNETWORKS": mynetworks(), "PERMIT_DOCKER": "network"}


CORRECTED = {"POSTFIX_MYNETWORKS": "127.0.0.0/8"}


# ------------------------------------------------------------------ the checks, live


def test_vulnerable_config_gives_the_findings(docker_engine: Any, host_v6: str, tmp_path: Path) -> None:
    with lab(docker_engine) as the_lab:
        c = mail_container(the_lab, host_ip="", env=vulnerable())
        code, doc, err = audit("--container", c.name, "--no-container-logs", tmp_path=tmp_path)
    assert code == 1, err
    check_shape(doc)
    assert doc["exposed"] is True
    found = {f["id"]: f for f in of(doc, c.name)}
    assert set(found) >= CHAIN_IDS, sorted(found)
    gateway = c.attrs["NetworkSettings"]["Networks"]["bridge"]["Gateway"]
    trust = found["postfix-trusts-gateway"]
    assert trust["severity"] == "high"
    trusted = docker_bridge().trusted
    assert gateway == docker_bridge().gateway
    assert gateway in trust["title"] and trusted in trust["evidence"]
    assert trust["fix"] == f"main.cf: `mynetworks = 127.0.0.0/8` (was `mynetworks = 127.0.0.0/8 {trusted}`)"
    assert found["dms-permit-docker"]["fix"] == "mailserver.env: `PERMIT_DOCKER=none` (was `PERMIT_DOCKER=network`)"
    assert found["ipv6-relay-path"]["severity"] == "critical"
    proxy = found["proxy-ipv6-to-ipv4"]["evidence"]
    ip4 = c.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert "-host-ip ::" in proxy and f"-container-ip {ip4}" in proxy and "docker-proxy" in proxy
    assert host_v6 in found["host-ipv6-container-ipv4"]["evidence"]
    assert "HostIp" in found["mail-port-all-addresses"]["evidence"]
    assert '"userland-proxy": false' in found["proxy-ipv6-to-ipv4"]["fix"]


def test_corrected_config_comes_out_clean(docker_engine: Any, host_v6: str, tmp_path: Path) -> None:
    with lab(docker_engine) as the_lab:
        c = mail_container(the_lab, host_ip="127.0.0.1", env=CORRECTED)
        code, doc, err = audit("--container", c.name, "--no-container-logs", tmp_path=tmp_path)
    check_shape(doc)
    assert of(doc, c.name) == [], doc
    assert (doc["findings"], doc["exposed"]) == ([], False)
    assert [s["stack"] for s in doc["stacks"]] == ["postfix"]
    assert code == 0, err


def test_published_everywhere_but_gateway_not_trusted_is_not_exposed(
    docker_engine: Any, host_v6: str, tmp_path: Path
) -> None:
    with lab(docker_engine) as the_lab:
        c = mail_container(the_lab, host_ip="", env=CORRECTED)
        code, doc, _ = audit("--container", c.name, "--no-container-logs", tmp_path=tmp_path)
    ids = {f["id"] for f in of(doc, c.name)}
    assert {"mail-port-all-addresses", "proxy-ipv6-to-ipv4"} <= ids
    assert not ids & GATEWAY_IDS
    assert doc["exposed"] is False
    assert code == 0


def test_daemon_json_without_userland_proxy_is_quoted(docker_engine: Any, tmp_path: Path) -> None:
    """What the audit says about dockerd comes from the file it is given and dockerd's own flags."""
    (tmp_path / "daemon.json").write_text('{"ipv6": true, "ip6tables": true}\n')
    with lab(docker_engine) as the_lab:
        c = mail_container(the_lab, host_ip="", env=CORRECTED)
        _, doc, _ = audit("--container", c.name, "--no-container-logs", tmp_path=tmp_path)
    proxy = next(f for f in of(doc, c.name) if f["id"] == "proxy-ipv6-to-ipv4")
    assert "ipv6=true, ip6tables=true" in proxy["evidence"]
    assert f"{tmp_path / 'daemon.json'} read" in proxy["evidence"]


def test_mailu_subnet_and_relaynets(docker_engine: Any, tmp_path: Path) -> None:
    with lab(docker_engine) as the_lab:
        c = the_lab.run(
            BUSYBOX,
            ["sleep", "300"],
            env={"SUBNET": docker_bridge().trusted, "RELAYNETS": f"10.9.0.0/16, {docker_bridge().subnet}"},
            labels={"com.docker.compose.service": "smtp", "com.docker.compose.project": unique()},
        )
        code, doc, err = audit("--container", c.name, "--no-container-logs", tmp_path=tmp_path)
    found = {f["id"]: f for f in of(doc, c.name)}
    assert {"mailu-subnet-gateway", "mailu-relaynets-gateway"} <= set(found), doc
    assert found["mailu-relaynets-gateway"]["fix"] == (
        f"mailu.env: `RELAYNETS=` without {docker_bridge().subnet} "
        f"(was `RELAYNETS=10.9.0.0/16, {docker_bridge().subnet}`)"
    )
    assert code == 1, err


def test_unknown_container_is_bad_input(docker_engine: Any, tmp_path: Path) -> None:
    name = unique()
    code, doc, err = audit("--container", name, tmp_path=tmp_path)
    assert code == 2
    assert err.strip().splitlines()[0] == f"lockdown: error: --container {name}: no such container {name!r}"
    assert doc["error"]["exit_code"] == 2


DISABLE_IPV6 = "/proc/sys/net/ipv6/conf/all/disable_ipv6"


def test_ipv6_disabled_says_the_ipv6_path_is_not_exposed(docker_engine: Any, netns: str, tmp_path: Path) -> None:
    """The same vulnerable container, audited from a network namespace with IPv6 on, then off.

    The audit reads /proc/sys/net/ipv6 and the addresses of its own netns, so
    the namespace stands in for a host booted with IPv6 disabled; the host's
    own switch is only read, before and after.
    """
    host_before = Path(DISABLE_IPV6).read_text()
    with lab(docker_engine) as the_lab:
        c = mail_container(the_lab, host_ip="", env=vulnerable())
        port = v6_host_port(c)
        args = ("--container", c.name, "--no-container-logs")
        _, on, _ = audit(*args, tmp_path=tmp_path, netns=netns)
        nsexec(netns, "sh", "-c", f"echo 1 > {DISABLE_IPV6}")
        code, off, err = audit("--probe", *args, tmp_path=tmp_path, netns=netns)
    assert {"proxy-ipv6-to-ipv4", "ipv6-relay-path"} <= {f["id"] for f in on["findings"]}, on
    check_shape(off)
    found = {f["id"]: f for f in off["findings"]}
    assert not {"proxy-ipv6-to-ipv4", "ipv6-relay-path", "host-ipv6-container-ipv4"} & set(found), off
    assert found["ipv6-disabled"] == {
        "id": "ipv6-disabled",
        "severity": "info",
        "title": "IPv6 is disabled: the IPv6 -> docker-proxy relay path is not exposed",
        "evidence": "net.ipv6.conf.all.disable_ipv6 = 1 (read in this network namespace) and no interface has "
        "a global IPv6 address, so no IPv6 client can connect; docker-proxy would forward IPv6 clients over "
        f"IPv4 into {c.name} (port {port})",
        "fix": "nothing to do while IPv6 stays off; before enabling it, publish those ports on an IPv4 address "
        f'only or set "userland-proxy": false in {tmp_path / "daemon.json"}, then audit again',
    }
    assert found["probe-no-target"]["evidence"] == (
        "the host has no global IPv6 address (IPv6 is disabled: net.ipv6.conf.all.disable_ipv6 = 1)"
    )
    # Trusting the gateway is still a fault of its own (IPv4 clients through docker-proxy, other containers).
    assert found["postfix-trusts-gateway"]["severity"] == "high"
    assert code == 1, err
    assert Path(DISABLE_IPV6).read_text() == host_before


def test_ipv6_disabled_reads_the_given_namespace_switch(tmp_path: Path) -> None:
    (tmp_path / "conf" / "all").mkdir(parents=True)
    (tmp_path / "conf" / "all" / "disable_ipv6").write_text("0\n")
    assert hostfacts.ipv6_disabled(tmp_path) is None
    (tmp_path / "conf" / "all" / "disable_ipv6").write_text("1\n")
    assert hostfacts.ipv6_disabled(tmp_path) == "net.ipv6.conf.all.disable_ipv6 = 1"
    absent = tmp_path / "absent"
    assert hostfacts.ipv6_disabled(absent) == f"{absent} is absent: the kernel runs without IPv6 (ipv6.disable=1)"


# ------------------------------------------------------------------ abuse in the logs

#: 172.17.0.1 stands for the bridge gateway; ``abuse_log()`` puts this engine's in its place.
ABUSE_LOG = """\
Nov 22 23:43:37 mail postfix/postscreen[77]: CONNECT from [172.17.0.1]:40312 to [172.17.0.2]:25
Nov 22 23:43:37 mail postfix/smtpd[108]: connect from unknown[172.17.0.1]
Nov 22 23:43:37 mail postfix/smtpd[108]: AF3BD17684D: client=unknown[172.17.0.1]
Nov 22 23:43:37 mail postfix/qmgr[106]: AF3BD17684D: from=<spammer@lkd.test>, size=202, nrcpt=1 (queue active)
Nov 22 23:43:38 mail postfix/smtp[113]: AF3BD17684D: to=<victim@qq.com>, relay=mx3.qq.com[203.0.113.7]:25, \
delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 OK)
Nov 22 23:43:38 mail postfix/qmgr[106]: AF3BD17684D: removed
Nov 22 23:44:01 mail postfix/submission/smtpd[120]: B0B0B0B0B0: client=laptop.example[198.51.100.7], \
sasl_method=PLAIN, sasl_username=alice@lab.example
Nov 22 23:44:01 mail postfix/qmgr[106]: B0B0B0B0B0: from=<alice@lab.example>, size=900, nrcpt=1 (queue active)
Nov 22 23:44:02 mail postfix/smtp[113]: B0B0B0B0B0: to=<bob@gmail.com>, relay=gmail-smtp-in.l.google.com\
[203.0.113.9]:25, delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0, status=sent (250 OK)
Nov 22 23:44:02 mail postfix/qmgr[106]: B0B0B0B0B0: removed
"""


def abuse_log() -> str:
    return ABUSE_LOG.replace("[172.17.0.1]", f"[{docker_bridge().gateway}]")


def test_abuse_in_the_logs(docker_engine: Any, tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(abuse_log())
    with lab(docker_engine) as the_lab:
        c = mail_container(the_lab, host_ip="127.0.0.1", env=CORRECTED)
        code, doc, err = audit("--container", c.name, "--no-container-logs", "--log", str(log), tmp_path=tmp_path)
    found = {f["id"]: f for f in doc["findings"]}
    relay = found["log-gateway-relay"]
    assert relay["severity"] == "high"
    assert relay["title"] == "1 message(s) relayed from a Docker gateway without SASL"
    assert docker_bridge().gateway in relay["evidence"] and "qq.com (1)" in relay["evidence"]
    assert "gmail" not in relay["evidence"]  # the authenticated message is not abuse
    conn = found["log-gateway-connections"]
    assert conn["title"] == "2 connection(s) logged from a Docker gateway"
    assert "1 postscreen `CONNECT from [gateway]`" in conn["evidence"]
    assert code == 1, err


def test_clean_log_gives_no_log_finding(docker_engine: Any, tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    gateway = f"[{docker_bridge().gateway}]"
    log.write_text("".join(ln + "\n" for ln in abuse_log().splitlines() if gateway not in ln))
    with lab(docker_engine) as the_lab:
        c = mail_container(the_lab, host_ip="127.0.0.1", env=CORRECTED)
        code, doc, _ = audit("--container", c.name, "--no-container-logs", "--log", str(log), tmp_path=tmp_path)
    assert not {f["id"] for f in doc["findings"]} & {"log-gateway-relay", "log-gateway-connections"}
    assert code == 0


# ------------------------------------------------------------------ the probe


def test_probe_open_relay_is_critical_and_sends_no_mail(docker_engine: Any, host_v6: str, tmp_path: Path) -> None:
    with lab(docker_engine) as the_lab:
        c = mail_container(the_lab, host_ip="", env={"POSTFIX_MYNETWORKS": mynetworks()})
        port = v6_host_port(c)
        before = postqueue(c)
        code, doc, err = audit(
            "--probe", "--address", host_v6, "--container", c.name, "--no-container-logs", tmp_path=tmp_path
        )
        time.sleep(1)
        after = postqueue(c)
    assert code == 1, err
    probes = [f for f in doc["findings"] if f["id"].startswith("probe-")]
    assert [(f["id"], f["severity"]) for f in probes] == [("probe-open-relay", "critical")], probes
    assert f"[{host_v6}]:{port}" in probes[0]["title"]
    assert "RCPT TO:<lockdown-probe@example.net> -> 250" in probes[0]["evidence"]
    assert "RSET -> 250" in probes[0]["evidence"] and "QUIT -> 221" in probes[0]["evidence"]
    assert "DATA" not in probes[0]["evidence"].replace("no DATA was sent", "")
    assert before == after == {}  # nothing queued: the probe never sends DATA


def test_probe_closed_relay_is_not_critical(docker_engine: Any, host_v6: str, tmp_path: Path) -> None:
    with lab(docker_engine) as the_lab:
        c = mail_container(the_lab, host_ip="", env=CORRECTED)
        code, doc, err = audit(
            "--probe", "--address", host_v6, "--container", c.name, "--no-container-logs", tmp_path=tmp_path
        )
    probes = [f for f in doc["findings"] if f["id"].startswith("probe-")]
    assert [(f["id"], f["severity"]) for f in probes] == [("probe-closed", "info")], probes
    assert "-> 554" in probes[0]["evidence"] and "Relay access denied" in probes[0]["evidence"]
    assert not [f for f in doc["findings"] if f["severity"] == "critical"]
    assert doc["exposed"] is False
    assert code == 0, err


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (
            "2001:db8:dead::1",
            "--address 2001:db8:dead::1 is not configured on this host: the probe only "
            "connects to the host's own global IPv6 addresses",
        ),
        ("192.0.2.77", "--address 192.0.2.77: the probe tests the IPv6 path; give an IPv6 address"),
        ("mail.example", "--address mail.example: not an IP address"),
    ],
)
def test_probe_refuses_addresses_that_are_not_the_hosts(address: str, message: str, tmp_path: Path) -> None:
    code, doc, err = audit("--probe", "--address", address, "--port", "25", tmp_path=tmp_path)
    assert code == 2
    assert err.splitlines()[0] == f"lockdown: error: {message}"
    assert doc["error"]["message"] == message


def test_address_without_probe_is_bad_input(tmp_path: Path) -> None:
    code, _, err = audit("--address", "::1", tmp_path=tmp_path)
    assert code == 2
    assert err.splitlines()[0] == "lockdown: error: --address and --port choose what --probe connects to; add --probe"


# ------------------------------------------------------------------ pure parts


def test_proxy_command_lines_of_several_docker_versions() -> None:
    old = parse_proxy_cmdline(
        7,
        [
            "/usr/sbin/docker-proxy",
            "-proto",
            "tcp",
            "-host-ip",
            "::",
            "-host-port",
            "25",
            "-container-ip",
            "172.17.0.2",
            "-container-port",
            "25",
        ],
    )
    assert old is not None and old.ipv6_into_ipv4 and not old.listen_fd and old.host_port == 25
    new = parse_proxy_cmdline(
        8,
        [
            "/usr/libexec/docker/docker-proxy",
            "-proto",
            "tcp",
            "-host-ip",
            "::",
            "-host-port",
            "2525",
            "-container-ip",
            "172.18.0.3",
            "-container-port",
            "25",
            "-use-listen-fd",
        ],
    )
    assert new is not None and new.listen_fd and new.ipv6_into_ipv4 and new.container_ip == "172.18.0.3"
    v4 = parse_proxy_cmdline(
        9, ["docker-proxy", "-host-ip=0.0.0.0", "-host-port=25", "-container-ip=172.17.0.2", "-container-port=25"]
    )
    assert v4 is not None and not v4.ipv6_into_ipv4
    assert parse_proxy_cmdline(10, ["docker-proxy", "-host-port", "x"]) is None


def test_daemon_config_file_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "daemon.json"
    f.write_text('{"userland-proxy": false, "ipv6": true}')
    conf = daemon_config(f, ["dockerd"])
    assert (conf.userland_proxy, conf.ipv6, conf.ip6tables) == (False, True, False)
    conf = daemon_config(f, ["dockerd", "--userland-proxy=true", "--ip6tables"])
    assert (conf.userland_proxy, conf.ipv6, conf.ip6tables) == (True, True, True)
    other = tmp_path / "other.json"
    other.write_text('{"ip6tables": true}')
    conf = daemon_config(f, ["dockerd", "--config-file", str(other)])
    assert (conf.userland_proxy, conf.ip6tables, conf.path) == (True, True, str(other))
    conf = daemon_config(tmp_path / "absent.json", [])
    assert (conf.userland_proxy, conf.ipv6) == (True, False)
    assert f"{tmp_path / 'absent.json'} absent" in conf.describe()


@pytest.mark.parametrize(
    ("mynetworks", "gateway", "entry"),
    [
        ("127.0.0.0/8 172.16.0.0/12", "172.17.0.1", "172.16.0.0/12"),
        ("127.0.0.0/8, [::1]/128", "172.17.0.1", None),
        ("!172.17.0.1 172.16.0.0/12", "172.17.0.1", None),
        ("172.17.0.1", "172.17.0.1", "172.17.0.1"),
        ("[::ffff:172.16.0.0]/108", "172.17.0.1", "[::ffff:172.16.0.0]/108"),
        ("[fd00:1::]/64 hash:/etc/postfix/network_table", "fd00:1::1", "[fd00:1::]/64"),
    ],
)
def test_mynetworks_first_match(mynetworks: str, gateway: str, entry: str | None) -> None:
    assert trusted_by(parse_matchlist(mynetworks), gateway)[0] == entry


def test_unevaluable_entries_are_reported() -> None:
    assert trusted_by(["hash:/etc/postfix/network_table", "10.0.0.0/8"], "172.17.0.1") == (
        None,
        ["hash:/etc/postfix/network_table"],
    )


def test_exposed_means_high_or_critical() -> None:
    r = AuditResult([Finding("a", "medium", "t", "e", "f")])
    assert r.as_dict() == {
        "findings": [{"id": "a", "severity": "medium", "title": "t", "evidence": "e", "fix": "f"}],
        "exposed": False,
    }
    r.add(Finding("b", "high", "t", "e", "f"))
    r.sort()
    assert r.ids() == ["b", "a"] and r.exposed
    with pytest.raises(ValueError):
        Finding("c", "severe", "t", "e", "f")
