"""A real Alertmanager (Debian's ``prometheus-alertmanager``) sends ``lockdown serve`` its webhook.

Both run in the test's own network namespace, on loopback. The alert is posted
to Alertmanager's API v2 with a nanosecond ``startsAt``; Alertmanager's
webhook carries it like that, while ``GET /api/v2/alerts`` gives it back at
millisecond precision. A relay that rebuilds the alert from the API (or
Alertmanager itself after a restart) must not start a second incident, before
or after a restart of serve (issue 14, item 6).
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lockdown.record.incident import list_incident_ids
from tests.conftest import unavailable, wait_for
from tests.nsclient import in_netns
from tests.test_serve import TOKEN, Server
from tests.test_serve_hostile import idle, quick_config, server_log

pytestmark = pytest.mark.netns

ALERTMANAGER = "prometheus-alertmanager"
NS_STARTS_AT = "2026-11-30T19:52:14.180831842Z"


def free_port(netns: str) -> int:
    with in_netns(netns):
        sock = socket.socket()
    with sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def am_call(netns: str, port: int, method: str, path: str, doc: Any = None) -> Any:
    """One request to Alertmanager's API, from inside the namespace."""
    with in_netns(netns):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.sock = sock
    try:
        body = json.dumps(doc).encode() if doc is not None else None
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status < 300, (resp.status, data)
        return json.loads(data) if resp.getheader("Content-Type", "").startswith("application/json") else data
    finally:
        conn.close()


@pytest.fixture
def alertmanager_bin() -> str:
    path = shutil.which(ALERTMANAGER)
    if path is None:
        unavailable(f"{ALERTMANAGER} is not installed (scripts/install-deps)")
    return str(path)


def start_alertmanager(binary: str, tmp_path: Path, netns: str, serve_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port(netns)
    (tmp_path / "am-token").write_text(TOKEN)
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        f"""
route:
  receiver: lockdown
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1m
  repeat_interval: 4h
receivers:
  - name: lockdown
    webhook_configs:
      - url: http://127.0.0.1:{serve_port}/v1/alerts/alertmanager
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: {tmp_path / "am-token"}
"""
    )
    (tmp_path / "am-data").mkdir()
    proc = subprocess.Popen(
        [
            "ip", "netns", "exec", netns, binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "alertmanager.log", "wb"),  # noqa: SIM115 - the child owns it
    )  # fmt: skip
    try:
        wait_for(lambda: _ready(netns, port), timeout=30, what="Alertmanager to be ready")
    except AssertionError:
        proc.kill()
        raise AssertionError((tmp_path / "alertmanager.log").read_text()) from None
    return proc, port


def _ready(netns: str, port: int) -> bool:
    try:
        am_call(netns, port, "GET", "/-/ready")
    except (OSError, AssertionError, ValueError):
        return False
    return True


def test_the_same_alert_from_the_webhook_and_from_api_v2_is_one_incident(
    alertmanager_bin: str, tmp_path: Path, netns: str
) -> None:
    config, state = quick_config(tmp_path)
    srv = Server(config, state, netns).start()
    am: subprocess.Popen[bytes] | None = None
    try:
        am, am_port = start_alertmanager(alertmanager_bin, tmp_path, netns, srv.port)
        labels = {"alertname": "QuickAlert", "instance": "mail:9154", "severity": "critical"}
        am_call(netns, am_port, "POST", "/api/v2/alerts", [{"labels": labels, "startsAt": NS_STARTS_AT}])
        incident_id = wait_for(lambda: (ids := list_incident_ids(state)) and ids[0], what="Alertmanager's webhook")
        idle(srv)
        webhook = wait_for(lambda: next((x for x in server_log(srv) if x.get("result") == "started"), None),
                           what="the webhook's trigger line in server.log")  # fmt: skip
        assert webhook["startsAt"] == NS_STARTS_AT  # the webhook carries nanoseconds
        (alert,) = am_call(netns, am_port, "GET", "/api/v2/alerts")
        assert alert["startsAt"] == "2026-11-30T19:52:14.180Z"  # the API gives milliseconds
        rebuilt = {
            "version": "4",
            "status": "firing",
            "receiver": "lockdown",
            "alerts": [
                {
                    "status": "firing",
                    "labels": alert["labels"],
                    "annotations": alert["annotations"],
                    "startsAt": alert["startsAt"],
                    "endsAt": alert["endsAt"],
                    "fingerprint": alert["fingerprint"],
                }
            ],
        }
        resp = srv.post("/v1/alerts/alertmanager", rebuilt)
        assert (resp.status, resp.json()["result"], resp.json()["incident_id"]) == (200, "duplicate", incident_id)
        assert resp.json()["alerts"][0]["reason"] == "same fingerprint and startsAt"
    finally:
        srv.stop()
        if am is not None:
            am.terminate()
            am.wait(30)
    again = Server(config, state, netns).start()
    try:
        resp = again.post("/v1/alerts/alertmanager", rebuilt)
        assert (resp.status, resp.json()["result"], resp.json()["incident_id"]) == (200, "duplicate", incident_id)
    finally:
        again.stop()
    assert list_incident_ids(state) == [incident_id]
