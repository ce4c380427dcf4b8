"""``lockdown serve``: real HTTP on loopback against the real CLI in a subprocess.

The server runs inside a fresh network namespace (``ip netns exec``) so the
playbook's ``sysctl.set`` changes only that namespace. The test talks to it
through sockets created inside the namespace (``setns`` on the calling
thread), so nothing on the host's network is touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import http.client
import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockdown.engine.lock import StateLock
from lockdown.record.incident import list_incident_ids, read_incident
from tests.conftest import read_line, run_cli, run_finished, unavailable, unique, wait_for
from tests.nsclient import ns_socket

pytestmark = pytest.mark.netns

TOKEN = "t0k3n-for-tests-only"
HMAC_SECRET = "hmac-secret-for-tests"
SYSCTL = "net.ipv4.icmp_echo_ignore_all"  # per network namespace, 0 in a fresh one

RELAY_PLAYBOOK = f"""
name = "relay-test"
description = "harmless: a host snapshot and one namespaced sysctl"
[vars]
value = "0"
[[steps]]
action = "snapshot.host"
[[steps]]
id = "icmp"
action = "sysctl.set"
values = {{ "{SYSCTL}" = "{{value}}" }}
"""

SLOW_PLAYBOOK = f"""
name = "slow-test"
[[steps]]
id = "pause"
action = "wait"
seconds = 2.5
[[steps]]
id = "icmp"
action = "sysctl.set"
values = {{ "{SYSCTL}" = "1" }}
"""


# ---------------------------------------------------------------- helpers


def sysctl_in(netns: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/sys/" + SYSCTL.replace(".", "/")],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    """``python -m lockdown serve`` in a subprocess, optionally inside a netns."""

    def __init__(self, config: Path, state: Path, netns: str | None) -> None:
        self.config = config
        self.state = state
        self.netns = netns
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.stdout: list[str] = []

    def start(self, timeout: float = 30) -> Server:
        cmd = [sys.executable, "-m", "lockdown", "serve", "--config", str(self.config)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        env = {k: v for k, v in os.environ.items() if k not in ("LOCKDOWN_STATE_DIR", "LOCKDOWN_CONFIG")}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent.parent
        )
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not sel.select(timeout=end - time.monotonic()):
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            self.stdout.append(line)
            if "listening on http://" in line:
                self.port = int(line.split("http://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
                return self
        self.proc.kill()
        _, err = self.proc.communicate()
        raise AssertionError(f"serve did not start: {''.join(self.stdout)}{err}")

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err

    def connect(self, timeout: float = 30) -> socket.socket:
        sock = ns_socket(self.netns)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        sock: socket.socket | None = None,
        timeout: float = 30,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.sock = sock or self.connect(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def post(self, path: str, doc: Any, headers: dict[str, str] | None = None, **kw: Any) -> Response:
        body = json.dumps(doc).encode()
        base = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        return self.request("POST", path, body, {**base, **(headers or {})}, **kw)


def am_payload(alertname: str, status: str = "firing", fingerprint: str = "f00dfeed", starts: str | None = None) -> Any:
    """An Alertmanager webhook_config payload (version 4) with one alert."""
    starts = starts or "2026-11-22T23:45:00.000Z"
    return {
        "version": "4",
        "groupKey": '{}:{alertname="' + alertname + '"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "lockdown",
        "groupLabels": {"alertname": alertname},
        "commonLabels": {"alertname": alertname, "severity": "critical"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": alertname, "severity": "critical", "instance": "mail:9154"},
                "annotations": {"summary": "more mail than this server ever sends"},
                "startsAt": starts,
                "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-23T00:15:00.000Z",
                "generatorURL": "http://prometheus.example:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }




def write_config(tmp_path: Path, *, extra_server: str = "", routes: str | None = None) -> tuple[Path, Path]:
    """A config with both secrets and two routes; returns (config path, state dir)."""
    (tmp_path / "relay.toml").write_text(RELAY_PLAYBOOK)
    (tmp_path / "slow.toml").write_text(SLOW_PLAYBOOK)
    for name, value in (("webhook.token", TOKEN), ("webhook.hmac", HMAC_SECRET)):
        path = tmp_path / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    state = tmp_path / "state"
    if routes is None:
        routes = """
[[routes]]
alert = "MailRelaySurge"
playbook = "relay.toml"
vars = { value = "1" }
[[routes]]
alert = "SlowAlert"
playbook = "slow.toml"
"""
    config = tmp_path / "lockdown.toml"
    config.write_text(
        f"""
