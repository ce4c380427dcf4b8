#!/usr/bin/env python3
"""The demo's proof helpers: capture and compare state, send the alert, wait for a run.

The demo claims "restore puts everything back"; this script is what checks it, from
the kernel's and Docker's own answers (``ip -j``, /proc/sys, ``docker inspect``),
not from lockdown's return values. Standard library only, plus the docker CLI.

  demo-state.py capture IFACE CONTAINER OUT.json
  demo-state.py compare BEFORE.json AFTER.json        exit 1 and list differences if unequal
  demo-state.py alert URL TOKEN_FILE ALERTNAME        POST an Alertmanager v4 payload; print the answer
  demo-state.py wait STATE_DIR INCIDENT [SECONDS]     until the run has finished; print its status
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _json(cmd: list[str]) -> Any:
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout or "null")


def _sorted(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda i: json.dumps(i, sort_keys=True))


def capture(iface: str, container: str) -> dict[str, Any]:
    links = _json(["ip", "-j", "addr", "show", "dev", iface])
    addrs = links[0]["addr_info"] if links else []
    sysctls: dict[str, str] = {}
    for family in ("ipv6", "ipv4"):
        base = Path(f"/proc/sys/net/{family}/conf/{iface}")
        for path in sorted(base.iterdir()) if base.is_dir() else []:
            try:
                sysctls[f"{family}.{path.name}"] = path.read_text().strip()
            except OSError:  # stable_secret is unreadable until set
                continue
    inspect = _json(["docker", "inspect", container])
    return {
        "interface": iface,
        "addresses": _sorted(addrs),
        "routes6": _sorted(_json(["ip", "-j", "-6", "route", "show", "table", "all", "dev", iface])),
        "routes4": _sorted(_json(["ip", "-j", "-4", "route", "show", "table", "all", "dev", iface])),
        "sysctls": sysctls,
        "container": {"name": container, "State": inspect[0]["State"]},
    }


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    diffs: list[str] = []
    for key in ("addresses", "routes6", "routes4"):
        a = [json.dumps(i, sort_keys=True) for i in before[key]]
        b = [json.dumps(i, sort_keys=True) for i in after[key]]
        diffs += [f"{key}: missing after restore: {i}" for i in a if i not in b]
        diffs += [f"{key}: new after restore: {i}" for i in b if i not in a]
    for name in sorted(set(before["sysctls"]) | set(after["sysctls"])):
        x, y = before["sysctls"].get(name), after["sysctls"].get(name)
        if x != y:
            diffs.append(f"sysctl {name}: {x} before, {y} after")
    for name in sorted(set(before["container"]["State"]) | set(after["container"]["State"])):
        x, y = before["container"]["State"].get(name), after["container"]["State"].get(name)
        if x != y:
            diffs.append(f"container State.{name}: {x!r} before, {y!r} after")
    return diffs


def alert(url: str, token_file: str, alertname: str) -> int:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "lockdown",
        "groupKey": '{}:{alertname="' + alertname + '"}',
        "groupLabels": {"alertname": alertname},
        "commonLabels": {"alertname": alertname, "severity": "critical"},
        "commonAnnotations": {"summary": "outbound mail far above normal"},
        "externalURL": "http://alertmanager.lab.example:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": alertname, "severity": "critical", "instance": "lkd-lab-mail"},
                "annotations": {"summary": "more mail than this server ever sends"},
                "startsAt": now,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.lab.example:9090/graph",
                "fingerprint": f"demo{int(time.time())}",
            }
        ],
    }
    token = Path(token_file).read_text().strip()
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    print(json.dumps({"status": status, "answer": json.loads(body) if body.startswith("{") else body}))
    return 0 if status == 202 else 1


def wait(state_dir: str, incident: str, seconds: float) -> int:
    end = time.monotonic() + seconds
    doc: dict[str, Any] = {}
    while time.monotonic() < end:
        proc = subprocess.run(
            [sys.executable, "-m", "lockdown", "status", incident, "--json", "--state-dir", state_dir],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            doc = json.loads(proc.stdout)
            if doc.get("run_status") not in (None, "running"):
                print(doc["run_status"])
                return 0 if doc["run_status"] == "contained" else 1
        time.sleep(0.2)
    print(f"still {doc.get('run_status')} after {seconds:.0f} s", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "capture":
        Path(argv[3]).write_text(json.dumps(capture(argv[1], argv[2]), indent=2, sort_keys=True) + "\n")
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        before, after = (json.loads(Path(p).read_text()) for p in argv[1:3])
        diffs = compare(before, after)
        for d in diffs:
            print(f"    DIFFERENT {d}")
        if not diffs:
            print(
                f"    equal: {len(before['addresses'])} address(es) with flags and lifetimes, "
                f"{len(before['routes6']) + len(before['routes4'])} route(s), {len(before['sysctls'])} sysctl(s) "
                f"of {before['interface']}, and the State of container {before['container']['name']} "
                f"(Status {after['container']['State']['Status']}, Pid {after['container']['State']['Pid']})"
            )
        return 1 if diffs else 0
    if len(argv) == 4 and argv[0] == "alert":
        return alert(argv[1], argv[2], argv[3])
    if len(argv) in (3, 4) and argv[0] == "wait":
        return wait(argv[1], argv[2], float(argv[3]) if len(argv) == 4 else 60.0)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
