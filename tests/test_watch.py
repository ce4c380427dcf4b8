"""``lockdown watch`` against a real container that prints Postfix log lines.

The container is a busybox ``sleep``; the test writes Postfix-format lines to
its PID 1's stdout with ``docker exec``, so they reach the watch through the
daemon's real ``logs --follow`` stream (or, in log-file mode, a real file
that the test rotates).

The watch runs as the real CLI in a subprocess. Its playbook is test-owned
and harmless: a host snapshot plus a sysctl inside a fresh network namespace
(the watch runs under ``ip netns exec``), or ``docker.pause`` of the test's
own container. The daemon "going away" is simulated without touching dockerd:
the watch talks to the daemon through a Unix-socket proxy the test owns
(``DOCKER_HOST``), and the test kills and restarts that proxy.

"Not before the threshold" needs a point where the watch has read the lines:
``<state>/triggers/watch-status.json`` says how many Postfix lines it has read
and how many outside messages are in its window.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lockdown.record.incident import list_incident_ids, read_incident
from lockdown.triggers.config import load_config
from lockdown.triggers.dedup import EventLog
from lockdown.triggers.dispatch import Dispatcher
from lockdown.triggers.watch import Watcher, WatchSettings
from tests.conftest import REPO, docker_bridge, run_cli, run_finished, wait_for
from tests.dockerlab import BUSYBOX, Lab, lab

pytestmark = [pytest.mark.docker, pytest.mark.netns]

SYSCTL = "net.ipv4.icmp_echo_ignore_all"  # per network namespace, 0 in a fresh one
DOCKER_SOCK = "/var/run/docker.sock"
OUTSIDER = "203.0.113.7"

SYSCTL_PLAYBOOK = f"""
name = "watch-test"
description = "harmless: a host snapshot and one namespaced sysctl"
[[steps]]
action = "snapshot.host"
[[steps]]
id = "icmp"
action = "sysctl.set"
values = {{ "{SYSCTL}" = "1" }}
"""

PAUSE_PLAYBOOK = """
name = "watch-pause-test"
description = "pause the test's own container"
[vars]
container = "none"
[[steps]]
action = "docker.pause"
container = "{container}"
"""

_ids = itertools.count(1)


# ---------------------------------------------------------------- Postfix lines


def stamp() -> str:
    """Now as a syslog (RFC 3164) timestamp: ``Nov 23 09:08:43``."""
    now = datetime.now()
    return f"{now:%b} {now.day:>2} {now:%H:%M:%S}"


def queue_id() -> str:
    return f"{secrets.token_hex(4).upper()}{next(_ids):02X}"[:10]


def relayed(rcpts: tuple[str, ...] = ("victim@qq.com",), *, client: str = OUTSIDER, sasl: str | None = None) -> str:
    """One message accepted and handed to smtp for outside domains (deferred, as in the postmortem)."""
    qid, t = queue_id(), stamp()
    login = f", sasl_method=PLAIN, sasl_username={sasl}" if sasl else ""
    lines = [
        f"{t} mail postfix/smtpd[108]: {qid}: client=unknown[{client}]{login}",
        f"{t} mail postfix/cleanup[110]: {qid}: message-id=<{qid}@lab.example>",
        f"{t} mail postfix/qmgr[99]: {qid}: from=<bot@lab.example>, size=420, nrcpt={len(rcpts)} (queue active)",
    ]
    lines += [
        f"{t} mail postfix/smtp[111]: {qid}: to=<{r}>, relay=none, delay=30, delays=0.1/0/30/0, dsn=4.4.1, "
        "status=deferred (connect to mx3.qq.com[203.205.219.57]:25: Connection timed out)"
        for r in rcpts
    ]
    return "\n".join(lines) + "\n"


def local(rcpt: str = "alice@lab.example") -> str:
    """One message delivered locally: never counted."""
    qid, t = queue_id(), stamp()
    return (
        f"{t} mail postfix/smtpd[108]: {qid}: client=unknown[{OUTSIDER}]\n"
        f"{t} mail postfix/qmgr[99]: {qid}: from=<someone@example.net>, size=900, nrcpt=1 (queue active)\n"
        f"{t} mail postfix/local[112]: {qid}: to=<{rcpt}>, relay=local, delay=0.1, delays=0.1/0/0/0, "
        "dsn=2.0.0, status=sent (delivered to mailbox)\n"
        f"{t} mail postfix/qmgr[99]: {qid}: removed\n"
    )


def n_lines(text: str) -> int:
    return text.count("\n")


def emit(container: Any, text: str) -> None:
    """Write ``text`` to the container's stdout (its PID 1's fd 1): Docker logs it like Postfix's own."""
    code, out = container.exec_run(["sh", "-c", 'printf "%s" "$LINES" > /proc/1/fd/1'], environment={"LINES": text})
    assert code == 0, out