state_dir = "{state}"
written_by = "a tool that adds its own keys"
[server]
listen = "127.0.0.1:0"
token_file = "webhook.token"
hmac_secret_file = "webhook.hmac"
token_header = "X-Lockdown-Token"
request_timeout = 2
{extra_server}
{routes}
"""
    )
    return config, state


@pytest.fixture
def server(tmp_path: Path, netns: str) -> Iterator[Server]:
    config, state = write_config(tmp_path, extra_server="workers = 16\nqueue = 1024")
    srv = Server(config, state, netns).start()
    yield srv
    srv.stop()


def sign(body: bytes, stamp: int, secret: str = HMAC_SECRET) -> str:
    return hmac.new(secret.encode(), str(stamp).encode() + b":" + body, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- a run


def test_firing_alert_starts_one_run_after_the_trigger_is_recorded(server: Server) -> None:
    assert sysctl_in(server.netns or "") == "0"
    resp = server.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge"))
    assert resp.status == 202, resp.body
    doc = resp.json()
    incident_id = doc["incident_id"]
    assert doc["result"] == "started"
    # 202 only after Run.start(): the incident and its trigger are already on disk
    meta = json.loads((server.state / "incidents" / incident_id / "incident.json").read_text())
    assert meta["trigger"]["kind"] == "alertmanager"
    assert meta["trigger"]["route"] == "MailRelaySurge"
    assert meta["trigger"]["payload"]["alerts"][0]["fingerprint"] == "f00dfeed"
    assert meta["vars"] == {"value": "1"}  # fixed by the config, never by the caller
    wait_for(lambda: run_finished(server.state, incident_id), what="the run")
    view = read_incident(server.state, incident_id)
    assert view.run_status == "contained"
    assert view.containment_active
    assert sysctl_in(server.netns or "") == "1"
    # restore is the human's decision, and works from the CLI
    result = run_cli("restore", incident_id, netns=server.netns, state_dir=server.state)
    assert result.returncode == 0, result.stderr
    assert sysctl_in(server.netns or "") == "0"


def test_caller_cannot_choose_playbook_or_vars(server: Server) -> None:
    payload = am_payload("MailRelaySurge")
    payload["alerts"][0]["labels"]["playbook"] = "/etc/evil.toml"
    payload["vars"] = {"value": "0"}
    resp = server.post("/v1/alerts/alertmanager", payload)
    assert resp.status == 202
    meta = json.loads((server.state / "incidents" / resp.json()["incident_id"] / "incident.json").read_text())
    assert meta["playbook"]["name"] == "relay-test"
    assert meta["vars"] == {"value": "1"}
    wait_for(lambda: run_finished(server.state, resp.json()["incident_id"]), what="the run")


def test_generic_and_grafana_endpoints(server: Server) -> None:
    resp = server.post("/v1/alerts/generic", {"alert": "NoSuchRoute", "detail": "x"})
    assert (resp.status, resp.json()["result"]) == (200, "ignored")
    grafana = {
        "receiver": "lockdown",
        "status": "firing",
        "orgId": 1,
        "version": "1",
        "state": "alerting",
        "title": "[FIRING:1] MailRelaySurge",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "MailRelaySurge", "grafana_folder": "mail"},
                "annotations": {},
                "startsAt": "2026-11-22T23:45:00Z",
                "fingerprint": "c0ffee",
            }
        ],
    }
    resp = server.post("/v1/alerts/grafana", grafana)
    assert resp.status == 202, resp.body
    incident_id = resp.json()["incident_id"]
    again = server.post("/v1/alerts/generic", {"alert": "MailRelaySurge"})
    assert (again.status, again.json()["incident_id"]) == (200, incident_id)
    wait_for(lambda: run_finished(server.state, incident_id), what="the run")


# ---------------------------------------------------------------- auth


def test_bearer_token_and_custom_header(server: Server) -> None:
    ok = server.post("/v1/alerts/generic", {"alert": "Unrouted"})
    assert ok.status == 200
    header = server.post("/v1/alerts/generic", {"alert": "Unrouted"}, {"Authorization": "", "X-Lockdown-Token": TOKEN})
    assert header.status == 200
    for bad in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": ""}):
        resp = server.post("/v1/alerts/generic", {"alert": "MailRelaySurge", "secret": "ECHO-ME"}, bad)
        assert resp.status == 401
        assert resp.json() == {"error": "unauthorized"}  # nothing about the request comes back
        assert b"ECHO-ME" not in resp.body and b"wrong" not in resp.body
    assert list_incident_ids(server.state) == []


def test_hmac_signature_right_wrong_expired_and_replayed(server: Server) -> None:
    now = int(time.time())
    bodies = iter(json.dumps({"alert": "Unrouted", "note": f"signed {i}"}).encode() for i in range(100))
    body = next(bodies)

    def post(sig: str, stamp: int | str, data: bytes | None = None) -> int:
        headers = {
            "Content-Type": "application/json",
            "X-Grafana-Alerting-Signature": sig,
            "X-Grafana-Alerting-Signature-Timestamp": str(stamp),
        }
        return server.request("POST", "/v1/alerts/generic", body if data is None else data, headers).status

    assert post(sign(body, now), now) == 200
    assert post(sign(body, now), now) == 401  # the same signed request again: a replay
    other = next(bodies)
    assert post(sign(other, now).upper(), now, other) == 200  # hex is hex
    assert post(sign(other, now), now, other) == 401  # ... and the same signature in lower case is a replay
    assert post(sign(body, now, "not-the-secret"), now) == 401
    assert post(sign(body + b" ", now), now) == 401  # body changed
    assert post(sign(body, now), now + 1) == 401  # timestamp is part of the signature
    old = now - 301
    assert post(sign(body, old), old) == 401  # outside the 5-minute replay window
    future = int(time.time()) + 305  # from the clock now: the posts above may have taken seconds
    assert post(sign(body, future), future) == 401
    assert post(sign(body, now - 250), now - 250) == 200
    assert post(sign(body, now), "") == 401
    assert post("", now) == 401
    assert post(sign(body, now), "12x") == 401
    assert post(sign(body, now), "\u00b2".encode("utf-8").decode("latin-1")) == 401  # '²': isdigit(), not int()
    log = [json.loads(x) for x in (server.state / "triggers" / "server.log").read_text().splitlines()]
    assert [x.get("reason") for x in log if x["event"] == "unauthorized"].count("replayed signature") == 2


def test_a_signed_request_answered_503_can_be_retried(server: Server) -> None:
    """Grafana retries a 503 with the very same signed request: that is not a replay."""
    body = json.dumps({"alert": "MailRelaySurge", "fingerprint": "retry-me"}).encode()
    now = int(time.time())
    headers = {"X-Grafana-Alerting-Signature": sign(body, now), "X-Grafana-Alerting-Signature-Timestamp": str(now)}
    lock = StateLock(server.state, "run").acquire()
    try:
        assert server.request("POST", "/v1/alerts/generic", body, headers).status == 503
    finally:
        lock.release()
    resp = server.request("POST", "/v1/alerts/generic", body, headers)
    assert resp.status == 202, resp.body
    assert server.request("POST", "/v1/alerts/generic", body, headers).status == 401  # now it is a replay
    wait_for(lambda: run_finished(server.state, resp.json()["incident_id"]), what="the run")


# ---------------------------------------------------------------- error codes


def test_every_error_code(server: Server) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    resp = server.request("POST", "/v1/alerts/generic", b'{"alert": "x",', auth)
    assert resp.status == 400
    reason = "Expecting property name enclosed in double quotes: line 1 column 15 (char 14)"
    assert resp.json() == {"error": f"JSON body: not valid JSON ({reason})"}
    resp = server.request("POST", "/v1/alerts/generic", b"\xff\xfe", auth)
    assert (resp.status, resp.json()) == (400, {"error": "JSON body: not UTF-8"})
    resp = server.post("/v1/alerts/alertmanager", {**am_payload("MailRelaySurge"), "version": "3"})
    assert (resp.status, resp.json()) == (
        400,
        {"error": "invalid alertmanager payload: version: expected \"4\" (Alertmanager webhook payload), got '3'"},
    )
    resp = server.post("/v1/alerts/alertmanager", {"version": "4", "alerts": [{"labels": {"alertname": 5}}]})
    assert (resp.status, resp.json()) == (
        400,
        {"error": "invalid alertmanager payload: alerts[0].labels: expected an object of strings"},
    )
    resp = server.post("/v1/alerts/generic", {"alert": "MailRelaySurge", "status": "exploded"})
    assert (resp.status, resp.json()) == (
        400,
        {"error": 'invalid generic payload: payload.status: expected "firing" or "resolved"'},
    )
    resp = server.post("/v1/alerts/generic", [1, 2])
    assert (resp.status, resp.json()) == (400, {"error": "invalid generic payload: expected a JSON object"})
    resp = server.post("/v1/alerts/nope", {"alert": "x"})
    assert (resp.status, resp.json()) == (404, {"error": "not found"})
    resp = server.request("GET", "/v1/alerts/alertmanager")
    assert (resp.status, resp.headers["allow"]) == (405, "POST")
    resp = server.post("/healthz", {})
    assert (resp.status, resp.headers["allow"]) == (405, "GET")
    resp = server.request("PUT", "/v1/alerts/grafana", b"{}", auth)
    assert resp.status == 405
    big = json.dumps({"alert": "x", "pad": "y" * 2_000_000}).encode()
    resp = server.request("POST", "/v1/alerts/generic", big, auth)
    assert (resp.status, resp.json()) == (413, {"error": "body too large: the limit is 1048576 bytes"})
    sock = server.connect()
    sock.sendall(b"POST /v1/alerts/generic HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.0 411 ")
    sock.close()
    resp = server.request("GET", "/healthz")
    assert (resp.status, resp.json()["status"]) == (200, "ok")
    assert list_incident_ids(server.state) == []


def test_503_when_another_incident_holds_the_state_dir(server: Server) -> None:
    lock = StateLock(server.state, "run").acquire()  # another run, from another process's point of view
    try:
        resp = server.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge"))
    finally:
        lock.release()
    assert resp.status == 503
    assert resp.headers["retry-after"] == "5"
    assert resp.json()["result"] == "busy"
    assert list_incident_ids(server.state) == []
    # Alertmanager retries: now it goes through
    resp = server.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge"))
    assert resp.status == 202
    wait_for(lambda: run_finished(server.state, resp.json()["incident_id"]), what="the run")


def test_503_from_a_different_route_while_one_runs_and_duplicate_for_the_same(server: Server) -> None:
    slow = server.post("/v1/alerts/generic", {"alert": "SlowAlert", "fingerprint": "s1"})
    assert slow.status == 202
    slow_id = slow.json()["incident_id"]
    other = server.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge"))
    assert (other.status, other.json()["result"]) == (503, "busy")
    same = server.post("/v1/alerts/generic", {"alert": "SlowAlert", "fingerprint": "s2"})
    assert (same.status, same.json()["incident_id"]) == (200, slow_id)
    wait_for(lambda: run_finished(server.state, slow_id), what="the slow run")


def test_503_when_every_worker_and_queue_slot_is_taken_and_healthz_still_answers(tmp_path: Path, netns: str) -> None:
    """The only worker is stuck (the test holds the dedup lock its alert waits for): a second
    alert gets 503 at once, while /healthz, answered by the loop, still says ok."""
    config, state = write_config(tmp_path, extra_server="workers = 1\nqueue = 0")
    srv = Server(config, state, netns).start()
    lock = os.open(state / "triggers" / "dedup.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held: list[Response] = []
        first = threading.Thread(
            target=lambda: held.append(srv.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge")))
        )
        first.start()
        time.sleep(0.5)  # the first alert is in the only worker, waiting for the dedup lock
        resp = srv.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge", fingerprint="other"))
        assert (resp.status, resp.headers["retry-after"]) == (503, "5")
        assert resp.json() == {"error": "server busy: too many requests; retry later"}
        health = srv.request("GET", "/healthz", timeout=1)
        assert (health.status, health.json()["status"]) == (200, "ok")
        fcntl.flock(lock, fcntl.LOCK_UN)
        first.join(30)
        assert held and held[0].status == 202, held
        wait_for(lambda: run_finished(state, held[0].json()["incident_id"]), what="the run")
    finally:
        os.close(lock)
        srv.stop()


def test_slowloris_is_cut_off_after_the_request_timeout(server: Server) -> None:
    sock = server.connect()
    sock.sendall(b"POST /v1/alerts/generic HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    closed_after = None
    sock.settimeout(0.3)
    for _ in range(40):  # one header byte every 0.3 s: each read alone would be in time
        try:
            if sock.recv(1024) == b"":
                closed_after = time.monotonic() - t0
                break
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed_after = time.monotonic() - t0
            break
        try:
            sock.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.monotonic() - t0
            break
    sock.close()
    assert closed_after is not None, "the slow client was never disconnected"
    assert 1.5 <= closed_after <= 4.0  # request_timeout = 2
    assert server.request("GET", "/healthz").status == 200


# ---------------------------------------------------------------- dedup


def test_flood_of_500_identical_alerts_gives_exactly_one_incident(server: Server) -> None:
    body = json.dumps(am_payload("MailRelaySurge", fingerprint="flood")).encode()
    request = (
        f"POST /v1/alerts/alertmanager HTTP/1.1\r\nHost: lockdown\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    n = 500
    sockets = [ns_socket(server.netns) for _ in range(n)]
    barrier = threading.Barrier(n)
    answers: list[bytes] = [b""] * n

    def fire(i: int) -> None:
        sock = sockets[i]
        sock.settimeout(60)
        sock.connect(("127.0.0.1", server.port))
        barrier.wait()
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        answers[i] = b"".join(chunks)
        sock.close()

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    codes = Counter(int(a.split(b" ", 2)[1]) for a in answers)
    assert codes[202] == 1, codes
    assert codes[202] + codes[200] == n, codes  # the queue is large enough: nobody was turned away
    ids = {json.loads(a.split(b"\r\n\r\n", 1)[1])["incident_id"] for a in answers}
    assert len(ids) == 1
    assert list_incident_ids(server.state) == list(ids)
    incident_id = ids.pop()
    repeats = (server.state / "incidents" / incident_id / "triggers.jsonl").read_text().splitlines()
    assert len(repeats) == n - 1
    assert {json.loads(r)["result"] for r in repeats} == {"duplicate"}
    wait_for(lambda: run_finished(server.state, incident_id), what="the run")
    assert server.request("GET", "/healthz").status == 200


def test_restart_between_duplicates_still_one_incident(tmp_path: Path, netns: str) -> None:
    config, state = write_config(tmp_path)
    first = Server(config, state, netns).start()
    resp = first.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge", fingerprint="abc"))
    assert resp.status == 202
    incident_id = resp.json()["incident_id"]
    wait_for(lambda: run_finished(state, incident_id), what="the run")
    code, _ = first.stop()
    assert code == 0
    # someone restores by hand: containment is no longer active, only the fingerprint dedups now
    assert run_cli("restore", incident_id, netns=netns, state_dir=state).returncode == 0
    second = Server(config, state, netns).start()
    try:
        again = second.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge", fingerprint="abc"))
        assert (again.status, again.json()["result"], again.json()["incident_id"]) == (200, "duplicate", incident_id)
        assert list_incident_ids(state) == [incident_id]
        assert sysctl_in(netns) == "0"  # a repeat never re-runs
        # a new occurrence of the alert (new startsAt) after the restore is a new incident
        new = second.post(
            "/v1/alerts/alertmanager",
            am_payload("MailRelaySurge", fingerprint="abc", starts="2026-11-23T06:00:00.000Z"),
        )
        assert new.status == 202
        assert new.json()["incident_id"] != incident_id
        wait_for(lambda: run_finished(state, new.json()["incident_id"]), what="the second run")
    finally:
        second.stop()


def test_contained_route_dedups_other_fingerprints_and_resolved_never_restores(server: Server) -> None:
    resp = server.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge", fingerprint="one"))
    incident_id = resp.json()["incident_id"]
    wait_for(lambda: run_finished(server.state, incident_id), what="the run")
    other = server.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge", fingerprint="two"))
    assert (other.status, other.json()["incident_id"]) == (200, incident_id)
    assert "still contained" in other.json()["alerts"][0]["reason"]
    resolved = server.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge", "resolved", fingerprint="one"))
    assert (resolved.status, resolved.json()["result"], resolved.json()["incident_id"]) == (
        200,
        "resolved",
        incident_id,
    )
    log = server.state / "incidents" / incident_id / "triggers.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["result"], x["fingerprint"]) for x in lines] == [("duplicate", "two"), ("resolved", "one")]
    assert lines[1]["alert"]["status"] == "resolved"
    assert read_incident(server.state, incident_id).containment_active
    assert sysctl_in(server.netns or "") == "1"  # resolved does not restore
    assert list_incident_ids(server.state) == [incident_id]


def test_unrouted_alert_is_ignored_and_logged(server: Server) -> None:
    resp = server.post("/v1/alerts/alertmanager", am_payload("DiskFull"))
    assert resp.status == 200
    assert resp.json() == {"alerts": [{"alert": "DiskFull", "reason": "no route for this alert", "result": "ignored"}],
                           "result": "ignored"}
    log = [json.loads(x) for x in (server.state / "triggers" / "server.log").read_text().splitlines()]
    ignored = [x for x in log if x.get("result") == "ignored"]
    assert ignored and ignored[-1]["alert"] == "DiskFull" and ignored[-1]["source"] == "alertmanager"
    assert list_incident_ids(server.state) == []


def test_metrics(server: Server) -> None:
    resp = server.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge"))
    wait_for(lambda: run_finished(server.state, resp.json()["incident_id"]), what="the run")
    server.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge"))
    server.post("/v1/alerts/generic", {"alert": "x"}, {"Authorization": "Bearer nope"})
    text = wait_for(
        lambda: (t := server.request("GET", "/metrics").body.decode()) and "lockdown_containment_active 1" in t and t,
        what="the gauge",
    )
    assert server.request("GET", "/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'lockdown_triggers_total{source="alertmanager",result="started"} 1' in text
    assert 'lockdown_triggers_total{source="alertmanager",result="duplicate"} 1' in text
    assert 'lockdown_triggers_total{source="generic",result="unauthorized"} 1' in text
    assert "lockdown_incidents_started_total 1" in text
    assert 'lockdown_trigger_to_contained_seconds_bucket{le="+Inf"} 1' in text
    assert "lockdown_trigger_to_contained_seconds_count 1" in text


# ---------------------------------------------------------------- shutdown


def test_sigterm_lets_the_running_step_finish_and_journals_it(tmp_path: Path, netns: str) -> None:
    config, state = write_config(tmp_path)
    srv = Server(config, state, netns).start()
    resp = srv.post("/v1/alerts/generic", {"alert": "SlowAlert"})
    assert resp.status == 202
    incident_id = resp.json()["incident_id"]
    wait_for(lambda: read_incident(state, incident_id).steps[0].state == "running", what="the wait step")
    t0 = time.monotonic()
    code, err = srv.stop()
    assert code == 0, err
    assert time.monotonic() - t0 >= 1.0  # it waited for the step
    view = read_incident(state, incident_id)
    assert view.run_status == "interrupted"
    assert [(s.id, s.state) for s in view.steps] == [("pause", "applied"), ("icmp", "not-run")]
    assert sysctl_in(netns) == "0"
    assert "SIGTERM: stopping" in err


# ---------------------------------------------------------------- refusing to start


def test_refuses_to_start_without_auth_or_with_a_bad_config(tmp_path: Path) -> None:
    config, state = write_config(tmp_path)
    text = config.read_text()

    def serve_with(new_text: str) -> subprocess.CompletedProcess[str]:
        config.write_text(new_text)
        return run_cli("serve", "--config", str(config), timeout=30)

    r = serve_with(text.replace('token_file = "webhook.token"\n', "").replace('hmac_secret_file = "webhook.hmac"\n', "")
                   .replace('token_header = "X-Lockdown-Token"\n', ""))
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (
        f"lockdown: error: {config}: server: no authentication configured: "
        "set server.token_file and/or server.hmac_secret_file"
    )
    r = serve_with(text.replace('"webhook.token"', '"missing.token"'))
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        2,
        f"lockdown: error: {config}: server.token_file: cannot read {tmp_path}/missing.token: "
        "No such file or directory",
    )
    r = serve_with(text.replace('listen = "127.0.0.1:0"', 'listen = "localhost"'))
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        2,
        f"lockdown: error: {config}: server.listen: expected HOST:PORT or [IPV6]:PORT, got 'localhost'",
    )
    r = serve_with(text.replace("request_timeout = 2", 'request_timeout = "soon"'))
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        2,
        f"lockdown: error: {config}: server.request_timeout: expected a number, got 'soon'",
    )
    r = serve_with(text.replace('playbook = "slow.toml"', 'playbook = "nope.toml"'))
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        2,
        f"lockdown: error: {config}: routes[1] (SlowAlert): {tmp_path}/nope.toml: no such playbook file",
    )
    (tmp_path / "relay.toml").write_text(RELAY_PLAYBOOK.replace('"{value}"', "{ bad = 1 }"))
    r = serve_with(text)
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        2,
        f"lockdown: error: {config}: routes[0] (MailRelaySurge): {tmp_path}/relay.toml: step 2 (icmp): "
        f"values.{SYSCTL}: expected a string, got {{'bad': 1}}",
    )
    (tmp_path / "relay.toml").write_text(RELAY_PLAYBOOK)
    r = serve_with(text.replace('vars = { value = "1" }', 'vars = { nosuchvar = "1" }'))
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        2,
        f"lockdown: error: {config}: routes[0] (MailRelaySurge): --var nosuchvar: {tmp_path}/relay.toml has no var "
        "'nosuchvar' (it defines: value)",
    )
    r = run_cli("serve", "--config", str(tmp_path / "absent.toml"), timeout=30)
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        2,
        f"lockdown: error: {tmp_path}/absent.toml: no such config file",
    )
    assert not (state / "incidents").exists()


def test_warns_about_a_world_readable_secret(tmp_path: Path) -> None:
    config, state = write_config(tmp_path, routes="")
    (tmp_path / "webhook.token").chmod(0o644)
    srv = Server(config, state, None).start()
    code, err = srv.stop()
    assert code == 0
    assert (
        f"lockdown: warning: {config}: server.token_file: {tmp_path}/webhook.token is world-readable; "
        f"run chmod 600 {tmp_path}/webhook.token"
    ) in err.splitlines()


# ---------------------------------------------------------------- deployment files

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = ("lockdown-serve.service", "lockdown-watch.service")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a systemd unit, every value of repeated keys kept in order."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a setting: {raw!r}"
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_sample_config_loads_and_its_route_validates(tmp_path: Path) -> None:
    from lockdown.engine.playbook import load_playbook
    from lockdown.triggers.config import load_config

    sample = DEPLOY / "lockdown.toml"
    cfg = load_config(sample, read_secrets=False)
    assert cfg.state_dir == Path("/var/lib/lockdown")
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 9595)
    assert cfg.server.token_file == Path("/etc/lockdown/webhook.token")
    assert cfg.server.hmac_secret_file == Path("/etc/lockdown/webhook.hmac")
    assert [(r.alert, r.playbook, r.vars) for r in cfg.routes] == [
        ("MailRelaySurge", "relay-incident", {"container": "mailserver"})
    ]
    w = cfg.watch
    assert (w.container, w.max_per_minute, w.on_signature, w.route) == ("mailserver", 200, True, "MailRelaySurge")
    # the route's vars fit the shipped playbook (what serve checks before it listens)
    pb = load_playbook(cfg.routes[0].playbook, dict(cfg.routes[0].vars))
    assert pb.name == "relay-incident"
    # with the secrets where the sample says, it loads as serve loads it
    text = sample.read_text().replace("/etc/lockdown/", f"{tmp_path}/")
    for name in ("webhook.token", "webhook.hmac"):
        (tmp_path / name).write_text("s3cret-of-16-bytes\n")
        (tmp_path / name).chmod(0o600)
    (tmp_path / "lockdown.toml").write_text(text)
    full = load_config(tmp_path / "lockdown.toml")
    secret = b"s3cret-of-16-bytes"
    assert (full.server.token, full.server.hmac_secret, full.warnings) == (secret, secret, [])


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exec_start_parses_with_the_real_cli(unit: str) -> None:
    import typer.main

    from lockdown.cli import app

    settings = unit_settings(DEPLOY / "systemd" / unit)
    (exec_start,) = settings["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].startswith("/") and Path(argv[0]).name == "lockdown"
    command = unit.removeprefix("lockdown-").removesuffix(".service")
    assert argv[1] == command
    sub = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    ctx = sub.make_context(command, argv[2:])  # raises a usage error on a flag the command lacks
    # typer < 0.29 converts to Path when the command is called, not while parsing
    assert Path(ctx.params["config"]) == Path("/etc/lockdown/lockdown.toml")
    # the state dir of the sample config is where the unit lets it write
    assert settings["StateDirectory"] == ["lockdown"]
    assert "/var/lib/lockdown" in settings["ReadWritePaths"]
    assert settings["RestartPreventExitStatus"] == ["2 4"]  # bad config / privileges: no restart loop
    caps = settings["CapabilityBoundingSet"][0].split()
    assert "CAP_NET_ADMIN" in caps
    # nothing that would stop the playbook from changing the host's network
    for forbidden in ("PrivateNetwork", "ProtectKernelTunables", "ProtectProc", "IPAddressDeny"):
        assert forbidden not in settings, forbidden


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    # The entry point of the environment running the tests (the project venv is not on PATH), else PATH's.
    lockdown_bin = shutil.which("lockdown", path=sysconfig.get_path("scripts")) or shutil.which("lockdown")
    if analyze is None or lockdown_bin is None:
        unavailable("systemd-analyze and an installed lockdown entry point are needed")
    text = (DEPLOY / "systemd" / unit).read_text().replace("/usr/local/bin/lockdown", str(lockdown_bin))
    (tmp_path / unit).write_text(text)
    result = subprocess.run([str(analyze), "verify", str(tmp_path / unit)], capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if unit in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_the_config_shown_in_docs_triggers_md_loads(tmp_path: Path) -> None:
    from lockdown.triggers.config import load_config

    text = (DEPLOY.parent / "docs" / "triggers.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "lockdown.toml").write_text(block)
    cfg = load_config(tmp_path / "lockdown.toml", read_secrets=False)
    assert [(r.alert, r.playbook) for r in cfg.routes] == [("MailRelaySurge", "relay-incident")]
    assert (cfg.server.port, cfg.watch.max_per_minute, cfg.watch.route) == (9595, 200, "MailRelaySurge")


def test_docker_away_at_start_is_said_not_hidden(tmp_path: Path, need_root: None) -> None:
    """serve starts without Docker (each run checks it again) but says so, with what to do,
    on stderr and as a JSON line before ``listening``."""
    routes = """
