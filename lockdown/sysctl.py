"""Kernel parameters under /proc/sys: the one reader and writer.

Shared by ``sysctl.set`` and ``ipv6.strip`` (accept_ra, autoconf), so that
no action imports another. Reads and writes the sysctls of the network
namespace the process runs in.
"""

from __future__ import annotations

import re
from pathlib import Path

from lockdown.errors import ActionError, BadInput, PrivilegeError

PROC_SYS = Path("/proc/sys")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/@+-]*$")


def sysctl_path(name: str) -> Path:
    """``net.ipv6.conf.lkd-a.accept_ra`` -> /proc/sys/net/ipv6/conf/lkd-a/accept_ra.

    As in sysctl(8), a name with a slash is taken as a path, so interface
    names with dots (``eth0.100``) can be written ``net/ipv6/conf/eth0.100/accept_ra``.
    Raises BadInput for a name that is not a sysctl name (``..`` included).
    """
    if not _NAME_RE.match(name) or ".." in name:
        raise BadInput(f"invalid sysctl name {name!r}")
    rel = name if "/" in name else name.replace(".", "/")
    return PROC_SYS / rel


def read_sysctl(name: str) -> str:
    """The current value, whitespace-normalised. Raises BadInput if there is no such key."""
    path = sysctl_path(name)
    try:
        return " ".join(path.read_text().split())
    except FileNotFoundError:
        raise BadInput(f"no such sysctl {name!r} ({path} does not exist)") from None


def write_sysctl(name: str, value: str) -> None:
    """Write ``value``. Raises PrivilegeError (not root), ActionError (gone, refused)."""
    path = sysctl_path(name)
    try:
        path.write_text(value + "\n")
    except PermissionError:
        raise PrivilegeError(f"cannot write sysctl {name}: permission denied", "run as root") from None
    except FileNotFoundError:
        raise ActionError(f"sysctl {name} disappeared ({path})") from None
    except OSError as exc:
        raise ActionError(f"cannot set sysctl {name} to {value!r}: {exc.strerror}") from None
