#!/usr/bin/env python3
"""Benchmark: ``lockdown guard`` re-assertion latency, and its idle cost.

    python3 bench/bench_guard.py [--events 100] [--idle 60] [--quick]

Sets up, all owned by the bench and removed at the end: a network namespace
``lkd-xxxxxx`` with a veth pair whose one end carries 2001:db8:1::1/64, and a
busybox container (``lkd-`` name, ``lkd.test`` label). Two incidents are run
with the real CLI in a temporary state dir: ``ipv6.strip`` of that end, and
``docker.pause`` of the container. One ``lockdown guard --all --json`` then
runs inside the namespace, and the bench undoes containment ``--events``
times per kind, one at a time, waiting for the guard's drift line each time:

* address: ``ip -n NS addr add 2001:db8:5::N/64 dev A nodad``;
* container: ``unpause`` over the bench's own Docker API connection.

Figures (p50/p99 in ms):

* ``journaled``: the drift entry's ``latency_ms``, from the event (netlink
  notification read; Docker's event timestamp) to containment holding again;
* ``end to end``: from just before the bench makes the change to the moment
  it is undone, as seen from outside: the ``Deleted`` line of ``ip monitor
  address`` for the address (includes the ``ip`` process that adds it), the
  first ``inspect`` saying paused in a tight loop for the container;
* ``reported``: from just before the change to the drift line read on the
  guard's stdout (after the entry is fsync'ed in the journal);
* peer, same run: how long the change itself takes (``ip addr add`` as a
  process; the unpause API call).

Then the guard is left alone for ``--idle`` seconds: CPU (utime+stime from
/proc) over that time and its RSS (VmRSS, and VmHWM for the peak).

Goals (issue 16): p99 <= 200 ms; idle under 1 % CPU and under 60 MiB.

Figures from this machine (2 cores, load average 6-7 from other test suites),
2026-11-30, 100 events of each kind, 60 s idle (ms)::

    address: journaled (event -> held)    p50   9.9   p99  42.5
    address: end to end (change -> held)  p50  15.7   p99  62.0
    address: reported (drift line read)   p50  79.9   p99 183.6
    address: peer, ip addr add (process)  p50   6.5   p99  24.6   goal met
    container: journaled (event -> held)  p50  51.3   p99 146.1
    container: end to end (change -> held) p50 73.1   p99 176.0
    container: reported (drift line read) p50 100.2   p99 213.3
    container: peer, Docker API unpause   p50  30.5   p99  76.2   goal met
    idle 60 s: CPU 0.03 %   RSS 48.4 MiB (peak 48.4 MiB)          goal met

What changed to get there: a first version dumped the interface's addresses
for every notification (pyroute2 parses a dump in Python: ~30 ms under that
load) and measured address p99 313 ms end to end; the guard now deletes the
address the notification names, straight away (a delete that finds nothing
is a no-op), and dumps only when comparing. "reported" adds what follows the
re-assertion: the journal entry fsync'ed under the state lock and, for
addresses, the scan for running network managers named in ``suspects``.
The container path is a ``docker inspect`` and the ``pause`` itself (Docker
freezes the cgroup: about as long as the unpause peer).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = "lockdown-test/busybox:latest"


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<34} p50 {pct(values, 50):7.1f}   p99 {pct(values, 99):7.1f}   "
        f"min {min(values):6.1f}   mean {statistics.fmean(values):6.1f}   max {max(values):7.1f}"
    )


class Guard:
    def __init__(self, ns: str, state: Path) -> None:
        env = {**os.environ, "LOCKDOWN_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "lockdown", "guard", "--all", "--json"],
            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append((time.time(), json.loads(raw)))
                self.cond.notify_all()

    def wait(self, pred: Any, start: int = 0, timeout: float = 30) -> tuple[int, float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.lines)):
                    if pred(self.lines[i][1]):
                        return i, self.lines[i][0], self.lines[i][1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"guard: nothing matching within {timeout}s; last: {self.lines[-3:]}")
                self.cond.wait(left)


class Monitor:
    """``ip monitor address`` in the namespace: when each address was deleted, seen from outside."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(["ip", "-n", ns, "monitor", "address"], stdout=subprocess.PIPE, text=True)
        self.times: dict[str, float] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.2)  # let it subscribe

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.startswith("Deleted "):
                with self.cond:
                    self.times[raw.split()[4].split("/")[0]] = time.time()
                    self.cond.notify_all()

    def deleted(self, address: str) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: address in self.times, timeout=30):
                raise SystemExit(f"ip monitor saw no deletion of {address}")
            return self.times[address]


