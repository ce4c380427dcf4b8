"""Helpers for tests on a real Docker Engine: containers the test owns, SMTP, queue, playbooks.

Every container is named ``lkd-xxxxxx`` (conftest ``unique()``), carries the
label ``lkd.test=<owner>`` and is removed by ``Lab.cleanup`` even when the
test fails. Nothing here touches a container the test did not create.
"""

from __future__ import annotations

import hashlib
import json
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.bridge import mynetworks, v6_host_port  # noqa: F401 - the tests import v6_host_port from here
from tests.conftest import unavailable, unique

BUSYBOX = "lockdown-test/busybox:latest"
POSTFIX = "lockdown-test/postfix:latest"
TEST_LABEL = "lkd.test"
#: What `docker inspect` State fields a stop/start round trip legitimately changes:
#: a new process (Pid), and the start/finish times of that process. Everything
#: else (Status, Running, Paused, Restarting, OOMKilled, Dead, ExitCode, Error,
#: Health) must come back exactly. A pause/unpause round trip changes nothing.
STOP_START_CHANGES = ("Pid", "StartedAt", "FinishedAt")


class Lab:
    """The containers of one test."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.owner = unique()  # label value shared by this test's containers
        self.containers: list[Any] = []

    def run(
        self,
        image: str,
        command: list[str] | str | None = None,
        *,
        publish_smtp: bool = False,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Start a detached container; ``publish_smtp`` publishes 25/tcp on a free 127.0.0.1 port."""
        all_labels = {TEST_LABEL: self.owner, **(labels or {})}
        ports = {"25/tcp": ("127.0.0.1", None)} if publish_smtp else None
        container = self.client.containers.run(
            image,
            command,
            name=unique(),
            detach=True,
            labels=all_labels,
            environment=env or {},
            ports=ports,
            **kwargs,
        )
        self.containers.append(container)
        container.reload()
        return container

    def postfix(self, labels: dict[str, str] | None = None) -> Any:
        """A Postfix container that relays for the Docker networks (and so defers to qq.com).

        It trusts ``mynetworks()``: the postmortem's 172.16.0.0/12 where this engine's bridge
        lies inside it, else the bridge's own subnet, so it is an open relay on any engine.
        """
        c = self.run(POSTFIX, publish_smtp=True, env={"POSTFIX_MYNETWORKS": mynetworks()}, labels=labels)
        wait_smtp(host_port(c))
        return c

    def cleanup(self) -> None:
        import docker

        for c in self.containers:
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


@contextmanager
def lab(client: Any) -> Iterator[Lab]:
    for image in (BUSYBOX, POSTFIX):
        try:
            client.images.get(image)
        except Exception:  # noqa: BLE001 - any failure means the image is not usable
            unavailable(f"image {image} is missing (run scripts/setup-test-env)")
    the_lab = Lab(client)
    try:
        yield the_lab
    finally:
        the_lab.cleanup()


def state(container: Any) -> dict[str, Any]:
    container.reload()
    return dict(container.attrs["State"])


def status(container: Any) -> str:
    return str(state(container)["Status"])


def host_port(container: Any, cport: str = "25/tcp") -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"][cport][0]["HostPort"])


def wait_smtp(port: int, timeout: float = 60) -> None:
    """Wait for an SMTP banner (docker-proxy accepts before Postfix is up)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.noop()
                return
        except (OSError, smtplib.SMTPException) as exc:
            last = exc
            time.sleep(0.5)
    raise AssertionError(f"no SMTP banner on 127.0.0.1:{port} after {timeout} s: {last}")


def send_spam(port: int, count: int, tag: str = "spam") -> None:
    """Relay ``count`` messages to qq.com through the published port; they stay deferred."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for i in range(count):
            body = f"Subject: {tag} {i}\r\nFrom: bot@lab.example\r\n\r\nBUY NOW {tag} {i}\r\n"
            s.sendmail("bot@lab.example", [f"victim{i}@qq.com"], body)


def postqueue(container: Any) -> dict[str, str]:
    """queue id -> queue name, from ``postqueue -j`` inside the container."""
    code, out = container.exec_run(["postqueue", "-j"])
    assert code == 0, out
    return {item["queue_id"]: item["queue_name"] for item in map(json.loads, out.decode().splitlines())}


def wait_queue(container: Any, count: int, timeout: float = 30) -> dict[str, str]:
    """Wait until ``count`` messages sit in the deferred/hold queues (none in flight)."""
    deadline = time.monotonic() + timeout
    queue: dict[str, str] = {}
    while time.monotonic() < deadline:
        queue = postqueue(container)
        if len(queue) == count and all(q in ("deferred", "hold") for q in queue.values()):
            return queue
        time.sleep(0.5)
    raise AssertionError(f"queue did not settle at {count} messages: {queue}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def playbook(tmp_path: Path, *steps: dict[str, Any], name: str = "docker-test") -> Path:
    """Write a small playbook: each step is a dict with ``action`` and its parameters."""
    lines = [f"name = {json.dumps(name)}"]
    for step in steps:
        lines.append("\n[[steps]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in step.items()]
    path = tmp_path / f"{name}-{unique()}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def incident_dir(state_dir: Path, incident_id: str) -> Path:
    return state_dir / "incidents" / incident_id


def journal(state_dir: Path, incident_id: str) -> list[dict[str, Any]]:
    text = (incident_dir(state_dir, incident_id) / "journal.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def sha256_of_command(cmd: list[str]) -> tuple[int, str]:
    """Size and SHA-256 of a command's stdout+stderr, streamed (never all in memory)."""
    h = hashlib.sha256()
    size = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    assert proc.returncode == 0, cmd
    return size, h.hexdigest()


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_cli_measured(*args: str, state_dir: Path, timeout: float = 600) -> tuple[int, str, str, int]:
    """Run the CLI like conftest ``run_cli``; also return the child's peak RSS in bytes (wait4)."""
    env = dict(os.environ)
    env["LOCKDOWN_STATE_DIR"] = str(state_dir)
    out_path = state_dir.parent / f"cli-{unique()}.out"
    err_path = out_path.with_suffix(".err")
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lockdown", *args], stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, wstatus, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"lockdown {' '.join(args)} took more than {timeout} s")
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(wstatus)
    return proc.returncode, out_path.read_text(), err_path.read_text(), usage.ru_maxrss * 1024
