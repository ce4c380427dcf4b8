"""``lockdown serve`` against hostile input (issue 13): each test attacks a real serve on loopback.

Every test here failed before its fix: a request that got no answer, a
route that stopped answering, a flood that starved /healthz, a secret file
anyone could have written. Each one asserts that serve still answers, that
no incident directory is left by an alert that could not be handled, and,
where a body is large, that serve's peak RSS stays bounded.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockdown.jsonsafe import MAX_DEPTH
from lockdown.record.incident import list_incident_ids, read_incident
from lockdown.triggers.dedup import LOG_MAX_BYTES, instant
from lockdown.triggers.server import WEBHOOK_MAX_DEPTH
from tests.conftest import run_cli, run_finished, wait_for
from tests.nsclient import SlowClients, ns_connect
from tests.test_serve import TOKEN, Response, Server, am_payload, write_config

pytestmark = pytest.mark.netns

#: A playbook that leaves no containment: once its run ends, only dedup keys decide repeats.
QUICK_PLAYBOOK = """
name = "quick-test"
[[steps]]
id = "pause"
action = "wait"
seconds = 0.05
"""

ROUTES = """
[[routes]]
alert = "MailRelaySurge"
playbook = "relay.toml"
vars = { value = "1" }
[[routes]]
alert = "QuickAlert"
playbook = "quick.toml"
"""


def quick_config(tmp_path: Path, extra_server: str = "") -> tuple[Path, Path]:
    (tmp_path / "quick.toml").write_text(QUICK_PLAYBOOK)
    return write_config(tmp_path, extra_server=extra_server, routes=ROUTES)


@pytest.fixture
def quick(tmp_path: Path, netns: str) -> Iterator[Server]:
    config, state = quick_config(tmp_path)
    srv = Server(config, state, netns).start()
    yield srv
    srv.stop()


def nested(depth: int) -> str:
    """A generic alert whose ``detail`` makes the whole body ``depth`` levels deep."""
    return '{"alert": "QuickAlert", "detail": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def raw_request(srv: Server, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read the whole answer (serve closes after one)."""
    sock = srv.connect(timeout)
    try:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def status_and_doc(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 "), answer[:200]
    return int(head.split(b" ", 2)[1]), json.loads(body)


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of ``pid``, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def serve_pid(srv: Server) -> int:
    assert srv.proc is not None
    cmdline = Path(f"/proc/{srv.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"lockdown" in cmdline and b"serve" in cmdline, cmdline  # ip netns exec execs, it does not fork
    return srv.proc.pid


def server_log(srv: Server) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (srv.state / "triggers" / "server.log").read_text().splitlines()]


def idle(srv: Server) -> None:
    """Wait until no run is in progress (its journal ended and it let go of the state-dir lock)."""
    wait_for(lambda: srv.request("GET", "/healthz").json()["runs_in_progress"] == 0, what="the run to end")


def generic(srv: Server, doc: Any) -> Response:
    return srv.post("/v1/alerts/generic", doc)


# ---------------------------------------------------------------- 1: deep nesting, a damaged last incident


def test_deep_bodies_are_refused_400_and_leave_no_incident(quick: Server) -> None:
    too_deep = f"JSON body: nested deeper than {WEBHOOK_MAX_DEPTH} levels"
    for depth in (WEBHOOK_MAX_DEPTH + 1, MAX_DEPTH + 1, 974, 5000):
        resp = quick.request("POST", "/v1/alerts/generic", nested(depth).encode(), {"Authorization": f"Bearer {TOKEN}"})
        assert (resp.status, resp.json()) == (400, {"error": too_deep}), depth
    assert list_incident_ids(quick.state) == []
    # as deep as allowed: accepted, and lockdown's own records of it (payload wrapped inside) read back
    resp = quick.request(
        "POST", "/v1/alerts/generic", nested(WEBHOOK_MAX_DEPTH).encode(), {"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status == 202, resp.body
    incident_id = resp.json()["incident_id"]
    wait_for(lambda: run_finished(quick.state, incident_id), what="the run")
    status = run_cli("status", incident_id, state_dir=quick.state)
    assert status.returncode == 0, status.stderr
    assert "journal: intact" in status.stdout


DAMAGE = {
    "incident.json truncated": ("incident.json", b'{"incident_id": "x", "trig'),
    "incident.json a list": ("incident.json", b"[]"),
    "incident.json nested 974 deep": ("incident.json", b"[" * 974 + b"]" * 974),
    "journal line nested 974 deep": ("journal.jsonl", b'{"seq": 1, "x": ' + b"[" * 974 + b"]" * 974 + b"}\n"),
}


def test_a_damaged_last_incident_never_stops_its_route(tmp_path: Path, netns: str) -> None:
    """The route's last incident is damaged in four ways; each time the next alert is answered
    (a new incident: a damaged incident proves nothing about containment), the damage is logged,
    and that holds across a restart of serve."""
    config, state = quick_config(tmp_path)
    srv = Server(config, state, netns).start()
    try:
        damaged: set[str] = set()
        for n, (what, (name, data)) in enumerate(DAMAGE.items()):
            resp = generic(srv, {"alert": "QuickAlert", "fingerprint": f"fp-{n}"})
            assert resp.status == 202, (what, resp.body)
            first = resp.json()["incident_id"]
            idle(srv)
            (state / "incidents" / first / name).write_bytes(data)
            damaged.add(first)
            seen = len([x for x in server_log(srv) if x["event"] == "incident-unreadable"])
            again = generic(srv, {"alert": "QuickAlert", "fingerprint": f"fp-{n}-next"})
            assert again.status == 202, (what, again.body)
            new = again.json()["incident_id"]
            assert new not in damaged
            idle(srv)
            unreadable = [x for x in server_log(srv) if x["event"] == "incident-unreadable"]
            # logged when the reader gave up on it (a 974-deep incident.json may still read as "not active")
            assert {x["incident_id"] for x in unreadable[seen:]} <= damaged, what
            assert {x["decision"] for x in unreadable} == {"not a duplicate"}
            if n == 0:  # the route's only incident was the damaged one: it was read, given up on, logged
                assert [x["incident_id"] for x in unreadable] == [first]
            (state / "incidents" / new / name).write_bytes(data)  # whichever sorts last, it is damaged
            damaged.add(new)
        assert srv.request("GET", "/healthz").status == 200
    finally:
        srv.stop()
    # a restart reads the same record back: the damaged last incident must not stop it either
    again_srv = Server(config, state, netns).start()
    try:
        resp = generic(again_srv, {"alert": "QuickAlert", "fingerprint": "after-restart"})
        assert resp.status == 202, resp.body
        wait_for(lambda: run_finished(state, resp.json()["incident_id"]), what="the run")
        assert read_incident(state, resp.json()["incident_id"]).run_status == "contained"
    finally:
        again_srv.stop()


# ---------------------------------------------------------------- 9: malformed requests always get 400


MALFORMED = {
    "Content-Length: superscript two": (
        b"POST /v1/alerts/generic HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n{}",
        400,
        "invalid Content-Length",
    ),
    "two Content-Lengths": (
        b"POST /v1/alerts/generic HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
        "invalid Content-Length",
    ),
    "negative Content-Length": (
        b"POST /v1/alerts/generic HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        400,
        "invalid Content-Length",
    ),
    "no Content-Length": (b"POST /v1/alerts/generic HTTP/1.1\r\n\r\n", 411, "Content-Length required"),
    "request line of one word": (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
    "HTTP/2 request line": (b"GET /healthz HTTP/2.0\r\n\r\n", 400, "malformed request line"),
    "header without a colon": (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header line"),
    "request line of 70000 bytes": (
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        414,
        "request line too long: the limit is 65536 bytes",
    ),
    "101 headers": (
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
        431,
        "request header fields too large: at most 100 lines and 65536 bytes",
    ),
    "a header of 70000 bytes": (
        b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n",
        431,
        "request header fields too large: at most 100 lines and 65536 bytes",
    ),
    "path traversal to an endpoint": (
        b"POST /v1/alerts/../alerts/generic HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        404,
        "not found",
    ),
    "path traversal out of the root": (b"GET /../../../etc/passwd HTTP/1.1\r\n\r\n", 404, "not found"),
}


def test_malformed_requests_are_always_answered(quick: Server) -> None:
    for what, (data, code, message) in MALFORMED.items():
        assert status_and_doc(raw_request(quick, data)) == (code, {"error": message}), what
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for what, body, message in (
        ("5000-digit integer", b'{"alert": "QuickAlert", "n": ' + b"9" * 5000 + b"}", "JSON body: not valid JSON"),
        ("deeper than the parser", b"[" * 100_000, f"JSON body: nested deeper than {WEBHOOK_MAX_DEPTH} levels"),
        ("UTF-16", '{"alert": "QuickAlert"}'.encode("utf-16"), "JSON body: not UTF-8"),
        ("a lone surrogate", b'{"alert": "\\ud800"}', None),
    ):
        resp = quick.request("POST", "/v1/alerts/generic", body, auth)
        if message is None:  # valid JSON; the name is an unrouted string: ignored, not an error
            assert resp.status == 200, (what, resp.body)
            continue
        assert resp.status == 400, (what, resp.body)
        assert resp.json()["error"].startswith(message), (what, resp.json())
    assert list_incident_ids(quick.state) == []
    assert quick.request("GET", "/healthz").status == 200


# ---------------------------------------------------------------- 7: alerts per request, memory, the log


def test_too_many_alerts_is_413_memory_stays_bounded_and_the_rotated_log_is_kept(quick: Server) -> None:
    pid = serve_pid(quick)
    log = quick.state / "triggers" / "server.log"
    marker = json.dumps({"event": "marker", "time": "then"}) + "\n"
    with open(log, "a") as fh:  # a log just past the rotation size, that starts with a known line
        fh.write(marker)
        fh.write(("x" * 1023 + "\n") * (LOG_MAX_BYTES // 1024 + 1))
    body = json.dumps({"version": "4", "alerts": [{}] * 349_512}, separators=(",", ":")).encode()
    assert len(body) <= 1024 * 1024
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answers: list[Response] = []
    threads = [
        threading.Thread(target=lambda: answers.append(quick.request("POST", "/v1/alerts/alertmanager", body, auth)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expected = {"error": "too many alerts: 349512 in one request; the limit is 1000 (server.max_alerts)"}
    assert [(a.status, a.json()) for a in answers] == [(413, expected)] * 8
    assert peak_rss_mib(pid) < 150, f"serve peaked at {peak_rss_mib(pid):.0f} MiB"
    # the most one request can log is max_alerts lines: the log rotates at most once, the old part is kept
    most = {"version": "4", "alerts": [{"labels": {"alertname": f"Unrouted{i}"}} for i in range(1000)]}
    resp = quick.post("/v1/alerts/alertmanager", most)
    assert (resp.status, resp.json()["result"], len(resp.json()["alerts"])) == (200, "ignored", 1000)
    rotated = quick.state / "triggers" / "server.log.1"
    assert marker in rotated.read_text()
    assert len([x for x in server_log(quick) if x.get("result") == "ignored"]) == 1000
    assert list_incident_ids(quick.state) == []


# ---------------------------------------------------------------- 2: slow clients


def test_forty_slow_clients_do_not_starve_healthz_or_alerts(tmp_path: Path, netns: str) -> None:
    """The defaults (8 workers, 32 queued) with the attack's 40 slow clients: every /healthz answers
    within 1 s and an authenticated alert starts its run, all along the flood."""
    config, state = quick_config(tmp_path)
    config.write_text(config.read_text().replace("request_timeout = 2\n", "request_timeout = 4\n"))
    srv = Server(config, state, netns).start()
    try:
        with SlowClients(lambda: ns_connect(srv.netns, srv.port, timeout=5)) as flood:
            time.sleep(1.0)
            worst = 0.0
            end = time.monotonic() + 12  # three cut-offs of every slow client (request_timeout = 4)
            n = 0
            while time.monotonic() < end:
                t0 = time.monotonic()
                resp = srv.request("GET", "/healthz", timeout=5)
                worst = max(worst, time.monotonic() - t0)
                assert resp.status == 200, resp.body
                n += 1
                time.sleep(0.2)
            t0 = time.monotonic()
            alert = generic(srv, {"alert": "QuickAlert", "fingerprint": "under-flood"})
            seconds = time.monotonic() - t0
            assert alert.status == 202, alert.body
            wait_for(lambda: run_finished(state, alert.json()["incident_id"]), what="the run")
            assert flood.reconnects >= 40, "the slow clients were never cut off"
        assert worst < 1.0, f"/healthz took {worst:.2f} s under the flood"
        assert seconds < 1.0, f"the alert took {seconds:.2f} s under the flood"
        assert n > 30
    finally:
        srv.stop()


def test_connections_beyond_max_connections_get_503_at_once(tmp_path: Path, netns: str) -> None:
    config, state = quick_config(tmp_path, extra_server="max_connections = 5")
    srv = Server(config, state, netns).start()
    try:
        hogs = []
        for _ in range(5):
            sock = srv.connect()
            sock.sendall(b"GET /heal")
            hogs.append(sock)
        time.sleep(0.3)
        answer = raw_request(srv, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert status_and_doc(answer) == (503, {"error": "server busy: too many connections; retry later"})
        assert b"\r\nRetry-After: 5\r\n" in answer
        for sock in hogs:
            sock.close()
        wait_for(lambda: srv.request("GET", "/healthz").status == 200, what="a free connection slot")
    finally:
        srv.stop()


def test_slow_uploads_cannot_pile_up_body_memory(quick: Server) -> None:
    """32 clients announce a 1 MiB body and send it slowly: that is the 32 MiB budget; the next
    upload gets 503 at once, /healthz still answers, and a small alert still goes through later."""
    head = b"POST /v1/alerts/generic HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n"
    uploads = []
    for _ in range(32):
        sock = quick.connect()
        sock.sendall(head + b"x" * 1000)
        uploads.append(sock)
    time.sleep(0.3)
    try:
        answer = raw_request(quick, head + b"x" * 1000)
        assert status_and_doc(answer) == (503, {"error": "server busy: too many request bodies in flight; retry later"})
        assert quick.request("GET", "/healthz", timeout=1).status == 200
    finally:
        for sock in uploads:
            sock.close()
    wait_for(lambda: generic(quick, {"alert": "Unrouted"}).status == 200, what="the budget to be given back")


def test_every_credential_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: the token and the signature are compared only through hmac.compare_digest
    (a timing measurement over loopback would be too noisy to fail reliably)."""
    import hashlib
    import hmac

    from lockdown.triggers import server as server_mod
    from lockdown.triggers.config import ServerConfig

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server_mod.hmac, "compare_digest", recording)
    auth = server_mod.Authenticator(ServerConfig(token=b"right-token-16-bytes", hmac_secret=b"s" * 16))
    headers = server_mod.Headers()
    headers.add("Authorization", "Bearer wrong-token")
    assert not auth.check(headers, b"{}").ok
    assert compared == [(b"wrong-token", b"right-token-16-bytes")]
    compared.clear()
    stamp = str(int(time.time()))
    good = hmac.new(b"s" * 16, stamp.encode() + b":{}", hashlib.sha256).hexdigest()
    headers = server_mod.Headers()
    headers.add("X-Grafana-Alerting-Signature", good)
    headers.add("X-Grafana-Alerting-Signature-Timestamp", stamp)
    assert auth.check(headers, b"{}").ok
    assert compared == [(good.encode(), good.encode())]
    assert auth.check(headers, b"{}") == server_mod.AuthCheck(False, "replayed signature")


# ---------------------------------------------------------------- 14: fingerprints


def test_generic_alerts_without_fingerprint_dedupe_on_identity_for_the_window(tmp_path: Path, netns: str) -> None:
    config, state = quick_config(tmp_path, extra_server="generic_dedup_window = 3")
    srv = Server(config, state, netns).start()
    try:
        first = generic(srv, {"alert": "QuickAlert", "detail": "queue over 5000"})
        assert first.status == 202, first.body
        incident_id = first.json()["incident_id"]
        wait_for(lambda: run_finished(state, incident_id), what="the run")
        assert not read_incident(state, incident_id).containment_active  # only the identity dedups now
        repeat = generic(srv, {"alert": "QuickAlert", "detail": "queue over 5000", "startsAt": "2026-11-30T20:00:00Z"})
        assert (repeat.status, repeat.json()["result"], repeat.json()["incident_id"]) == (200, "duplicate", incident_id)
        assert repeat.json()["alerts"][0]["reason"] == (
            "the same alert (no fingerprint: same identity) within the dedup window"
        )
        other = generic(srv, {"alert": "QuickAlert", "detail": "another problem"})
        assert other.status == 202, other.body
        wait_for(lambda: run_finished(state, other.json()["incident_id"]), what="the run")
    finally:
        srv.stop()
    again = Server(config, state, netns).start()  # the window survives a restart
    try:
        repeat = generic(again, {"alert": "QuickAlert", "detail": "queue over 5000"})
        assert (repeat.status, repeat.json()["incident_id"]) == (200, incident_id)
        wait_for(
            lambda: generic(again, {"alert": "QuickAlert", "detail": "queue over 5000"}).status == 202,
            timeout=10,
            what="the window to end",
        )
    finally:
        again.stop()
    assert len(list_incident_ids(state)) == 3


def test_starts_at_is_compared_as_an_instant_across_a_restart(tmp_path: Path, netns: str) -> None:
    config, state = quick_config(tmp_path)
    srv = Server(config, state, netns).start()
    try:
        ns = am_payload("QuickAlert", fingerprint="inst", starts="2026-11-30T19:52:14.180831842Z")
        resp = srv.post("/v1/alerts/alertmanager", ns)
        assert resp.status == 202, resp.body
        incident_id = resp.json()["incident_id"]
        wait_for(lambda: run_finished(state, incident_id), what="the run")
    finally:
        srv.stop()
    again = Server(config, state, netns).start()
    try:
        for same in ("2026-11-30T19:52:14.180Z", "2026-11-30T20:52:14.180+01:00", "2026-11-30T19:52:14.1809Z"):
            resp = again.post("/v1/alerts/alertmanager", am_payload("QuickAlert", fingerprint="inst", starts=same))
            assert (resp.status, resp.json()["result"], resp.json()["incident_id"]) == (200, "duplicate", incident_id)
        later = am_payload("QuickAlert", fingerprint="inst", starts="2026-11-30T19:52:14.181Z")
        resp = again.post("/v1/alerts/alertmanager", later)
        assert resp.status == 202, resp.body  # one millisecond later is another occurrence
        wait_for(lambda: run_finished(state, resp.json()["incident_id"]), what="the run")
    finally:
        again.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-30T19:52:14.180831842Z", "2026-11-30T19:52:14.180Z"),
        ("2026-11-30T19:52:14.180Z", "2026-11-30T19:52:14.180Z"),
        ("2026-11-30T19:52:14Z", "2026-11-30T19:52:14.000Z"),
        ("2026-11-30T21:52:14.18+02:00", "2026-11-30T19:52:14.180Z"),
        ("2026-12-01T00:30:00-05:00", "2026-12-01T05:30:00.000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("not a time", "not a time"),
        ("2026-13-40T99:99:99Z", "2026-13-40T99:99:99Z"),
        (None, ""),
    ],
)
def test_instant(text: str | None, expected: str) -> None:
    assert instant(text) == expected


# ---------------------------------------------------------------- 13: start-up checks


def serve_refuses(config: Path) -> tuple[int, str]:
    result = run_cli("serve", "--config", str(config), timeout=30)
    return result.returncode, result.stderr


def test_start_up_refuses_weak_or_foreign_secrets_and_an_open_listen(tmp_path: Path, netns: str) -> None:
    config, state = quick_config(tmp_path)
    token = tmp_path / "webhook.token"
    text = config.read_text()

    token.write_text("fifteen-bytes!!\n")
    assert serve_refuses(config) == (
        2,
        f"lockdown: error: {config}: server.token_file: {token} holds 15 bytes; a secret needs at least 16\n"
        f"  -> make a new one: head -c 32 /dev/urandom | base64 > {token}\n",
    )
    token.write_text(TOKEN + "\n")
    token.chmod(0o620)
    code, err = serve_refuses(config)
    assert (code, err.splitlines()[0]) == (
        2,
        f"lockdown: error: {config}: server.token_file: {token} is writable by group or others (mode 0620)",
    )
    token.chmod(0o600)
    os.chown(token, 65534, 65534)
    code, err = serve_refuses(config)
    assert (code, err.splitlines()[0]) == (
        2,
        f"lockdown: error: {config}: server.token_file: {token} is owned by uid 65534, "
        f"not by the user serve runs as (uid {os.geteuid()})",
    )
    os.chown(token, os.geteuid(), os.getegid())
    real = tmp_path / "real.token"
    token.rename(real)
    token.symlink_to(real)
    code, err = serve_refuses(config)
    assert (code, err.splitlines()[0]) == (
        2,
        f"lockdown: error: {config}: server.token_file: {token} is a symbolic link; refusing to follow it",
    )
    token.unlink()
    real.rename(token)
    for listen in ("0.0.0.0:0", "[::]:0", "192.0.2.1:9595"):
        config.write_text(text.replace('listen = "127.0.0.1:0"', f'listen = "{listen}"'))
        code, err = serve_refuses(config)
        assert (code, err.splitlines()[0]) == (
            2,
            f"lockdown: error: {config}: server.listen: {listen} is reachable from other hosts and serve "
            "speaks plain HTTP (tokens and alerts would cross the network in clear text)",
        ), listen
    assert not (state / "incidents").exists()
    # asked for explicitly: it listens (inside the test's own network namespace)
    config.write_text(text.replace('listen = "127.0.0.1:0"', 'listen = "0.0.0.0:0"\nallow_insecure_listen = true'))
    srv = Server(config, state, netns).start()
    try:
        assert srv.request("GET", "/healthz").status == 200
    finally:
        srv.stop()
