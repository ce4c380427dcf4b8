"""``serve`` guards every incident whose containment is active (issue 16).

Everything runs inside the test's network namespace: the ``ipv6.strip``
playbooks target veth ends the test creates there, and ``serve`` runs in the
same namespace (``ip netns exec``), as it must to see their netlink events.
State is read with ``ip -j`` and the journal files; the webhook, ``/metrics``
and the drift notification receiver all live on the namespace's loopback.
"""

from __future__ import annotations

import http.server
import json
import signal
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests import netlab
from tests.conftest import read_line, run_cli, run_finished, wait_for
from tests.netlab import ipn
from tests.nsclient import in_netns
from tests.test_serve import TOKEN, Server

pytestmark = pytest.mark.netns



def write_config(tmp_path: Path, state: Path, *, guard: str = "", routes: str = "") -> Path:
    token = tmp_path / "webhook.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = tmp_path / "lockdown.toml"
    config.write_text(
        f'state_dir = "{state}"\n[server]\nlisten = "127.0.0.1:0"\ntoken_file = "webhook.token"\n'
        f"{routes}\n[guard]\ntimer = 2\n{guard}\n"
    )
    return config


def startup_lines(srv: Server) -> list[str]:
    """The lines after ``listening``: the routes, then whether serve guards."""
    return [read_line(srv.proc).rstrip("\n") for _ in range(2)]  # type: ignore[arg-type]


def log(state: Path) -> list[dict[str, Any]]:
    path = state / "triggers" / "server.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def logged(state: Path, event: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in log(state) if e["event"] == event and all(e.get(k) == v for k, v in match.items())]


def run_strip(netns: str, state: Path, tmp_path: Path, dev: str) -> str:
    """Contain ``dev`` with the CLI (not serve): the incident serve must pick up by itself."""
    return str(netlab.run_strip(netns, state, tmp_path, dev, name=f"strip-{dev}")["incident_id"])


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.communicate()


def test_serve_guards_an_incident_it_did_not_start_and_again_after_sigkill(
    netns: str, tmp_path: Path, state_dir: Path, servers: list[Server]
) -> None:
    a0, a1 = netlab.veth_with_v6(netns)
    incident = run_strip(netns, state_dir, tmp_path, a0)
    assert netlab.global_addresses(netns, a0) == []
    config = write_config(tmp_path, state_dir)

    srv = Server(config, state_dir, netns).start()
    servers.append(srv)
    assert startup_lines(srv)[-1] == "lockdown: guarding every incident whose containment is active (timer 2 s)"
    wait_for(lambda: logged(state_dir, "guard-compared", incident_id=incident, source="net"), what="the comparison")
    assert logged(state_dir, "guard-guarding", incident_id=incident)[0]["what"] == f"ipv6.strip on {a0}"

    ipn(netns, "addr", "add", "2001:db8:5::1/64", "dev", a1, "nodad")  # not targeted: left alone
    ipn(netns, "addr", "add", "2001:db8:5::1/64", "dev", a0, "nodad")
    wait_for(lambda: netlab.global_addresses(netns, a0) == [], what="the address to be removed")
    (entry,) = wait_for(lambda: netlab.drifts(state_dir, incident), what="the drift entry")
    assert (entry["kind"], entry["step"], entry["target"]) == ("address", "strip", a0)
    assert entry["did"] == f"removed 2001:db8:5::1/64 from {a0}"
    assert netlab.global_addresses(netns, a1) == ["2001:db8:5::1/64"]
    (line,) = logged(state_dir, "guard-drift", incident_id=incident)
    assert line["changed"] == f"2001:db8:5::1/64 (nodad) appeared on {a0}"

    text = wait_for(
        lambda: (t := srv.request("GET", "/metrics").body.decode()) and 'kind="address"} 1' in t and t,
        what="the drift counter",
    )
    assert "# TYPE lockdown_drift_total counter" in text
    assert 'lockdown_drift_total{kind="address"} 1\n' in text
    assert 'lockdown_drift_total{kind="container"} 0\n' in text
    assert 'lockdown_drift_total{kind="sysctl"} 0\n' in text

    # SIGKILL: nothing is shut down cleanly; the next serve picks the incident up from the state dir.
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.communicate()
    starts = len(logged(state_dir, "guard-start"))
    second = Server(config, state_dir, netns).start()
    servers.append(second)
    wait_for(lambda: len(logged(state_dir, "guard-start")) == starts + 1, what="the second guard")
    wait_for(
        lambda: len(logged(state_dir, "guard-compared", incident_id=incident, source="net")) == 2,
        what="the second comparison",
    )
    ipn(netns, "addr", "add", "2001:db8:6::1/64", "dev", a0, "nodad")
    wait_for(lambda: len(netlab.drifts(state_dir, incident)) == 2, what="the second drift")
    assert netlab.global_addresses(netns, a0) == []
    assert netlab.drifts(state_dir, incident)[1]["did"] == f"removed 2001:db8:6::1/64 from {a0}"
    wait_for(
        lambda: 'lockdown_drift_total{kind="address"} 2\n' in second.request("GET", "/metrics").body.decode(),
        what="the counter after the restart",
    )

    # Restore: the guard lets go, and the state is the one before the run.
    restored = run_cli("restore", incident, netns=netns, state_dir=state_dir)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert netlab.global_addresses(netns, a0) == ["2001:db8:1::1/64"]
    ipn(netns, "addr", "add", "2001:db8:7::1/64", "dev", a0, "nodad")
    wait_for(lambda: logged(state_dir, "guard-released", incident_id=incident), timeout=10, what="the release")
    assert sorted(netlab.global_addresses(netns, a0)) == ["2001:db8:1::1/64", "2001:db8:7::1/64"]
    assert len(netlab.drifts(state_dir, incident)) == 2
    code, err = second.stop()
    assert code == 0, err


