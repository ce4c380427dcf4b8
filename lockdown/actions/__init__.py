"""The action registry: one line per action, imported only when used.

Values are ``module:Class`` strings so that ``lockdown --help`` and the
webhook server do not pay for importing docker or pyroute2 until a step
needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from lockdown.actions.base import Action

REGISTRY: dict[str, str] = {
    "sysctl.set": "lockdown.actions.sysctl_set:SysctlSet",
    "snapshot.host": "lockdown.actions.snapshot_host:SnapshotHost",
    "wait": "lockdown.actions.wait:Wait",
    "snapshot.connections": "lockdown.actions.snapshot_connections:SnapshotConnections",
    "snapshot.processes": "lockdown.actions.snapshot_processes:SnapshotProcesses",
    "snapshot.network": "lockdown.actions.snapshot_network:SnapshotNetwork",
    "ipv6.strip": "lockdown.actions.ipv6_strip:Ipv6Strip",
    "docker.pause": "lockdown.actions.docker_pause:DockerPause",
    "docker.stop": "lockdown.actions.docker_stop:DockerStop",
    "docker.inspect": "lockdown.actions.docker_inspect:DockerInspect",
    "postfix.hold_queue": "lockdown.actions.postfix_hold:PostfixHoldQueue",
    "logs.container": "lockdown.actions.logs_container:LogsContainer",
    "logs.files": "lockdown.actions.logs_files:LogsFiles",
    "nft.block": "lockdown.actions.nft_block:NftBlock",
}


def get_action(name: str) -> type[Action[Any]]:
    """The action class registered as ``name``. Raises KeyError when unknown."""
    module_name, _, cls_name = REGISTRY[name].partition(":")
    cls: type[Action[Any]] = getattr(importlib.import_module(module_name), cls_name)
    return cls
