"""Checks for what an action needs, run before anything changes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from lockdown.errors import PrivilegeError

CAP_NET_ADMIN = 12


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_root(who: str) -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(f"{who} needs root", "run it with sudo, as root")


def check_net_admin(who: str) -> None:
    if os.geteuid() != 0 and not _effective_caps() & (1 << CAP_NET_ADMIN):
        raise PrivilegeError(f"{who} needs CAP_NET_ADMIN", "run it with sudo, as root")


def check_docker(who: str) -> None:
    from lockdown import dockerapi

    dockerapi.ping(who)


CHECKS: dict[str, Callable[[str], None]] = {
    "root": check_root,
    "net_admin": check_net_admin,
    "docker": check_docker,
}


def check_all(needs: Iterable[tuple[str, str]]) -> None:
    """``needs`` is (requirement, who) pairs; the first missing one raises."""
    done: set[str] = set()
    for requirement, who in needs:
        if requirement in done:
            continue
        CHECKS[requirement](who)
        done.add(requirement)
