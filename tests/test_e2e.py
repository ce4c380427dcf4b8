"""The main job end to end (issue 7), with real parts only.

A lab of its own (scripts/lab with a unique prefix, port and 2001:db8 prefix)
reproduces the postmortem's open relay. ``lockdown serve`` receives an
Alertmanager alert and runs the shipped ``relay-incident`` playbook against the
lab's container and host-side interface. The test then checks from outside
lockdown: the relay attempt fails, the container is paused, the bundle verifies
and holds the relayed message's log lines, the held spam and the snapshots;
``restore --release-queue`` gives back the interface's addresses, routes and
sysctls and the container's State exactly, and the relay is open again. A
second pass SIGKILLs ``lockdown run`` mid-run and restores from the journal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, docker_bridge, ip_json, run_finished, sh, wait_for
from tests.test_lab import Lab, host_snapshot, queue_id, require_lab_facilities
from tests.test_serve import am_payload

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

ALERT = "MailRelaySurge"
TOKEN = "e2e-token-0123456789abcdef"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab_facilities()
    lab = Lab(tmp_path_factory.mktemp("e2e-lab"))
    lab.before = host_snapshot()
    try:
        up = lab.run("up", timeout=300)
        assert up.returncode == 0, up.stderr
        yield lab
    finally:
        lab.teardown()
        assert lab.leftovers() == []


def _demo_state() -> Any:
    """scripts/demo-state.py, the demo's proof helper: the test checks with the same code the demo shows."""
    spec = importlib.util.spec_from_file_location("demo_state", REPO / "scripts" / "demo-state.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo_state = _demo_state()


def lab_state(lab: Lab) -> dict[str, Any]:
    """The lab interface (addresses with flags and lifetimes, routes of every table, sysctls) and the
    container's State, as ``ip -j``, /proc/sys and ``docker inspect`` report them."""
    state: dict[str, Any] = demo_state.capture(lab.host_if, lab.container)
    return state


def attack(lab: Lab, expect: str) -> str:
    result = lab.run("attack", "--expect", expect, timeout=60)
    assert result.returncode == 0, f"relay should be {expect}:\n{result.stdout}{result.stderr}"
    return result.stdout


def global_v6(lab: Lab) -> list[str]:
    links = ip_json("-6", "addr", "show", "dev", lab.host_if, "scope", "global")
    return [a["local"] for link in links for a in link.get("addr_info", []) if "local" in a]


def postqueue(lab: Lab) -> dict[str, str]:
    """queue id -> queue name (hold, deferred, active, ...), from Postfix itself."""
    out = sh("docker", "exec", lab.container, "postqueue", "-j").stdout
    return {m["queue_id"]: m["queue_name"] for m in map(json.loads, out.splitlines()) if m}


def lockdown(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "lockdown", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    print(f"$ lockdown {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}")
    return result


class Serve:
    """``lockdown serve`` in a subprocess on a free loopback port."""

    def __init__(self, tmp: Path, lab: Lab) -> None:
        self.state = tmp / "state"
        token = tmp / "webhook.token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        self.config = tmp / "lockdown.toml"
        self.config.write_text(
            f"""
state_dir = "{self.state}"
[server]
listen = "127.0.0.1:0"
token_file = "webhook.token"
[[routes]]
alert = "{ALERT}"
playbook = "relay-incident"
vars = {{ container = "{lab.container}", interfaces = "{lab.host_if}" }}
"""
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lockdown", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert m, f"serve did not start: {line}{self.proc.stderr.read() if self.proc.stderr else ''}"
        self.url = f"http://127.0.0.1:{m.group(1)}"

    def alert(self) -> tuple[int, dict[str, Any]]:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        payload = am_payload(ALERT, fingerprint="e2e0000000000001", starts=now)
        req = urllib.request.Request(
            f"{self.url}/v1/alerts/alertmanager",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def status(state: Path, incident: str) -> dict[str, Any]:
    result = lockdown(state, "status", incident, "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def bundle_members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle, "r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            if m.isfile():
                fh = tar.extractfile(m)
                assert fh is not None
                out[m.name.split("/", 1)[1]] = fh.read()
        return out


def test_alert_contains_the_relay_keeps_evidence_and_restore_gives_the_state_before(lab: Lab, tmp_path: Path) -> None:
    relayed = queue_id(attack(lab, "open"))
    gateway = docker_bridge().gateway
    assert f"client=unknown[{gateway}]" in lab.docker_logs()
    before = lab_state(lab)
    assert global_v6(lab) == [lab.env["LAB_HOST6"]]
    assert before["container"]["State"]["Status"] == "running"

    serve = Serve(tmp_path, lab)
    try:
        code, answer = serve.alert()
        assert code == 202, answer
        incident = answer["incident_id"]
        wait_for(lambda: run_finished(serve.state, incident), timeout=120, what="the run to finish")
        doc = status(serve.state, incident)
        assert doc["run_status"] == "contained", doc
        assert doc["containment_active"] is True

        # Containment, checked from outside lockdown.
        attack(lab, "closed")
        state = json.loads(sh("docker", "inspect", "--format", "{{json .State}}", lab.container).stdout)
        assert state["Paused"] is True and state["Status"] == "paused"
        assert global_v6(lab) == []
        assert any(a["scope"] == "link" for a in ip_json("-6", "addr", "show", "dev", lab.host_if)[0]["addr_info"])
        # The host's own interfaces were not targeted (interfaces var = the lab's link only).
        assert host_snapshot() == lab.before

        # A duplicate of the alert does not start a second run.
        code, again = serve.alert()
        assert code == 200 and again["incident_id"] == incident, again
    finally:
        serve.stop()

    # Evidence: export while contained, verify, look inside.
    bundle = tmp_path / "bundle.tar.gz"
    assert lockdown(serve.state, "export", incident, "-o", str(bundle)).returncode == 0
    verify = subprocess.run([sys.executable, "-m", "lockdown", "verify", str(bundle)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    files = bundle_members(bundle)
    logs = b"".join(v for k, v in files.items() if k.startswith("evidence/logs/")).decode()
    assert re.search(rf"{relayed}: client=unknown\[{re.escape(gateway)}\]", logs), logs[-2000:]
    held = [k for k in files if k.startswith("evidence/queue/") and k.endswith(f"{relayed}.txt")]
    assert held, sorted(files)
    spam = files[held[0]].decode()
    assert "victim@qq.com" in spam and "Subject:" in spam
    connections = json.loads(files["evidence/connections.json"])
    processes = json.loads(files["evidence/processes.json"])
    port = int(lab.env["LAB_PORT"])
    proxy_listeners = {
        (s["family"], s["local"])
        for s in connections["sockets"]
        if s["lport"] == port and s["state"] == "LISTEN" and s["process"] == "docker-proxy"
    }
    assert proxy_listeners == {("inet", "0.0.0.0"), ("inet6", "::")}, proxy_listeners
    assert connections["pids_complete"] is True
    proxies = [p for p in processes["processes"] if p["name"] == "docker-proxy" and str(port) in p["cmdline"]]
    assert {tuple(p["listening"]) for p in proxies} == {(f"tcp 0.0.0.0:{port}",), (f"tcp6 :::{port}",)}, proxies
    case = json.loads(files["case.json"])
    assert case["incident_id"] == incident
    assert json.dumps(case["trigger"]).count(ALERT) >= 1

    # Queue: held by the run (Postfix says so) until restore --release-queue.
    sh("docker", "unpause", lab.container)
    try:
        assert postqueue(lab).get(relayed) == "hold"
    finally:
        sh("docker", "pause", lab.container)

    restore = lockdown(serve.state, "restore", incident, "--release-queue", "--reopen-anyway")
    assert restore.returncode == 0, restore.stderr
    after = lab_state(lab)
    assert demo_state.compare(before, after) == []
    assert after == before
    assert postqueue(lab).get(relayed) in ("deferred", "active", "incoming")
    attack(lab, "open")  # the lab is still misconfigured: restore undoes containment only
    assert host_snapshot() == lab.before


def _journal_has(path: Path, step: str, phase: str) -> bool:
    if not path.exists():
        return False
    for raw in path.read_bytes().splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("step") == step and entry.get("phase") == phase:
            return True
    return False


@pytest.mark.parametrize("kill_when", [("pause", "applied"), ("strip-v6", "intent")])
def test_sigkill_during_containment_then_restore(lab: Lab, tmp_path: Path, kill_when: tuple[str, str]) -> None:
    relayed = queue_id(attack(lab, "open"))
    before = lab_state(lab)
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "lockdown", "run", "relay-incident",
            "--var", f"container={lab.container}", "--var", f"interfaces={lab.host_if}",
            "--state-dir", str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    step, phase = kill_when
    end = time.monotonic() + 120
    killed = False
    try:
        while time.monotonic() < end and proc.poll() is None:
            journals = list(state.glob("incidents/*/journal.jsonl"))
            if journals and _journal_has(journals[0], step, phase):
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        proc.communicate()
    assert killed, "the run ended before the kill point"
    assert proc.returncode == -signal.SIGKILL

    incident = next(iter(state.glob("incidents/*"))).name
    doc = status(state, incident)
    assert doc["run_status"] == "crashed", doc
    assert doc["journal"]["intact"] is True
    # The strip comes first, then the pause: killed at the strip's intent, nothing is paused yet.
    paused = "true" if step == "pause" else "false"
    assert sh("docker", "inspect", "--format", "{{.State.Paused}}", lab.container).stdout.strip() == paused

    restore = lockdown(state, "restore", incident, "--release-queue", "--reopen-anyway")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert lab_state(lab) == before
    assert postqueue(lab).get(relayed) != "hold"
    attack(lab, "open")
    assert host_snapshot() == lab.before


def test_the_readme_demo_runs_and_proves_each_phase(tmp_path: Path) -> None:
    """``scripts/demo`` (the README's main-job command) on a lab of its own names."""
    require_lab_facilities()
    lab = Lab(tmp_path / "lab-state")
    (tmp_path / "lab-state").mkdir()
    before = host_snapshot()
    env = {
        **os.environ,
        **lab.env,
        "DEMO_SKIP_INSTALL": "1",
        "LOCKDOWN_PYTHON": sys.executable,  # the interpreter running these tests, whichever it is
        "DEMO_DIR": str(tmp_path / "demo"),
    }
    try:
        result = subprocess.run(
            [str(REPO / "scripts" / "demo")], capture_output=True, text=True, env=env, timeout=600, cwd=REPO
        )
        print(result.stdout, result.stderr)
        assert result.returncode == 0, result.stderr[-3000:]
        out = result.stdout
        for n in range(1, 9):
            assert f"== {n}/8 " in out
        assert out.count("PROVEN") == 8, out
        assert "FAILED" not in out
        bundle = Path(re.findall(r"Bundle: (\S+\.tar\.gz)", out)[-1])
        verify = subprocess.run([sys.executable, "-m", "lockdown", "verify", str(bundle)], capture_output=True)
        assert verify.returncode == 0
        bindir = sysconfig.get_path("scripts")
        assert out.splitlines()[-1] == (
            f"lockdown is {bindir}/lockdown here (LOCKDOWN_PYTHON); in a new shell: {bindir}/lockdown --help"
        )
    finally:
        lab.teardown()
    assert lab.leftovers() == []
    assert host_snapshot() == before


def test_dry_run_resolves_targets_and_refuses_what_a_run_would_refuse(lab: Lab, tmp_path: Path) -> None:
    before = lab_state(lab)
    state = tmp_path / "state"
    result = lockdown(
        state, "run", "relay-incident", "--dry-run", "--json",
        "--var", f"container={lab.container}", "--var", f"interfaces={lab.host_if}",
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "dry-run"
    assert doc["live_check"] == "targets resolved against the live system"
    steps = {p["id"]: p for p in doc["plan"]}
    assert steps["pause"]["resolved"]["containers"] == [lab.container]
    assert steps["strip-v6"]["resolved"] == {"interfaces": [lab.host_if], "strip": [f"{lab.env['LAB_HOST6']}/64"]}

    missing = lockdown(
        state, "run", "relay-incident", "--dry-run",
        "--var", "container=lkd-no-such-container", "--var", f"interfaces={lab.host_if}",
    )  # never plan against the machine's own interfaces, even in a dry run
    assert missing.returncode == 2
    assert missing.stderr.startswith(
        "lockdown: error: relay-incident.toml step 2 (pause): no such container 'lkd-no-such-container'"
    ), missing.stderr
    assert lab_state(lab) == before
    assert host_snapshot() == lab.before
    assert not (state / "incidents").exists() or list((state / "incidents").iterdir()) == []
