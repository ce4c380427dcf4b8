"""``snapshot.host``: who and what this host is, as JSON evidence."""

from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockdown import hostfacts
from lockdown.actions.base import Action, EvidenceFile, StepContext, UndoRecord


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def host_facts() -> dict[str, Any]:
    """Hostname, kernel, boot id, machine id, uptime, users and load."""
    boot = hostfacts.boot_time()
    uname = platform.uname()
    return {
        "hostname": socket.gethostname(),
        "fqdn": socket.getfqdn(),
        "kernel": {"system": uname.system, "release": uname.release, "version": uname.version},
        "machine": uname.machine,
        "boot_id": _read("/proc/sys/kernel/random/boot_id"),
        "machine_id": _read("/etc/machine-id"),
        "boot_time": boot,
        "uptime_seconds": round(time.time() - boot, 1),
        "load": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "users": hostfacts.logged_in_users(),
        "collected_at": time.time(),
    }


@dataclass(frozen=True)
class Params(EvidenceFile):
    file: str = "host.json"


class SnapshotHost(Action[Params]):
    """Record hostname, kernel, uptime, boot id, logged-in users and load.

    Parameters:
      file: evidence file name (default ``host.json``).

    Example::

        [[steps]]
        action = "snapshot.host"
    """

    name = "snapshot.host"
    Params = Params

    def describe(self) -> str:
        return f"record host identity, users and load to evidence/{self.params.file}"

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        facts = host_facts()
        entry = ctx.write_json(self.params.file, facts)
        ctx.note(
            f"{facts['hostname']} up {facts['uptime_seconds'] / 3600:.1f} h, "
            f"load {facts['load'][0]:.2f}, {len(facts['users'])} session(s) -> {entry.path}"
        )
