"""Docker's networking as this engine has it, for the tests and for bench/ (no pytest here).

Never assume 172.17.0.1 or 172.16.0.0/12: Docker picks the bridge's subnet
from its address pools, and a host whose 172.17/16 is taken gets another one.
Nor that a published port is the same on IPv4 and IPv6 (``v6_host_port``).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import subprocess
from dataclasses import dataclass
from typing import Any

#: What docker-mailserver's PERMIT_DOCKER=network trusts, as in the postmortem.
DOCKER_DEFAULT_POOL = "172.16.0.0/12"


@dataclass(frozen=True)
class Bridge:
    """Docker's default bridge as this engine has it: never assumed to be 172.17.0.1."""

    gateway: str  # IPv4: what Postfix sees for a client that docker-proxy forwards
    subnet: str
    #: What a docker-mailserver-like ``mynetworks`` trusts: 172.16.0.0/12 (PERMIT_DOCKER=network)
    #: when the bridge is inside it, else the bridge's own subnet, so the lab is vulnerable anywhere.
    trusted: str


@functools.cache
def docker_bridge() -> Bridge:
    """The default bridge's IPv4 gateway and subnet, read with the product's own reading
    (``dockerapi.gateways_from_ipam``: the subnet's first address when IPAM names no
    gateway, as Debian's docker.io 20.10 leaves it)."""
    from lockdown import dockerapi

    out = subprocess.run(["docker", "network", "inspect", "bridge"], check=True, capture_output=True, text=True)
    nets = json.loads(out.stdout)
    configs = [c for c in nets[0]["IPAM"].get("Config") or [] if ":" not in c.get("Subnet", ":")]
    assert configs, f"the bridge network has no IPv4 subnet: {nets[0]['IPAM']}"
    gateway = dockerapi.gateways_from_ipam({"Config": configs[:1]})[0]
    subnet = configs[0]["Subnet"]
    inside = ipaddress.ip_network(subnet).subnet_of(ipaddress.ip_network(DOCKER_DEFAULT_POOL))
    return Bridge(gateway=gateway, subnet=subnet, trusted=DOCKER_DEFAULT_POOL if inside else subnet)


def mynetworks() -> str:
    """``mynetworks`` of a vulnerable lab Postfix (an open relay for the bridge): loopback and ``trusted``."""
    return f"127.0.0.0/8 {docker_bridge().trusted}"


def v6_host_port(container: Any, cport: str = "25/tcp") -> int:
    """The host port docker-proxy listens on at ``::``: with a random host port, docker.io 20.10
    may give the IPv6 binding another port than the IPv4 one (docs/engines.md)."""
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"][cport]
    return int(next((b["HostPort"] for b in bindings if b["HostIp"] == "::"), bindings[0]["HostPort"]))