def cli(ns: str | None, state: Path, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lockdown", *args, "--json"]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    env = {**os.environ, "LOCKDOWN_STATE_DIR": str(state), "PYTHONPATH": str(REPO), "SSH_CONNECTION": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"lockdown {' '.join(args)}: {out.stderr}")
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(key + ":"):
            return int(row.split()[1])
    return 0


def bench(ns: str, dev: str, container: Any, api: Any, state: Path, events: int, idle: float) -> None:
    tmp = state.parent
    (tmp / "strip.toml").write_text(f'name = "strip"\n[[steps]]\naction = "ipv6.strip"\ninterfaces = ["{dev}"]\n')
    (tmp / "pause.toml").write_text(
        f'name = "pause"\n[[steps]]\naction = "docker.pause"\ncontainer = "{container.name}"\n'
    )
    cli(ns, state, "run", str(tmp / "strip.toml"))
    cli(None, state, "run", str(tmp / "pause.toml"))
    guard = Guard(ns, state)
    try:
        seen = 0
        for source in ("net", "docker"):
            seen = max(seen, guard.wait(lambda d, s=source: d["event"] == "compared" and d["source"] == s)[0])
        results: dict[str, dict[str, list[float]]] = {
            k: {"j": [], "e": [], "r": [], "p": []} for k in ("address", "container")
        }
        monitor = Monitor(ns)
        try:
            for n in range(events):
                address = f"2001:db8:5::{n + 1:x}"
                t0 = time.time()
                sh("ip", "-n", ns, "addr", "add", f"{address}/64", "dev", dev, "nodad")
                results["address"]["p"].append((time.time() - t0) * 1000)
                seen, at, doc = guard.wait(lambda d: d["event"] == "drift" and d["kind"] == "address", seen + 1)
                results["address"]["r"].append((at - t0) * 1000)
                results["address"]["e"].append((monitor.deleted(address) - t0) * 1000)
                results["address"]["j"].append(float(doc["latency_ms"]))
        finally:
            monitor.proc.kill()
        for _ in range(events):
            t0 = time.time()
            api.unpause(container.id)
            results["container"]["p"].append((time.time() - t0) * 1000)
            while api.inspect_container(container.id)["State"]["Status"] != "paused":
                pass
            results["container"]["e"].append((time.time() - t0) * 1000)
            seen, at, doc = guard.wait(lambda d: d["event"] == "drift" and d["kind"] == "container", seen + 1)
            results["container"]["r"].append((at - t0) * 1000)
            results["container"]["j"].append(float(doc["latency_ms"]))
        print(f"{events} drift events of each kind, one at a time (ms)")
        for kind, peer in (("address", "ip addr add (process)"), ("container", "Docker API unpause call")):
            r = results[kind]
            print(line(f"{kind}: journaled (event -> held)", r["j"]))
            print(line(f"{kind}: end to end (change -> held)", r["e"]))
            print(line(f"{kind}: reported (drift line read)", r["r"]))
            print(line(f"{kind}: peer, {peer}", r["p"]))
            verdict = "met" if pct(r["e"], 99) <= 200 else "MISSED"
            print(f"  goal p99 <= 200 ms: {verdict}")
        pid = guard.proc.pid
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(idle)
        share = (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
        rss, hwm = status_kib(pid, "VmRSS") / 1024, status_kib(pid, "VmHWM") / 1024
        ok = "met" if share < 1 and rss < 60 else "MISSED"
        print(f"idle {idle:g} s: CPU {share:.2f} %   RSS {rss:.1f} MiB (peak {hwm:.1f} MiB)   goal <1 %, <60 MiB: {ok}")
    finally:
        guard.proc.terminate()
        guard.proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="10 events, 5 s idle")
    args = parser.parse_args()
    events, idle = (10, 5.0) if args.quick else (args.events, args.idle)
    import docker

    client = docker.from_env()
    ns, a, b = (f"lkd-{secrets.token_hex(3)}" for _ in range(3))
    sh("ip", "netns", "add", ns)
    container = None
    try:
        sh("ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b)
        for dev in (a, b, "lo"):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "addr", "add", "2001:db8:1::1/64", "dev", a, "nodad")
        container = client.containers.run(
            BUSYBOX, ["sleep", "3600"], name=f"lkd-{secrets.token_hex(3)}", detach=True, labels={"lkd.test": "bench"}
        )
        with tempfile.TemporaryDirectory(prefix="lkd-bench-guard-") as tmp:
            bench(ns, a, container, client.api, Path(tmp) / "state", events, idle)
    finally:
        if container is not None:
            container.remove(force=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
