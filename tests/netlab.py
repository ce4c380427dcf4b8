"""Real-kernel lab helpers: veth pairs inside a test's namespace, and state to compare.

Everything is created inside the namespace from the ``netns`` fixture, so
deleting the namespace (the fixture does, even on failure) removes it all.
State is read with ``ip -j`` and /proc, never through lockdown's own netlink
code: a test must not trust the code it checks.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import ip_json, run_cli, sh, unique

#: One ``ipv6.strip`` step on ``{dev}``: the containment most netns tests run.
STRIP = """
[[steps]]
id = "strip"
action = "ipv6.strip"
interfaces = ["{dev}"]
"""

LIFETIME_KEYS = ("valid_life_time", "preferred_life_time", "expires")
INFINITE = 4294967295


def nsexec(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def ipn(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "-n", ns, *args, check=check)


def veth(ns: str) -> tuple[str, str]:
    """A veth pair (both ends up) inside ``ns``; names are lkd-xxxxxx."""
    a, b = unique(), unique()
    ipn(ns, "link", "add", a, "type", "veth", "peer", "name", b)
    ipn(ns, "link", "set", a, "up")
    ipn(ns, "link", "set", b, "up")
    return a, b


def sysctl_path(dev: str, key: str) -> str:
    return f"/proc/sys/net/ipv6/conf/{dev}/{key}"


def get_sysctl(ns: str, dev: str, key: str) -> str:
    return nsexec(ns, "cat", sysctl_path(dev, key)).stdout.strip()


def set_sysctl(ns: str, dev: str, key: str, value: str) -> None:
    nsexec(ns, "sh", "-c", f"echo {value} > {sysctl_path(dev, key)}")


def addresses(ns: str) -> list[dict[str, Any]]:
    """Parsed ``ip -j -6 addr``: every interface with its addr_info, in kernel order."""
    out = []
    for link in ip_json("-6", "addr", netns=ns):
        out.append({"ifname": link["ifname"], "addr_info": link.get("addr_info", [])})
    return out


def global_addresses(ns: str, dev: str) -> list[str]:
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in addresses(ns)
        if link["ifname"] == dev
        for a in link["addr_info"]
        if a.get("scope") == "global"
    ]


def routes(ns: str) -> list[dict[str, Any]]:
    """Parsed ``ip -j -6 route show table all`` (local table included), sorted."""
    return sorted(
        ip_json("-6", "route", "show", "table", "all", netns=ns),
        key=lambda r: json.dumps({k: v for k, v in r.items() if k != "expires"}, sort_keys=True),
    )


def wait_settled(ns: str, timeout: float = 10.0) -> None:
    """Wait until no address is tentative (DAD finished), so states compare cleanly."""
    deadline = time.monotonic() + timeout
    while True:
        tentative = [a for link in addresses(ns) for a in link["addr_info"] if a.get("tentative")]
        if not tentative or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def wait_link_local(ns: str, devs: list[str], timeout: float = 10.0) -> None:
    """Wait until each of ``devs`` has a link-local address that finished DAD.

    The kernel adds it only once the carrier is seen (linkwatch may take up
    to a second after ``link set up``) and adds its local route after DAD, so
    a test comparing routes must not start earlier.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = {
            link["ifname"]
            for link in addresses(ns)
            for a in link["addr_info"]
            if a.get("scope") == "link" and not a.get("tentative")
        }
        if set(devs) <= ready:
            return
        time.sleep(0.1)
    raise AssertionError(f"no settled link-local address on {devs} after {timeout}s")


def state(ns: str, devs: list[str]) -> dict[str, Any]:
    """What a strip must give back: addresses, routes and the SLAAC sysctls of ``devs``."""
    wait_settled(ns)
    return {
        "addresses": addresses(ns),
        "routes": routes(ns),
        "sysctls": {f"{d}/{k}": get_sysctl(ns, d, k) for d in devs for k in ("accept_ra", "autoconf")},
    }


def unordered(st: dict[str, Any]) -> dict[str, Any]:
    """``st`` with each interface's addresses sorted: for when a kept address stayed in place
    while the others were re-added after it, which changes only their order."""
    out = dict(st)
    out["addresses"] = [
        {**link, "addr_info": sorted(link["addr_info"], key=lambda a: a["local"])} for link in st["addresses"]
    ]
    return out


def assert_same_state(before: Any, after: Any, slack: int = 60, path: str = "") -> None:
    """Deep equality, except that finite lifetimes may have gone down by up to ``slack`` seconds."""
    if isinstance(before, dict) and isinstance(after, dict):
        assert sorted(before) == sorted(after), f"{path}: keys {sorted(before)} != {sorted(after)}"
        for k in before:
            if k in LIFETIME_KEYS and before[k] != INFINITE:
                b, a = before[k], after[k]
                assert b - slack <= a <= b, f"{path}.{k}: lifetime {a} not within {slack}s below {b}"
            else:
                assert_same_state(before[k], after[k], slack, f"{path}.{k}")
    elif isinstance(before, list) and isinstance(after, list):
        assert len(before) == len(after), f"{path}: {len(before)} items != {len(after)}:\n{before}\n{after}"
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            assert_same_state(b, a, slack, f"{path}[{i}]")
    else:
        assert before == after, f"{path}: {before!r} != {after!r}"


def playbook(tmp_path: Path, body: str, name: str = "lab") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n{body}')
    return path


def lockdown(
    ns: str, state_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI inside ``ns``; SSH_* cleared unless the test sets them (the guard reads them)."""
    base = {"SSH_CONNECTION": "", "SSH_CLIENT": ""}
    base.update(env or {})
    return run_cli(*args, netns=ns, state_dir=state_dir, env=base)


def journal(state_dir: Path) -> list[dict[str, Any]]:
    """The journal of the only incident in ``state_dir``."""
    (incident,) = list((state_dir / "incidents").iterdir())
    return [json.loads(line) for line in (incident / "journal.jsonl").read_text().splitlines()]


def incident_dir(state_dir: Path) -> Path:
    (incident,) = list((state_dir / "incidents").iterdir())
    return incident


def veth_with_v6(ns: str, address: str = "2001:db8:1::1/64") -> tuple[str, str]:
    """A veth pair in ``ns`` whose first end holds the global ``address`` (what a strip removes)."""
    a0, a1 = veth(ns)
    ipn(ns, "addr", "add", address, "dev", a0, "nodad")
    return a0, a1


def run_strip(ns: str, state_dir: Path, tmp_path: Path, dev: str, name: str = "lab") -> dict[str, Any]:
    """Contain ``dev`` with the CLI (``lockdown run STRIP --json`` in ``ns``); returns the run's JSON."""
    pb = playbook(tmp_path, STRIP.format(dev=dev), name=name)
    run = lockdown(ns, state_dir, "run", str(pb), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    return doc


def drifts(state_dir: Path, incident_id: str | None = None) -> list[dict[str, Any]]:
    """The ``drift`` entries of ``incident_id``'s journal (default: the only incident's)."""
    if incident_id is None:
        entries = journal(state_dir)
    else:
        path = state_dir / "incidents" / incident_id / "journal.jsonl"
        entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in entries if e["phase"] == "drift"]
