"""What the bench scripts share: timing a command and its peak memory the same way, and
talking to ``lockdown serve`` (its config, an Alertmanager alert, the POST and its answer).

``os.wait4`` on a child started straight from the bench reports the bench's own
resident size when that is larger: the child's ``ru_maxrss`` counts the pages it
shared with its parent between fork and exec. A small launcher (``python -S``, about
9 MiB) starts the command instead, so the figure is the command's own, with a 9 MiB floor.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump([time.perf_counter() - t0, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status),
               usage.ru_utime + usage.ru_stime], fh)
"""


def measure(
    cmd: list[str], *, env: dict[str, str] | None = None, stdout: IO[Any] | int | None = None
) -> tuple[float, int, int]:
    """Wall seconds, peak RSS in bytes (the command and the children it waited for) and exit code."""
    elapsed, rss, code, _cpu = measure_cpu(cmd, env=env, stdout=stdout)
    return elapsed, rss, code


def measure_cpu(
    cmd: list[str], *, env: dict[str, str] | None = None, stdout: IO[Any] | int | None = None
) -> tuple[float, int, int, float]:
    """``measure`` and the CPU seconds (user + system) of the command and the children it waited for."""
    with tempfile.NamedTemporaryFile("r") as result:
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, result.name, *cmd], stdout=stdout, env=env, check=False)
        elapsed, rss, code, cpu = json.loads(result.read() or "[0, 0, -1, 0]")
    return float(elapsed), int(rss), int(code), float(cpu)


def write_serve_config(tmp: Path, state: Path, token: str, routes: str) -> Path:
    """``tmp/lockdown.toml`` for a serve on 127.0.0.1 (any free port), its token file beside it (0600).

    ``routes`` is the TOML of the ``[[routes]]`` tables, written after ``[server]``.
    """
    token_file = tmp / "webhook.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = tmp / "lockdown.toml"
    config.write_text(
        f'state_dir = "{state}"\n[server]\nlisten = "127.0.0.1:0"\ntoken_file = "webhook.token"\n{routes}'
    )
    return config


def alertmanager_alert(name: str, n: int, fingerprint: str, day: str = "2026-11-30") -> bytes:
    """One firing Alertmanager webhook body for alert ``name``; ``n`` sets its start second on ``day``."""
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "lockdown",
            "groupLabels": {"alertname": name},
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": name, "severity": "critical"},
                    "annotations": {},
                    "startsAt": f"{day}T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": fingerprint,
                }
            ],
        }
    ).encode()


def post_alert(port: int, body: bytes, token: str, timeout: float = 60) -> tuple[socket.socket, float]:
    """Write the request; return the socket (answer unread) and ``time.monotonic()`` just before writing."""
    head = (
        f"POST /v1/alerts/alertmanager HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    sock.sendall(head + body)
    return sock, t0


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of serve's answer; closes ``sock``."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)
