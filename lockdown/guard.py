"""``lockdown guard``: keep an incident's containment true while it is active.

Router advertisements, DHCPv6 and network managers re-add IPv6 addresses
(and some reset ``accept_ra``); ``docker compose up -d``, a restart policy or
a colleague's ``docker unpause`` resume the mail container. The guard reads
what each active ``ipv6.strip`` and ``docker.pause`` step contained from the
incident's journal, compares the live state with it once at start and after
every reconnect of an event source, and then follows events:

* netlink (IPv6 addresses, IPv6 routes, links): a global address that
  appears on a stripped interface and is not covered by the step's ``keep``
  is removed again. ``accept_ra``/``autoconf`` are not netlink events, so
  they are re-read on every address, route or link event of a stripped
  interface (an RA that slips through adds an address and routes, which
  are events) and on the slow timer (``Guard.timer`` seconds, 30 by default).
* Docker (container start, unpause, restart): a container of the incident
  that runs again is paused again; a container that runs with the Compose
  project and service labels of an incident container that is gone (or
  stopped) is the recreated one: it is paused, and its id is journaled
  (``intent-update`` of the step), so that restore resumes it.

Nothing else is touched: only the interfaces a step targeted, only the
containers of the incident. Each re-assertion is journaled as a ``drift``
entry (``record/drift.py``). The guard holds no lock while idle; before a
re-assertion it takes the state-dir lock and reads the journal, and once a
restore of the incident has begun it stops guarding that incident for good.

The guard never prints and never handles signals: progress goes to
``on_event``, and the caller stops it by setting ``stop``.
"""

from __future__ import annotations

import copy
import ipaddress
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from lockdown import dockerapi, netlink
from lockdown.actions.ipv6_strip import ADDR_PROTO_NAMES, describe_address
from lockdown.engine.lock import StateLock, read_holder
from lockdown.engine.privileges import check_all
from lockdown.errors import BadInput, Busy, LockdownError, PrivilegeError
from lockdown.hostfacts import network_managers as suspect_managers
from lockdown.record import incident as inc
from lockdown.record.drift import Drift, append_drift
from lockdown.record.journal import Journal, read_journal
from lockdown.sysctl import read_sysctl, write_sysctl

EventHandler = Callable[[str, dict[str, Any]], None]
#: Phases that mean "a restore of this incident has begun": the guard lets go.
RESTORE_PHASES = ("undo-intent", "restore-end")
GUARDED_ACTIONS = ("ipv6.strip", "docker.pause")
#: How often the idle loop looks at the stop flag (the core never handles signals itself).
STOP_POLL = 0.5


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ------------------------------------------------------------ what to guard


@dataclass
class Interface:
    """A stripped interface: its global addresses stay away, its sysctls stay at what the step set."""

    step: str
    ifname: str
    keep: list[str]
    sysctls: dict[str, str]

    def keeps(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(c, strict=False) for c in self.keep)


@dataclass
class Container:
    """A container the step paused; ``compose`` is (project, service) when Compose made it."""

    step: str
    id: str
    name: str
    compose: tuple[str, str] | None = None


@dataclass
class Target:
    """One incident under guard, as its journal says."""

    incident_id: str
    path: Path
    interfaces: list[Interface] = field(default_factory=list)
    containers: list[Container] = field(default_factory=list)
    undo: dict[str, dict[str, Any]] = field(default_factory=dict)  # step id -> current undo record
    since: float = 0.0  # when the run started (for Docker's event log)
    released: bool = False

    def describe(self) -> str:
        parts = [f"ipv6.strip on {i.ifname}" for i in self.interfaces]
        parts += [f"docker.pause of {c.name}" for c in self.containers]
        return ", ".join(parts) or "nothing"


def restore_begun(entries: Iterable[dict[str, Any]]) -> bool:
    return any(e.get("phase") in RESTORE_PHASES for e in entries)