[[routes]]
alert = "MailRelaySurge"
playbook = "relay-incident"
vars = { container = "lkd-none", interfaces = "lkd-none" }
"""
    config, _ = write_config(tmp_path, routes=routes)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockdown", "serve", "--config", str(config), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"},
    )  # fmt: skip
    try:
        warning = json.loads(read_line(proc))
        assert warning["event"] == "warning" and "Docker daemon" in warning["message"] and warning["hint"]
        assert json.loads(read_line(proc))["event"] == "listening"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"lockdown: warning: {warning['message']}\n  -> {warning['hint']}\n" in err


def test_a_failure_under_json_is_one_more_line(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    (tmp_path / "webhook.token").unlink()  # refused: a configured secret file is missing
    r = subprocess.run(
        [sys.executable, "-m", "lockdown", "serve", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    (line,) = r.stdout.splitlines()
    doc = json.loads(line)
    assert doc["event"] == "error" and doc["error"]["exit_code"] == 2 and doc["error"]["message"]


def test_json_mode_prints_one_object_per_line(tmp_path: Path) -> None:
    """``serve --json``: a ``listening`` object a supervisor can parse, then ``stopped``; no text on stdout."""
    config, state = write_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockdown", "serve", "--config", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(read_line(proc))
        assert first["event"] == "listening"
        assert first["state_dir"] == str(state)
        assert {r["alert"] for r in first["routes"]} == {"MailRelaySurge", "SlowAlert"}
        host, port = first["url"].removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert [json.loads(line) for line in out.splitlines()] == [{"event": "stopped", "clean": True}]


def test_start_up_warms_each_routes_preflight_and_logs_a_route_that_would_be_refused(
    tmp_path: Path, netns: str, docker_engine: Any
) -> None:
    """The first alert must not pay for loading the alert path: serve walks every route's
    preflight when it starts (read-only). A route refused right now (its container is not
    there yet) is a `warm-up` line in server.log, not a failed start; nothing is changed."""
    absent = unique("lkd-absent")
    routes = f"""