def test_serve_guards_the_incident_its_own_run_contained(
    netns: str, tmp_path: Path, state_dir: Path, servers: list[Server]
) -> None:
    a0, _a1 = netlab.veth_with_v6(netns)
    pb = netlab.playbook(tmp_path, netlab.STRIP.format(dev=a0), name="strip")
    routes = f'[[routes]]\nalert = "MailRelaySurge"\nplaybook = "{pb}"\n'
    # A timer longer than the test: only the dispatcher's word makes the guard pick it up.
    config = write_config(tmp_path, state_dir, routes=routes).read_text().replace("timer = 2", "timer = 600")
    (tmp_path / "lockdown.toml").write_text(config)
    srv = Server(tmp_path / "lockdown.toml", state_dir, netns).start()
    servers.append(srv)
    wait_for(lambda: logged(state_dir, "guard-start"), what="the guard")

    resp = srv.post("/v1/alerts/generic", {"alert": "MailRelaySurge"})
    assert resp.status == 202, resp.body
    incident = resp.json()["incident_id"]
    wait_for(lambda: run_finished(state_dir, incident), what="the run")
    wait_for(lambda: logged(state_dir, "guard-compared", incident_id=incident, source="net"), what="pick-up")
    ipn(netns, "addr", "add", "2001:db8:5::1/64", "dev", a0, "nodad")
    wait_for(lambda: netlab.drifts(state_dir, incident), what="the drift")
    assert netlab.global_addresses(netns, a0) == []
    assert run_cli("restore", incident, netns=netns, state_dir=state_dir).returncode == 0
    code, err = srv.stop()
    assert code == 0, err


def test_guard_off_in_the_config_leaves_drift_alone(
    netns: str, tmp_path: Path, state_dir: Path, servers: list[Server]
) -> None:
    a0, _a1 = netlab.veth_with_v6(netns)
    incident = run_strip(netns, state_dir, tmp_path, a0)
    srv = Server(write_config(tmp_path, state_dir, guard="enabled = false"), state_dir, netns).start()
    servers.append(srv)
    off = "lockdown: guard off (guard.enabled = false): undone containment is not re-asserted"
    assert startup_lines(srv)[-1] == off
    ipn(netns, "addr", "add", "2001:db8:5::1/64", "dev", a0, "nodad")
    srv.request("GET", "/healthz")
    assert not wait_for_or_none(lambda: netlab.global_addresses(netns, a0) == [], 3.0)
    assert netlab.drifts(state_dir, incident) == [] and logged(state_dir, "guard-start") == []
    assert run_cli("restore", incident, netns=netns, state_dir=state_dir).returncode == 0
    srv.stop()


def wait_for_or_none(predicate: Any, timeout: float) -> Any:
    try:
        return wait_for(predicate, timeout=timeout)
    except AssertionError:
        return None


def test_bad_guard_config_is_refused_with_one_message(tmp_path: Path, state_dir: Path) -> None:
    config = write_config(tmp_path, state_dir, guard='notify_url = "file:///etc/passwd"')
    r = run_cli("serve", "--config", str(config))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"lockdown: error: {config}: guard.notify_url: expected an http:// or https:// URL with a host, "
        "got 'file:///etc/passwd'"
    )
    config = write_config(tmp_path, state_dir, guard='enabled = "no"')
    r = run_cli("serve", "--config", str(config))
    assert r.returncode == 2
    assert r.stderr.strip() == f"lockdown: error: {config}: guard.enabled: expected true or false, got 'no'"


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append({"type": self.headers["Content-Type"], "doc": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_drift_is_notified_and_in_the_verified_bundle_timeline(
    netns: str, tmp_path: Path, state_dir: Path, servers: list[Server]
) -> None:
    a0, _a1 = netlab.veth_with_v6(netns)
    incident = run_strip(netns, state_dir, tmp_path, a0)
    with in_netns(netns):  # the receiver listens on the namespace's loopback, where serve is
        receiver = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.got = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        srv = Server(write_config(tmp_path, state_dir, guard=f'notify_url = "{url}"'), state_dir, netns).start()
        servers.append(srv)
        wait_for(lambda: logged(state_dir, "guard-compared", incident_id=incident, source="net"), what="compare")
        ipn(netns, "addr", "add", "2001:db8:5::1/64", "dev", a0, "nodad")
        (note,) = wait_for(lambda: _Receiver.got, what="the notification")
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert note["type"] == "application/json"
    (entry,) = netlab.drifts(state_dir, incident)
    doc = note["doc"]
    assert (doc["event"], doc["incident_id"], doc["kind"], doc["target"]) == ("drift", incident, "address", a0)
    assert doc["did"] == entry["did"] == f"removed 2001:db8:5::1/64 from {a0}"
    srv.stop()

    bundle = tmp_path / "bundle.tar.gz"
    r = run_cli("export", incident, "-o", str(bundle), state_dir=state_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("verify", str(bundle))
    assert r.returncode == 0, r.stdout + r.stderr
    with tarfile.open(bundle) as tar:
        member = tar.extractfile(f"{incident}/case.json")
        assert member is not None
        case = json.load(member)
    assert case["timeline"]["drift"] == {
        "count": 1,
        "entries": [{
            "time": entry["time"], "event_time": entry["event_time"], "step": "strip", "action": "ipv6.strip",
            "kind": "address", "target": a0, "changed": f"2001:db8:5::1/64 (nodad) appeared on {a0}",
            "did": f"removed 2001:db8:5::1/64 from {a0}", "latency_ms": entry["latency_ms"],
        }],
    }
    assert run_cli("restore", incident, netns=netns, state_dir=state_dir).returncode == 0