def load_target(root: Path, incident_id: str) -> Target | None:
    """The guardable steps of an incident, or None when its containment is not active
    (never applied, already restored, or a restore has begun)."""
    view = inc.read_incident(root, incident_id)
    if not view.containment_active or restore_begun(view.chain.entries):
        return None
    started = next((e.get("time") for e in view.chain.entries if e.get("phase") == "run-start"), None)
    target = Target(incident_id, view.path)
    if isinstance(started, str):
        target.since = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
    for s in view.steps:
        if not s.needs_undo or s.held or s.action not in GUARDED_ACTIONS or not s.undo:
            continue
        target.undo[s.id] = s.undo
        if s.action == "ipv6.strip":
            for iface in s.undo.get("interfaces", []):
                wanted = {key: "0" for key in iface.get("sysctls", {})}
                target.interfaces.append(Interface(s.id, iface["ifname"], list(s.undo.get("keep", [])), wanted))
        else:
            for entry in s.undo.get("containers", []):
                if entry.get("paused_by_lockdown"):
                    target.containers.append(Container(s.id, entry["id"], entry["name"]))
    return target if (target.interfaces or target.containers) else None


# ------------------------------------------------------------ the guard


class Released(Exception):
    """A restore of the incident has begun: stop guarding it."""


class Guard:
    """Guards ``incidents`` (None: every incident with active containment, rescanned on the timer).

    Raises BadInput from ``run`` when a named incident has nothing to guard.
    """

    def __init__(
        self,
        root: Path,
        incidents: list[str] | None,
        *,
        on_event: EventHandler | None = None,
        stop: threading.Event | None = None,
        timer: float = 30.0,
    ) -> None:
        self.root = root
        self.named = incidents
        self.emit = on_event or (lambda kind, data: None)
        self.stop = stop or threading.Event()
        self.timer = timer
        self.targets: dict[str, Target] = {}
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._sources: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Guard until ``stop`` is set, or until every named incident is restored."""
        self._scan(initial=True)
        targets = list(self.targets.values())
        check_all(  # before anything is followed: a guard that cannot re-assert must not run
            [("root", f"guarding ipv6.strip of incident {t.incident_id}") for t in targets if t.interfaces]
            + [("docker", f"guarding docker.pause of incident {t.incident_id}") for t in targets if t.containers]
        )
        next_tick = time.monotonic() + self.timer
        try:
            while not self.stop.is_set():
                if self.named is not None and not self.targets:
                    self.emit("done", {"reason": "no incident left to guard"})
                    return
                self._start_sources()
                if time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + self.timer
                try:  # wake at least every STOP_POLL seconds to see ``stop``
                    wait = max(0.0, min(next_tick - time.monotonic(), STOP_POLL))
                    source, item = self._queue.get(timeout=wait)
                except queue.Empty:
                    continue
                self._dispatch(source, item)
        finally:
            self._close_sources()

    def rescan(self) -> None:
        """Look for new incidents now, not at the next tick (``serve``, when one of its runs ends).

        Safe from any thread: it only queues a request for the guard's own loop.
        """
        self._queue.put(("scan", None))

    def _scan(self, initial: bool = False) -> None:
        ids = self.named if self.named is not None else inc.list_incident_ids(self.root)
        for incident_id in ids:
            if incident_id in self.targets:
                continue
            target = load_target(self.root, incident_id)
            if target is None:
                if initial and self.named is not None:
                    raise BadInput(
                        f"incident {incident_id} has no active containment to guard "
                        "(not run, restored, or a restore has begun)",
                        f"see `lockdown status {incident_id}`",
                    )
                continue
            self._fill_compose(target)
            self.targets[incident_id] = target
            self.emit("guarding", {"incident_id": incident_id, "what": target.describe()})
            if not initial:
                self._compare(target, "net", "new incident")
                self._compare(target, "docker", "new incident")

    def _start_sources(self) -> None:
        targets = list(self.targets.values())
        if "net" not in self._sources and any(t.interfaces for t in targets):
            self._spawn("net", netlink.NetlinkWatch())
        if "docker" not in self._sources and any(t.containers for t in targets):
            self._spawn("docker", dockerapi.DockerEvents())

    def _spawn(self, name: str, source: Any) -> None:
        self._sources[name] = source

        def pump() -> None:
            try:
                for event in source:
                    self._queue.put((name, event))
            except Exception as exc:  # noqa: BLE001 - a dead source must stop the guard, not blind it
                self._queue.put(("error", exc))

        thread = threading.Thread(target=pump, name=f"guard-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _close_sources(self) -> None:
        for source in self._sources.values():
            source.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _tick(self) -> None:
        """The slow timer: sysctls (no netlink event for them), new incidents with --all."""
        if self.named is None:
            self._scan()
        source = {"timer": f"every {self.timer:g} s"}
        for target in list(self.targets.values()):
            for iface in target.interfaces:
                self._guarded(target, partial(self._check_sysctls, target, iface, None, source))

    def _dispatch(self, source: str, item: Any) -> None:
        if source == "error":
            raise item
        if source == "scan":
            if self.named is None:
                self._scan()
            return
        if self._source_state(source, item):
            return
        handler = self._on_net if source == "net" else self._on_docker
        for target in list(self.targets.values()):
            self._guarded(target, partial(handler, target, item))

    def _source_state(self, source: str, item: Any) -> bool:
        """Say when an event source is lost and when it is back (once per source, not per
        incident); True when ``item`` is only that news. A ``resync`` after a loss goes on to
        the comparison of every incident: events may have been missed while it was away."""
        kind = item.action if source == "docker" else item.kind
        if kind == "lost":
            self.emit("lost", {"source": source, "reason": item.reason})
            return True
        if kind == "resync" and item.reason != "start":
            self.emit("reconnected", {"source": source, "reason": item.reason})
        return False

    def _guarded(self, target: Target, fn: Callable[[], Any]) -> None:
        """Run one check of ``target``: a restore lets it go; a failed re-assertion (a container
        that vanished, Docker down for a moment) is reported and guarding goes on. Missing
        privileges stop the guard: it could not hold anything."""
        try:
            fn()
        except Released:
            self._release(target)
        except PrivilegeError:
            raise
        except LockdownError as exc:
            self.emit("warning", {"incident_id": target.incident_id, "message": exc.message})

    def _release(self, target: Target) -> None:
        target.released = True
        self.targets.pop(target.incident_id, None)
        self.emit("released", {"incident_id": target.incident_id, "reason": "a restore has begun"})

    # ------------------------------------------------------------ locking + journal

    def _locked(self, target: Target, fn: Callable[[], list[Drift]]) -> list[Drift]:
        """Run ``fn`` (check, re-assert) under the state-dir lock and journal its drift.

        Raises Released when a restore of the incident holds the lock or has
        journaled that it began.
        """
        lock = StateLock(self.root, "guard")
        while True:
            try:
                lock.acquire()
                break
            except Busy:
                holder = read_holder(self.root)
                if holder.get("operation") == "restore" and holder.get("incident") == target.incident_id:
                    raise Released() from None
                if self.stop.wait(0.05):
                    return []
        try:
            lock.update(target.incident_id)
            if restore_begun(read_journal(target.path).entries):
                raise Released()
            drifts = fn()
            if drifts:
                journal = Journal.open(target.path)
                try:
                    for drift in drifts:
                        append_drift(journal, drift)
                finally:
                    journal.close()
        finally:
            lock.release()
        for drift in drifts:
            self.emit("drift", {"incident_id": target.incident_id, **drift.fields()})
        return drifts

    # ------------------------------------------------------------ IPv6

    def _on_net(self, target: Target, event: netlink.NetEvent) -> None:
        if event.kind == "resync":
            self._compare_now(target, "net", {"compare": event.reason})
            return
        for iface in target.interfaces:
            if event.ifname != iface.ifname:
                continue
            source = {"netlink": event.as_dict()}
            if event.kind == "addr-new" and event.addr is not None and self._strippable(iface, event):
                self._check_addresses(target, iface, event.received, source, only=event.addr)
            elif event.kind == "link-new":
                self._check_addresses(target, iface, event.received, source)
            self._check_sysctls(target, iface, event.received, source)

    @staticmethod
    def _strippable(iface: Interface, event: netlink.NetEvent) -> bool:
        return (
            event.family == netlink.AF_INET6
            and event.scope == netlink.SCOPE_GLOBAL
            and event.address is not None
            and not iface.keeps(event.address)
        )

    def _check_addresses(
        self,
        target: Target,
        iface: Interface,
        since: float | None,
        source: dict[str, Any],
        only: netlink.Address | None = None,
    ) -> None:
        """Remove strippable addresses: ``only`` the one a notification announced (no dump on
        the hot path: a delete that finds nothing is a no-op), or every one a dump finds."""

        def reassert() -> list[Drift]:
            t0 = time.time() if since is None else since
            drifts = []
            for addr in [only] if only is not None else self._live_strippable(iface):
                if not netlink.delete_address(iface.ifname, addr.address, addr.prefixlen):
                    continue
                origin = ADDR_PROTO_NAMES.get(addr.proto or 0)
                extra = {"origin": origin} if origin else {}
                drifts.append(self._drift(
                    iface.step, "ipv6.strip", "address", t0, {**source, **extra}, iface.ifname,
                    f"{describe_address(addr)} appeared on {iface.ifname}"
                    + (f" (added by {origin})" if origin else ""),
                    f"removed {addr.cidr} from {iface.ifname}",
                ))
            if drifts and "netlink" in source:  # the kernel names no sender for addresses
                who = suspect_managers()
                for drift in drifts:
                    drift.source["suspects"] = who
            return drifts

        if since is not None or self._live_strippable(iface):
            self._locked(target, reassert)

    @staticmethod
    def _live_strippable(iface: Interface) -> list[netlink.Address]:
        try:
            addrs = netlink.dump_addresses(netlink.AF_INET6, ifname=iface.ifname)
        except netlink.NoSuchInterface:
            return []
        return [a for a in addrs if a.scope == netlink.SCOPE_GLOBAL and not iface.keeps(a.address)]

    def _check_sysctls(
        self, target: Target, iface: Interface, since: float | None, source: dict[str, Any]
    ) -> None:
        def differing() -> dict[str, str]:
            out = {}
            for key, wanted in iface.sysctls.items():
                try:
                    value = read_sysctl(f"net/ipv6/conf/{iface.ifname}/{key}")
                except BadInput:  # the interface is gone: nothing to hold
                    return {}
                if value != wanted:
                    out[key] = value
            return out

        def reassert() -> list[Drift]:
            t0 = time.time() if since is None else since
            drifts = []
            for key, value in differing().items():
                wanted = iface.sysctls[key]
                write_sysctl(f"net/ipv6/conf/{iface.ifname}/{key}", wanted)
                drifts.append(self._drift(
                    iface.step, "ipv6.strip", "sysctl", t0, source, iface.ifname,
                    f"{iface.ifname}: {key} was set back to {value}",
                    f"set {key} to {wanted} again",
                ))
            return drifts

        if differing():
            self._locked(target, reassert)

    # ------------------------------------------------------------ Docker

    def _fill_compose(self, target: Target) -> None:
        """Each container's Compose identity, from the daemon (or its event log if it is gone)."""
        for c in target.containers:
            try:
                data = dockerapi.inspect_or_none(c.id)
                labels = ((data or {}).get("Config") or {}).get("Labels")
                if data is None:
                    labels = dockerapi.past_labels(c.id, target.since)
            except LockdownError:
                continue  # the daemon is down: the resync after it is back fills it in
            c.compose = dockerapi.compose_identity(labels)

    def _on_docker(self, target: Target, event: dockerapi.DockerEvent) -> None:
        if event.action == "resync":
            self._compare_now(target, "docker", {"compare": event.reason})
            return
        if event.action not in ("start", "unpause", "restart"):
            return
        source = {"docker": {"action": event.action, "actor": event.id, "attributes": event.attributes}}
        for c in target.containers:
            if c.id == event.id:
                self._repause(target, c, event.time, source)
                return
        identity = dockerapi.compose_identity(event.attributes)
        for c in target.containers:
            if identity is not None and c.compose == identity:
                self._adopt(target, c, event.id, event.time, source)
                return

    def _repause(self, target: Target, c: Container, since: float | None, source: dict[str, Any]) -> None:
        def reassert() -> list[Drift]:
            t0 = time.time() if since is None else since
            data = dockerapi.inspect_or_none(c.id)
            status = ((data or {}).get("State") or {}).get("Status")
            if status not in ("running", "restarting"):
                return []
            dockerapi.pause(c.id, c.name)
            return [self._drift(
                c.step, "docker.pause", "container", t0, source, c.name,
                f"{c.name} was {status} again", f"paused {c.name} again",
            )]

        self._locked(target, reassert)

    def _adopt(
        self, target: Target, old: Container, new_id: str, since: float | None, source: dict[str, Any]
    ) -> None:
        """A container with ``old``'s Compose labels runs while ``old`` is gone or stopped: the recreated one."""

        def reassert() -> list[Drift]:
            t0 = time.time() if since is None else since
            before = dockerapi.inspect_or_none(old.id)
            if before is not None and before["State"]["Status"] in ("running", "paused", "restarting"):
                return []  # the original is still there: a second replica is not ours to touch
            data = dockerapi.inspect_or_none(new_id)
            if data is None or data["State"]["Status"] not in ("running", "restarting"):
                return []
            ref = dockerapi.ref_from_inspect(data)
            self._record_new_id(target, old, data)  # journal first: restore must know the new id
            dockerapi.pause(ref.id, ref.name)
            was = "gone" if before is None else before["State"]["Status"]
            drift = self._drift(
                old.step, "docker.pause", "container", t0, source, ref.name,
                f"{old.name} ({old.id[:12]}, now {was}) was recreated as {ref.name} ({ref.id[:12]}), running",
                f"paused {ref.name}; restore resumes {ref.id[:12]}",
            )
            old.id, old.name = ref.id, ref.name
            return [drift]

        self._locked(target, reassert)

    def _record_new_id(self, target: Target, old: Container, data: dict[str, Any]) -> None:
        """Journal the step's undo record with the new container in place of the old one
        (an ``intent-update``, as an action amends its own record), before anything else."""
        record = copy.deepcopy(target.undo[old.step])
        ref = dockerapi.ref_from_inspect(data)
        for entry in record["containers"]:
            if entry["id"] == old.id:
                entry.update(
                    id=ref.id, name=ref.name, status="running", ports=list(ref.ports),
                    restart_policy=(data.get("HostConfig") or {}).get("RestartPolicy") or {},
                    recreated_from=old.id,
                )
        journal = Journal.open(target.path)
        try:
            journal.append("intent-update", step=old.step, action="docker.pause", undo=record, by="guard")
        finally:
            journal.close()
        target.undo[old.step] = record

    def _find_recreated(self, c: Container) -> Iterator[str]:
        if c.compose is None:
            return
        project, service = c.compose
        for item in dockerapi.list_containers(f"{dockerapi.COMPOSE_PROJECT}={project}"):
            labels = item.get("Labels") or {}
            same = labels.get(dockerapi.COMPOSE_SERVICE) == service and item["Id"] != c.id
            if same and item.get("State") in ("running", "restarting"):
                yield str(item["Id"])

    # ------------------------------------------------------------ comparisons

    def _compare(self, target: Target, which: str, reason: str) -> None:
        """Live state against the journal, once: at start and after each reconnect."""
        self._guarded(target, lambda: self._compare_now(target, which, {"compare": reason}))

    def _compare_now(self, target: Target, which: str, source: dict[str, Any]) -> None:
        if which == "net":
            for iface in target.interfaces:
                self._check_addresses(target, iface, None, source)
                self._check_sysctls(target, iface, None, source)
        else:
            self._compare_containers(target, source)
        # after the comparison: from here on, every change is an event
        self.emit("compared", {"incident_id": target.incident_id, "source": which, "reason": source["compare"]})

    def _compare_containers(self, target: Target, source: dict[str, Any]) -> None:
        self._fill_compose(target)
        for c in list(target.containers):
            data = dockerapi.inspect_or_none(c.id)
            if data is not None:
                if data["State"]["Status"] in ("running", "restarting"):
                    self._repause(target, c, None, source)
                continue
            for new_id in list(self._find_recreated(c)):
                self._adopt(target, c, new_id, None, source)
                break

    @staticmethod
    def _drift(
        step: str, action: str, kind: str, t0: float, source: dict[str, Any], what: str, changed: str, did: str
    ) -> Drift:
        return Drift(
            step=step, action=action, kind=kind, changed=changed, did=did, event_time=_iso(t0),
            latency_ms=round((time.time() - t0) * 1000, 1), source=source, target=what,
        )