[[routes]]
alert = "MailRelaySurge"
playbook = "relay.toml"
vars = {{ value = "1" }}
[[routes]]
alert = "Surgical"
playbook = "relay-incident-surgical"
vars = {{ container = "{absent}" }}
"""
    config, state = write_config(tmp_path, routes=routes)
    before = sysctl_in(netns)
    srv = Server(config, state, netns).start()
    try:
        log = [json.loads(x) for x in (state / "triggers" / "server.log").read_text().splitlines()]
        warm = [x for x in log if x["event"] == "warm-up"]
        assert [(x["route"], x["result"]) for x in warm] == [
            ("Surgical", f"relay-incident-surgical.toml step 1 (block-inbound-v6): no such container {absent!r}")
        ]
        assert list_incident_ids(state) == [] and sysctl_in(netns) == before
        assert srv.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge")).status == 202  # still serving
    finally:
        srv.stop()


def _thread_nice(pid: int) -> dict[int, int]:
    """tid -> nice value of every thread of ``pid`` (field 19 of /proc/<pid>/task/<tid>/stat)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        out[int(tid)] = int(stat.rsplit(")", 1)[1].split()[16])
    return out


@pytest.mark.parametrize(("setting", "expected"), [("", -10), ("nice = -3", -3), ("nice = 0", 0)])
def test_serve_runs_ahead_of_the_flood_at_its_nice_value(
    tmp_path: Path, netns: str, setting: str, expected: int
) -> None:
    """Every thread of serve, and so every run and nft it starts, has ``server.nice`` (default -10)."""
    config, state = write_config(tmp_path, extra_server=setting)
    srv = Server(config, state, netns).start()
    try:
        assert srv.proc is not None
        resp = srv.post("/v1/alerts/alertmanager", am_payload("MailRelaySurge"))
        assert resp.status == 202, resp.body
        niceness = _thread_nice(srv.proc.pid)
        assert len(niceness) > 2  # the HTTP thread and the workers too
        assert set(niceness.values()) == {expected}
        log = [json.loads(x) for x in (state / "triggers" / "server.log").read_text().splitlines()]
        assert [e.get("nice") for e in log if e["event"] == "nice"] == ([expected] if expected else [])
        wait_for(lambda: run_finished(state, resp.json()["incident_id"]), what="the run")
    finally:
        srv.stop()
