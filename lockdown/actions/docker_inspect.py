"""``docker.inspect``: the container's configuration, processes, changes and ports as evidence."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lockdown import dockerapi
from lockdown.actions.base import StepContext, UndoRecord
from lockdown.actions.containers import ContainerAction, ContainerParams
from lockdown.errors import ActionError


def network_view(data: dict[str, Any]) -> dict[str, Any]:
    """Networks (address, gateway, aliases) and published ports with their HostIp."""
    settings = data.get("NetworkSettings") or {}
    ports = []
    for cport, bindings in sorted((settings.get("Ports") or {}).items()):
        if not bindings:
            ports.append({"container_port": cport, "published": False})
            continue
        for b in bindings:
            host_ip = b.get("HostIp", "")
            ports.append(
                {
                    "container_port": cport,
                    "published": True,
                    "host_ip": host_ip,
                    "host_port": b.get("HostPort"),
                    "all_ipv4": host_ip in ("", "0.0.0.0"),
                    "all_ipv6": host_ip in ("", "::"),
                }
            )
    networks = {}
    for net, info in sorted((settings.get("Networks") or {}).items()):
        info = info or {}
        networks[net] = {
            k: info.get(k)
            for k in (
                "NetworkID", "IPAddress", "IPPrefixLen", "Gateway", "GlobalIPv6Address",
                "GlobalIPv6PrefixLen", "IPv6Gateway", "MacAddress", "Aliases",
            )
        }
    host_config = data.get("HostConfig") or {}
    return {
        "container": data.get("Name", "").lstrip("/"),
        "network_mode": host_config.get("NetworkMode"),
        "ports": ports,
        "networks": networks,
        "port_bindings": host_config.get("PortBindings") or {},
    }


@dataclass(frozen=True)
class Params(ContainerParams):
    daemon: bool = True


@dataclass
class _Asked:
    """The slow questions of one step, asked in worker threads: diff per container, info, version."""

    pool: ThreadPoolExecutor
    diffs: dict[str, Future[list[dict[str, Any]]]]
    info: Future[dict[str, Any]] | None
    version: Future[dict[str, Any]] | None

    @classmethod
    def start(cls, refs: list[Any], *, daemon: bool) -> _Asked:
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="docker-inspect")
        return cls(
            pool,
            {ref.id: pool.submit(dockerapi.diff, ref.id, ref.name) for ref in refs},
            pool.submit(dockerapi.daemon_info) if daemon else None,
            pool.submit(dockerapi.daemon_version) if daemon else None,
        )


class DockerInspect(ContainerAction[Params]):
    """Record the container's inspect JSON, processes, filesystem diff, networks and ports.

    Read-only. Writes, per container, ``docker/<container>/inspect.json``,
    ``top.json`` (running or paused containers), ``diff.json`` (files added,
    changed or deleted against the image; Docker is asked for it as soon as
    the steps that close the path have run, since it takes ~0.3-0.5 s to
    answer),
    ``network.json`` (networks and
    published ports with their HostIp: ``0.0.0.0``/``::`` means every
    address, the IPv6 path included), and once per step the daemon's
    ``docker/info.json`` and ``docker/version.json``. With container =
    "stack", also ``docker/stack.json``: the recognised stack, why, its
    containers by role, its network and that network's gateway (the address
    Postfix logs proxied clients as).

    Parameters:
      {ContainerParams}
      daemon: also record the daemon's info and version (default true).

    Example::

        [[steps]]
        id = "container"
        action = "docker.inspect"
        container = "auto"
    """

    name = "docker.inspect"
    Params = Params

    _asked: _Asked | None = None  # set by prefetch, taken by apply

    def describe(self) -> str:
        return "record inspect, top, diff, networks and ports of " + self.params.target_text()

    def prefetch(self) -> None:
        """Ask for the diffs (and the daemon's info and version) as soon as the path is closed."""
        if self._asked is None:
            self._asked = _Asked.start(self.resolve(), daemon=self.params.daemon)

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        """``docker diff`` walks the container's filesystem layer and is the slow call here (about
        0.3-0.5 s on the lab): it and the daemon's info and version are asked in worker threads,
        from ``prefetch`` (once the path is closed, see ``Run._prefetch``) or else first thing here, while
        inspect and top run; the files are still written in the same order, from this thread."""
        refs = list(self.resolve())
        asked = self._asked or _Asked.start(refs, daemon=self.params.daemon)
        self._asked = None
        with asked.pool:
            diffs, info, version = asked.diffs, asked.info, asked.version
            failures = [message for ref in refs if (message := self._container(ctx, ref, diffs[ref.id]))]
            if self.stack is not None:
                ctx.write_json("docker/stack.json", self.stack.as_dict())
                ctx.result["stack"] = self.stack.kind.name
                ctx.result["gateway"] = self.stack.gateway
                network = self.stack.network.name if self.stack.network else "?"
                ctx.note(f"stack: {self.stack.label}; network {network}, "
                         f"gateway {self.stack.gateway or 'unknown'}; because {self.stack.why()}")
            if info is not None and version is not None:
                ctx.write_json("docker/info.json", info.result())
                ctx.write_json("docker/version.json", version.result())
                ctx.result["daemon_version"] = version.result().get("Version")
        if failures:
            raise ActionError("; ".join(failures))

    @staticmethod
    def _container(ctx: StepContext, ref: Any, diff: Future[list[dict[str, Any]]]) -> str | None:
        """One container's inspect, network view, processes and diff; the failure message, if any."""
        failures = []
        base = f"docker/{ref.name}"
        data = dockerapi.inspect(ref.id, ref.name)
        ctx.write_json(f"{base}/inspect.json", data)
        net = network_view(data)
        ctx.write_json(f"{base}/network.json", net)
        status = data["State"]["Status"]
        if status in ("running", "paused"):
            try:
                ctx.write_json(f"{base}/top.json", dockerapi.top(ref.id, ref.name))
            except ActionError as exc:
                failures.append(exc.message)
        else:
            ctx.note(f"{ref.name} is {status}: no process list")
        try:
            changes = diff.result()
            ctx.write_json(f"{base}/diff.json", changes)
        except ActionError as exc:
            failures.append(exc.message)
            changes = []
        published = [
            f"{p['host_ip'] or '*'}:{p['host_port']}->{p['container_port']}" for p in net["ports"] if p["published"]
        ]
        ctx.note(
            f"{ref.name}: {status}, {len(changes)} changed path(s), "
            f"published {', '.join(published) or 'nothing'}"
        )
        return "; ".join(failures) or None
