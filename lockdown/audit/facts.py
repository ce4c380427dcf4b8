"""What the audit knows about the host itself: addresses, dockerd's configuration, the firewall.

Addresses come from the kernel through lockdown.netlink, processes and the
IPv6 switch from lockdown.hostfacts; both read the caller's own network
namespace. Nothing here changes anything: ``iptables-save`` is a dump.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockdown import hostfacts, jsonsafe, netlink

DAEMON_JSON = Path("/etc/docker/daemon.json")
UFW_CONF = Path("/etc/ufw/ufw.conf")
#: The host address quoted in a fix when the host has no global IPv4 address of its own.
DOC_ADDRESS = "203.0.113.5"


@dataclass(frozen=True)
class HostAddress:
    ifname: str
    address: str

    @property
    def public(self) -> bool:
        return ipaddress.ip_address(self.address).is_global


def host_ipv6_addresses() -> list[HostAddress]:
    """The host's global-scope IPv6 addresses (kernel scope, so ULAs and 2001:db8:: count)."""
    out = []
    for a in netlink.dump_addresses(netlink.AF_INET6):
        if a.scope != netlink.SCOPE_GLOBAL or "dadfailed" in a.flag_names:
            continue
        out.append(HostAddress(a.ifname, str(ipaddress.ip_address(a.address))))
    return out


def host_ipv4_address() -> str | None:
    """One global IPv4 address of the host, to write a concrete fix (``ADDR:25:25``)."""
    for a in netlink.dump_addresses(netlink.AF_INET):
        ip = ipaddress.ip_address(a.address)
        if a.scope == netlink.SCOPE_GLOBAL and not a.ifname.startswith(("docker", "br-", "veth", "lkd-")):
            return str(ip)
    return None


def ipv6_off(v6: Sequence[HostAddress]) -> str | None:
    """Why no IPv6 client can reach this host (IPv6 disabled and no global IPv6 address), or None.

    ``net.ipv6.conf.all.disable_ipv6 = 1`` turns IPv6 off on every interface
    that exists, but an interface created later takes ``default``'s value: a
    global IPv6 address still present (``v6``) means IPv6 is not off after all.
    """
    why = hostfacts.ipv6_disabled()
    return why if why and not v6 else None


def is_host_address(address: str) -> bool:
    """True when ``address`` is configured on one of this host's interfaces (any scope, any family)."""
    try:
        want = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return any(ipaddress.ip_address(a.address) == want for a in netlink.dump_addresses(None))


@dataclass(frozen=True)
class DaemonConfig:
    """What dockerd runs with: daemon.json merged with its command-line flags (flags win)."""

    path: str
    userland_proxy: bool
    ipv6: bool
    ip6tables: bool
    source: list[str]

    def describe(self) -> str:
        return (
            f"userland-proxy={str(self.userland_proxy).lower()}, ipv6={str(self.ipv6).lower()}, "
            f"ip6tables={str(self.ip6tables).lower()} ({'; '.join(self.source)})"
        )


def _bool_flag(flags: dict[str, str], name: str) -> bool | None:
    if name not in flags:
        return None
    return flags[name].lower() not in ("false", "0", "no")


def _read_daemon_json(path: Path, source: list[str]) -> dict[str, Any]:
    """daemon.json as a dict ({} when absent or unreadable: Docker's defaults), saying which in ``source``."""
    try:
        conf = jsonsafe.loads(path.read_text() or "{}")
    except FileNotFoundError:
        source.append(f"{path} absent")
        return {}
    except (OSError, ValueError) as exc:  # jsonsafe.JSONError is a ValueError
        source.append(f"{path} unreadable: {exc}")
        return {}
    source.append(f"{path} read")
    return conf if isinstance(conf, dict) else {}


def daemon_config(daemon_json: Path = DAEMON_JSON, dockerd_argv: Sequence[str] | None = None) -> DaemonConfig:
    """Read daemon.json (``--config-file`` of the running dockerd if it names one) and dockerd's flags.

    Defaults are Docker's: userland-proxy on, ipv6 off, ip6tables off before Docker 27.
    """
    if dockerd_argv is None:
        dockerd_argv = hostfacts.argv_of("dockerd")
    flags = hostfacts.parse_flags(dockerd_argv[1:]) if dockerd_argv else {}
    path = Path(flags.get("config-file") or daemon_json)
    source: list[str] = []
    conf = _read_daemon_json(path, source)
    values = {
        "userland-proxy": bool(conf.get("userland-proxy", True)),
        "ipv6": bool(conf.get("ipv6", False)),
        "ip6tables": bool(conf.get("ip6tables", False)),
    }
    for key in values:
        flag = _bool_flag(flags, key)
        if flag is not None:
            values[key] = flag
            source.append(f"dockerd --{key}={str(flag).lower()}")
    if dockerd_argv:
        source.append("dockerd: " + " ".join(dockerd_argv)[:300])
    return DaemonConfig(str(path), values["userland-proxy"], values["ipv6"], values["ip6tables"], source)


def ufw_enabled(path: Path = UFW_CONF) -> bool:
    try:
        text = path.read_text()
    except OSError:
        return False
    return any(ln.strip().replace('"', "").lower() == "enabled=yes" for ln in text.splitlines())


def iptables_save(tool: str = "iptables-save") -> str | None:
    """``iptables-save -t filter`` + ``-t nat``: a read-only dump; None when unavailable."""
    exe = shutil.which(tool)
    if exe is None:
        return None
    out = []
    for table in ("filter", "nat"):
        try:
            proc = subprocess.run([exe, "-t", table], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        out.append(proc.stdout)
    return "\n".join(out)