# ---------------------------------------------------------------- the daemon, through a proxy we can kill


class DockerProxy:
    """A Unix socket that forwards to dockerd's. ``stop()`` cuts every connection: the daemon "goes away"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> DockerProxy:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(DOCKER_SOCK)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.path.unlink(missing_ok=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


# ---------------------------------------------------------------- the watch


class Watch:
    """``python -m lockdown watch`` in a subprocess (optionally inside a netns), output to files."""

    def __init__(self, tmp_path: Path, route_playbook: str, *, netns: str | None, vars_: str = "") -> None:
        self.tmp = tmp_path
        self.netns = netns
        self.state = tmp_path / "state"
        (tmp_path / "pb.toml").write_text(route_playbook)
        self.config = tmp_path / "lockdown.toml"
        self.config.write_text(
            f'state_dir = "{self.state}"\n[[routes]]\nalert = "MailRelaySurge"\nplaybook = "pb.toml"\n{vars_}\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.err = tmp_path / "watch.err"

    def start(self, *args: str, env: dict[str, str] | None = None) -> Watch:
        cmd = [sys.executable, "-m", "lockdown", "watch", "--config", str(self.config), *args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        full_env = {k: v for k, v in os.environ.items() if k not in ("LOCKDOWN_STATE_DIR", "LOCKDOWN_CONFIG")}
        full_env.update(env or {})
        with open(self.tmp / "watch.out", "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=full_env, cwd=REPO)
        self.wait_status(lambda s: s["following"], what="the watch to follow its source")
        return self

    def stderr(self) -> str:
        return self.err.read_text()

    def status(self) -> dict[str, Any]:
        path = self.state / "triggers" / "watch-status.json"
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {"following": None, "lines": 0, "outside_in_window": 0, "incidents": []}
        return doc

    def wait_status(self, predicate: Any, timeout: float = 30, what: str = "the watch") -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the watch exited ({self.proc.returncode}): {self.stderr()}")
            doc = self.status()
            if predicate(doc):
                return doc
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; status {self.status()}; stderr:\n{self.stderr()}")

    def read(self, lines: int, outside: int) -> dict[str, Any]:
        """Wait until the watch has read ``lines`` Postfix lines in all; check its window holds ``outside``."""
        doc = self.wait_status(lambda s: s["lines"] >= lines, what=f"{lines} lines read")
        # the count is written with the lines it comes from; a second look proves nothing more came in
        time.sleep(0.6)
        doc = self.status()
        assert (doc["lines"], doc["outside_in_window"]) == (lines, outside), doc
        return doc

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.stderr()

    def incidents(self) -> list[str]:
        return list_incident_ids(self.state)


def sysctl_in(netns: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/sys/" + SYSCTL.replace(".", "/")],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()




def is_paused(container: Any) -> bool:
    container.reload()
    return bool(container.attrs["State"]["Paused"])


@pytest.fixture
def box(docker_engine: Any) -> Iterator[tuple[Lab, Any]]:
    """A running busybox container owned by this test; its stdout is the "mail log"."""
    with lab(docker_engine) as the_lab:
        yield the_lab, the_lab.run(BUSYBOX, ["sleep", "3600"])


# ---------------------------------------------------------------- threshold


def test_fires_when_the_limit_is_crossed_and_not_before(box: tuple[Lab, Any], netns: str, tmp_path: Path) -> None:
    _, container = box
    watch = Watch(tmp_path, SYSCTL_PLAYBOOK, netns=netns)
    watch.start("--container", container.name, "--max-per-minute", "5")
    try:
        assert sysctl_in(netns) == "0"
        # 5 outside messages (one of them with two outside recipients: it counts once), plus local mail
        text = "".join(relayed() for _ in range(4)) + relayed(("a@qq.com", "b@163.com")) + local() + local()
        emit(container, text)
        watch.read(n_lines(text), 5)
        assert watch.incidents() == []  # 5 is the most allowed: no incident
        assert sysctl_in(netns) == "0"

        sixth = relayed()
        emit(container, sixth)
        incident_id = wait_for(watch.incidents, what="an incident")[0]
        wait_for(lambda: run_finished(watch.state, incident_id), what="the run")
        view = read_incident(watch.state, incident_id)
        assert (view.run_status, view.containment_active) == ("contained", True)
        assert sysctl_in(netns) == "1"
        meta = json.loads((watch.state / "incidents" / incident_id / "incident.json").read_text())
        trigger = meta["trigger"]
        assert (trigger["kind"], trigger["route"]) == ("watch", "MailRelaySurge")
        assert trigger["payload"]["watch"]["count"] == 6
        assert trigger["payload"]["watch"]["max_per_minute"] == 5
        assert trigger["payload"]["watch"]["source"] == f"container:{container.name}"

        # more of the same surge: still one incident
        more = "".join(relayed() for _ in range(4))
        emit(container, more)
        doc = watch.read(n_lines(text + sixth + more), 10)
        assert doc["incidents"] == [incident_id]
        assert watch.incidents() == [incident_id]
        code, err = watch.stop()
        assert code == 0, err
        assert "6 outside messages in the last 60 s (limit 5): triggering MailRelaySurge" in err
        assert f"incident {incident_id} started" in err
    finally:
        watch.stop()
    # restoring is a human decision, and works from the CLI
    assert run_cli("restore", incident_id, netns=netns, state_dir=watch.state).returncode == 0
    assert sysctl_in(netns) == "0"


def test_on_signature_fires_on_the_gateway_without_sasl_alone(box: tuple[Lab, Any], tmp_path: Path) -> None:
    _, container = box
    watch = Watch(tmp_path, PAUSE_PLAYBOOK, netns=None, vars_=f'vars = {{ container = "{container.name}" }}')
    watch.start("--container", container.name, "--on-signature")
    gateway = docker_bridge().gateway  # what docker-proxy makes every client look like
    try:
        # relayed from the gateway but logged in, and relayed without login from elsewhere: not the signature
        harmless = relayed(client=gateway, sasl="alice@lab.example") + relayed() + relayed() + relayed()
        emit(container, harmless)
        watch.read(n_lines(harmless), 4)
        assert watch.incidents() == []
        assert not is_paused(container)

        emit(container, relayed(("1234567@qq.com",), client=gateway))  # the postmortem's relay: one is enough
        incident_id = wait_for(watch.incidents, what="an incident")[0]
        wait_for(lambda: run_finished(watch.state, incident_id), what="the run")
        assert is_paused(container)
        meta = json.loads((watch.state / "incidents" / incident_id / "incident.json").read_text())
        detail = meta["trigger"]["payload"]["watch"]
        assert detail["reason"] == "signature"
        assert (detail["message"]["client"], detail["message"]["sasl_username"]) == (gateway, None)
        assert detail["message"]["recipient"] == "1234567@qq.com"

        # the watch keeps following the container it paused; after the restore it reads on
        lines_before = watch.status()["lines"]
        assert watch.status()["following"] == f"container {container.name}"
        # pause-only: nothing else keeps the path closed, so the gate cannot probe (exit 7 without this)
        result = run_cli("restore", incident_id, "--reopen-anyway", state_dir=watch.state)
        assert result.returncode == 0, result.stderr
        assert not is_paused(container)
        after = relayed() + local()
        emit(container, after)
        watch.read(lines_before + n_lines(after), 6)
        assert watch.incidents() == [incident_id]
    finally:
        code, err = watch.stop()
    assert code == 0, err
    assert "signature: message" in err and f"from gateway {gateway} without SASL" in err


# ---------------------------------------------------------------- surviving


def test_survives_restart_pause_and_the_daemon_going_away(box: tuple[Lab, Any], netns: str, tmp_path: Path) -> None:
    _, container = box
    proxy = DockerProxy(tmp_path / "docker.sock").start()
    watch = Watch(tmp_path, SYSCTL_PLAYBOOK, netns=netns)
    try:
        watch.start("--container", container.name, "--max-per-minute", "5", env={"DOCKER_HOST": f"unix://{proxy.path}"})
        seen = ""

        def send(text: str) -> None:
            nonlocal seen
            emit(container, text)
            seen += text

        send(relayed() + relayed())
        watch.read(n_lines(seen), 2)

        # a container restart ends the log stream; the watch follows the new one, counting nothing twice
        connects = watch.status()["connects"]
        container.restart(timeout=0)
        watch.wait_status(lambda s: s["following"] and s["connects"] > connects, what="the watch to follow again")
        send(relayed())
        watch.read(n_lines(seen), 3)

        # a paused container: nothing to read, the watch keeps following
        container.pause()
        time.sleep(1.0)
        assert watch.status()["following"] == f"container {container.name}"
        container.unpause()
        send(relayed() + local())
        watch.read(n_lines(seen), 4)

        # the daemon goes away (every connection cut) and comes back; lines written meanwhile are read
        connects = watch.status()["connects"]
        proxy.stop()
        watch.wait_status(lambda s: s["following"] is None, what="the watch to notice")
        send(relayed())
        time.sleep(1.5)
        assert watch.status()["lines"] == n_lines(seen) - n_lines(relayed())  # nothing read while it is away
        proxy.start()
        watch.read(n_lines(seen), 5)
        assert watch.status()["connects"] > connects
        assert watch.incidents() == []  # 5: still within the limit, even after three reconnects

        send(relayed())
        incident_id = wait_for(watch.incidents, what="an incident")[0]
        wait_for(lambda: run_finished(watch.state, incident_id), what="the run")
        assert sysctl_in(netns) == "1"
        watch.read(n_lines(seen), 6)
        assert watch.incidents() == [incident_id]
        code, err = watch.stop()
        assert code == 0, err
        assert "retrying in" in err  # it said what happened
    finally:
        watch.stop()
        proxy.stop()


def test_log_file_rotation(netns: str, tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(relayed() * 1)  # before the watch starts: it reads from the end, this never counts
    watch = Watch(tmp_path, SYSCTL_PLAYBOOK, netns=netns)
    watch.start("--log-file", str(log), "--max-per-minute", "5")
    try:
        seen = ""

        def append(path: Path, text: str) -> None:
            nonlocal seen
            with path.open("a") as fh:
                fh.write(text)
            seen += text

        append(log, relayed() + relayed())
        watch.read(n_lines(seen), 2)
        # logrotate (create mode): rename, Postfix still writes to the old file a moment, then the new one
        rotated = tmp_path / "mail.log.1"
        log.rename(rotated)
        append(rotated, relayed())
        time.sleep(0.5)
        log.touch()
        append(log, relayed() + relayed() + local())
        watch.read(n_lines(seen), 5)
        assert watch.incidents() == []
        assert watch.status()["following"] == f"file {log}"

        # copytruncate: the file shrinks; the watch reads it again from the start
        with log.open("w"):
            pass
        time.sleep(0.6)
        append(log, relayed())
        incident_id = wait_for(watch.incidents, what="an incident")[0]
        wait_for(lambda: run_finished(watch.state, incident_id), what="the run")
        assert sysctl_in(netns) == "1"
        assert watch.read(n_lines(seen), 6)["incidents"] == [incident_id]
        code, err = watch.stop()
        assert code == 0, err
        assert f"{log} was rotated" in err and f"{log} was truncated" in err
    finally:
        watch.stop()


# ---------------------------------------------------------------- reconnect arithmetic


def test_lines_sharing_a_timestamp_are_neither_lost_nor_read_twice_after_a_reconnect(tmp_path: Path) -> None:
    """Docker cuts to nanoseconds, the parser to microseconds: a burst shares one stamp.

    After a reconnect the daemon sends everything from that stamp again; the
    watch must skip exactly the lines it has read, not every line at that time.
    """
    watch = Watch(tmp_path, SYSCTL_PLAYBOOK, netns=None)
    cfg = load_config(watch.config, read_secrets=False)
    log = EventLog(watch.state, "watch.log")
    settings = WatchSettings(route=cfg.routes[0], max_per_minute=100, on_signature=False, container="x")
    watcher = Watcher(settings, Dispatcher(cfg, watch.state, log=log), stop=threading.Event(), log=log)
    t = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # one stamp for the whole burst

    def docker_lines(text: str) -> bytes:
        return "".join(f"{t} {line}\n" for line in text.splitlines()).encode()

    first, second = relayed() + relayed(), relayed()
    watcher.feed(docker_lines(first)[:-30])  # the stream breaks in the middle of the last line
    assert (watcher.lines, watcher.window.count(time.time())) == (n_lines(first) - 1, 1)
    since = watcher.reopening()
    assert since == datetime.fromisoformat(t[:26] + "+00:00").timestamp()
    watcher.feed(docker_lines(first + second))  # what the daemon sends from ``since`` on
    assert (watcher.lines, watcher.window.count(time.time())) == (n_lines(first + second), 3)
    watcher.reopening()
    watcher.feed(docker_lines(first + second))
    assert (watcher.lines, watcher.window.count(time.time())) == (n_lines(first + second), 3)


# ---------------------------------------------------------------- bad input


def test_watch_refuses_without_anything_to_watch_for(tmp_path: Path) -> None:
    watch = Watch(tmp_path, SYSCTL_PLAYBOOK, netns=None)
    r = run_cli("watch", "--config", str(watch.config), "--container", "x", timeout=30)
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        2,
        "lockdown: error: nothing to watch for: give --max-per-minute N and/or --on-signature",
    )
    r = run_cli("watch", "--config", str(watch.config), "--on-signature", "--route", "Nope", timeout=30)
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        2,
        f"lockdown: error: --route 'Nope': {watch.config} has no [[routes]] entry with that alert "
        "(routes: MailRelaySurge)",
    )
    assert not (watch.state / "incidents").exists()
