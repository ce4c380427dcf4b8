"""From an alert to a run: route, de-duplicate, ``Run.start()``, then execute in the background.

Shared by ``serve`` (one call per alert in a webhook) and ``watch`` (one call
when the threshold is crossed). The caller names an alert; the config alone
decides the playbook and its vars.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockdown.engine.playbook import Playbook, load_playbook, parse_playbook
from lockdown.engine.privileges import check_all
from lockdown.engine.runner import Run, preflight
from lockdown.errors import (
    ActionError,
    BadInput,
    Busy,
    LockdownError,
    PlaybookError,
    Unavailable,
)
from lockdown.record.drift import KINDS as DRIFT_KINDS
from lockdown.record.drift import read_drifts
from lockdown.record.incident import list_incident_ids, read_incident
from lockdown.triggers.config import Config, Route
from lockdown.triggers.dedup import DedupStore, EventLog, append_trigger, dedup_key, identity_key

#: Histogram buckets for seconds from trigger to contained.
BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Alert:
    """One alert out of a webhook payload (or from the watch)."""

    name: str | None  # labels.alertname
    status: str  # "firing" | "resolved"
    fingerprint: str | None = None
    starts_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What happened to one alert. ``retry`` marks failures worth a retry (503)."""

    alert: str | None
    result: str  # started | duplicate | resolved | ignored | busy | unavailable | failed | shutting-down
    incident_id: str | None = None
    reason: str | None = None
    retry: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alert": self.alert, "result": self.result}
        if self.incident_id:
            out["incident_id"] = self.incident_id
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class _StateDirCounts:
    """What /metrics reads from the state dir: active incidents, held steps, drift by kind."""

    active: int
    held: dict[str, int]
    drift: dict[str, int]


class Metrics:
    """Counters and one histogram, rendered in the Prometheus text format."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self.triggers: Counter[tuple[str, str]] = Counter()
        self.http: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()
        self.incidents_started = 0
        self.bucket_counts = [0] * len(BUCKETS)
        self.hist_sum = 0.0
        self.hist_count = 0
        self._active: tuple[float, _StateDirCounts] = (0.0, _StateDirCounts(0, {}, {}))

    def trigger(self, source: str, result: str) -> None:
        with self._lock:
            self.triggers[(source, result)] += 1
            if result == "started":
                self.incidents_started += 1

    def response(self, code: int) -> None:
        with self._lock:
            self.http[str(code)] += 1

    def run_finished(self, status: str, seconds: float | None) -> None:
        with self._lock:
            self.runs[status] += 1
            if seconds is None:
                return
            self.hist_sum += seconds
            self.hist_count += 1
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[i] += 1

    def containment_active(self) -> int:
        """Incidents in the state dir whose containment is active (cached for 2 s)."""
        return self._state_dir().active

    def held_steps(self) -> dict[str, int]:
        """Steps waiting for an operator decision, by decision (``release-queue``, ``reopen-anyway``
        for steps restore's gate kept): the one reader's ``held``, as ``status`` shows them."""
        return self._state_dir().held

    def drift_totals(self) -> dict[str, int]:
        """Drift entries journaled in the state dir, by kind (cached for 2 s).

        Counted from the journals, not from this process's guard: a ``lockdown
        guard`` run by hand journals drift too, and a restarted serve must not
        start again from zero. Journals only grow, so the sum is a counter.
        """
        return self._state_dir().drift

    def _state_dir(self) -> _StateDirCounts:
        now = time.monotonic()
        stamp, cached = self._active
        if now - stamp < 2.0 and stamp:
            return cached
        active, held, drift = 0, Counter[str](), dict.fromkeys(DRIFT_KINDS, 0)
        for incident_id in list_incident_ids(self.root):
            try:
                view = read_incident(self.root, incident_id)
            except (LockdownError, OSError, ValueError):
                continue
            active += int(view.containment_active)
            held.update(s.held for s in view.held if s.held)
            for entry in read_drifts(view.chain.entries):
                kind = entry.get("kind")
                if kind in drift:
                    drift[str(kind)] += 1
        counts = _StateDirCounts(active, dict(sorted(held.items())), drift)
        self._active = (now, counts)
        return counts

    def render(self) -> str:
        counts = self._state_dir()
        active, held, drift = counts.active, counts.held, counts.drift
        with self._lock:
            lines = [
                "# HELP lockdown_triggers_total Alerts received, by source and what was done with them.",
                "# TYPE lockdown_triggers_total counter",
            ]
            for (source, result), n in sorted(self.triggers.items()):
                lines.append(f'lockdown_triggers_total{{source="{source}",result="{result}"}} {n}')
            lines += [
                "# HELP lockdown_http_responses_total HTTP responses, by status code.",
                "# TYPE lockdown_http_responses_total counter",
            ]
            for code, n in sorted(self.http.items()):
                lines.append(f'lockdown_http_responses_total{{code="{code}"}} {n}')
            lines += [
                "# HELP lockdown_incidents_started_total Incidents started by this process.",
                "# TYPE lockdown_incidents_started_total counter",
                f"lockdown_incidents_started_total {self.incidents_started}",
                "# HELP lockdown_runs_finished_total Runs finished, by status.",
                "# TYPE lockdown_runs_finished_total counter",
            ]
            for status, n in sorted(self.runs.items()):
                lines.append(f'lockdown_runs_finished_total{{status="{status}"}} {n}')
            lines += [
                "# HELP lockdown_containment_active Incidents whose containment is active (applied, not restored).",
                "# TYPE lockdown_containment_active gauge",
                f"lockdown_containment_active {active}",
                "# HELP lockdown_steps_held Steps left in place until an operator decides, by decision "
                "(reopen-anyway: kept by restore's relay probe).",
                "# TYPE lockdown_steps_held gauge",
                *(f'lockdown_steps_held{{decision="{d}"}} {n}' for d, n in held.items()),
                "# HELP lockdown_drift_total Containment undone, then re-asserted by the guard (journaled), by kind.",
                "# TYPE lockdown_drift_total counter",
                *(f'lockdown_drift_total{{kind="{kind}"}} {n}' for kind, n in sorted(drift.items())),
                "# HELP lockdown_trigger_to_contained_seconds Seconds from receiving the trigger to the run's end.",
                "# TYPE lockdown_trigger_to_contained_seconds histogram",
            ]
            for bound, n in zip(BUCKETS, self.bucket_counts, strict=True):
                lines.append(f'lockdown_trigger_to_contained_seconds_bucket{{le="{bound:g}"}} {n}')
            lines.append(f'lockdown_trigger_to_contained_seconds_bucket{{le="+Inf"}} {self.hist_count}')
            lines.append(f"lockdown_trigger_to_contained_seconds_sum {self.hist_sum:.6f}")
            lines.append(f"lockdown_trigger_to_contained_seconds_count {self.hist_count}")
        return "\n".join(lines) + "\n"


@dataclass
class _Source:
    text: str
    path: Path
    display: str


class Dispatcher:
    """Routes alerts to runs. One per process; thread-safe."""

    def __init__(
        self,
        config: Config,
        root: Path,
        *,
        log: EventLog,
        stop: threading.Event | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.root = root
        self.log = log
        #: What start-up found wrong but did not refuse (Docker away): shown by serve and watch.
        self.startup_problems: list[LockdownError] = []
        self.stop = stop or threading.Event()
        self.metrics = metrics or Metrics(root)
        self.store = DedupStore(root, on_unreadable=self._unreadable)
        self._sources: dict[str, _Source] = {}
        self._runs: set[threading.Thread] = set()
        self._runs_lock = threading.Lock()
        #: Told the incident id when one of this process's runs ends (serve's guard picks it up).
        self.on_run_end: list[Callable[[str], None]] = []

    # ------------------------------------------------------------ start-up
    def prepare(self, only: str | None = None) -> None:
        """Load and validate every route's playbook (or only route ``only``), check privileges, open the store.

        Raises PlaybookError (exit 2) naming the config, the route and the
        playbook's own message, or PrivilegeError (exit 4).
        """
        needs_docker = False
        for route in self.config.routes:
            if only is not None and route.alert != only:
                continue
            try:
                pb = load_playbook(route.playbook, dict(route.vars))
            except BadInput as exc:
                raise PlaybookError(f"{self.config.path}: {route.where}: {exc.message}", exc.hint) from None
            self._sources[route.alert] = _Source(pb.text, pb.path, pb.display)
            # root and CAP_NET_ADMIN now; the Docker daemon may come and go, it is checked per run.
            check_all(
                (req, f"{self.config.path}: {route.where}: {pb.display} {step.where} ({step.action_name})")
                for step in pb.steps
                for req in step.action.requires
                if req != "docker"
            )
            needs_docker = needs_docker or any("docker" in step.action.requires for step in pb.steps)
        self.store.open()
        if needs_docker:
            self.warm_docker()
        if not self.startup_problems:
            self.warm_up()

    def warm_docker(self) -> None:
        """Import the Docker SDK and open the client now, so the first alert does not pay for it.

        The first alert after start-up is the one that matters, and cold it
        took about 120 ms more (the SDK import, the client, the first
        connection). A daemon that is away now does not stop start-up (each
        run checks it again); it is kept in ``startup_problems`` for the CLI to show.
        """
        from lockdown import dockerapi

        try:
            dockerapi.ping("lockdown")
        except LockdownError as exc:
            self.log.write("docker-unavailable-at-start", error=exc.message, hint=exc.hint)
            self.startup_problems.append(exc)

    def warm_up(self) -> None:
        """Walk every route's preflight once now, so the first alert finds everything loaded.

        Cold, the first alert's preflight imported pyroute2 (~0.2 s) and psutil
        and read the host for the first time, all before the first change.
        Preflight changes nothing. A route that would be refused now (its
        container not started yet) is logged, not an error: each run checks again.
        """
        for alert, src in self._sources.items():
            route = self.config.route_for(alert)
            if route is None:
                continue
            try:
                preflight(parse_playbook(src.text, src.path, src.display, dict(route.vars)))
            except LockdownError as exc:
                self.log.write("warm-up", route=alert, result=exc.message, hint=exc.hint)

    def _unreadable(self, incident_id: str, why: str) -> None:
        self.log.write("incident-unreadable", incident_id=incident_id, error=why, decision="not a duplicate")

    def _key(self, route: Route, alert: Alert) -> tuple[str | None, float | None]:
        """The dedup key and, for an identity key, until when it holds (Unix time)."""
        if alert.fingerprint:
            return dedup_key(route.alert, alert.fingerprint, alert.starts_at), None
        window = self.config.server.generic_dedup_window
        if window <= 0:
            return None, None
        return identity_key(route.alert, alert.raw), time.time() + window

    def playbook(self, route: Route) -> Playbook:
        """A fresh Playbook (fresh action objects) from the text validated at start-up."""
        src = self._sources[route.alert]
        return parse_playbook(src.text, src.path, src.display, dict(route.vars))

    # ------------------------------------------------------------ dispatch
    def handle(
        self,
        source: str,
        alert: Alert,
        *,
        payload: Any,
        received: str,
        t0: float,
        remote: str | None = None,
    ) -> Outcome:
        """Decide what ``alert`` does; start a run if it is new and firing."""
        outcome = self._handle(source, alert, payload, received, t0, remote)
        self.metrics.trigger(source, outcome.result)
        self.log.write(
            "trigger",
            source=source,
            remote=remote,
            status=alert.status,
            fingerprint=alert.fingerprint,
            startsAt=alert.starts_at,
            **outcome.as_dict(),
        )
        return outcome

    def _handle(
        self, source: str, alert: Alert, payload: Any, received: str, t0: float, remote: str | None
    ) -> Outcome:
        route = self.config.route_for(alert.name) if alert.name else None
        if route is None or route.alert not in self._sources:
            return Outcome(alert.name, "ignored", reason="no route for this alert")
        key, expires = self._key(route, alert)
        note = {
            "source": source,
            "route": route.alert,
            "status": alert.status,
            "fingerprint": alert.fingerprint,
            "startsAt": alert.starts_at,
            "alert": alert.raw,
            "received": received,
            "remote": remote,
        }
        if alert.status != "firing":
            with self.store.exclusive():
                incident_id = self.store.incident_for_key(key) or self.store.last_incident(route.alert)
            if incident_id is None:
                return Outcome(alert.name, "resolved", reason="no incident for this alert; nothing to record")
            try:
                append_trigger(self.root, incident_id, {**note, "result": "resolved"})
            except (OSError, LockdownError) as exc:
                return Outcome(alert.name, "failed", incident_id, f"cannot record: {exc}", retry=True)
            return Outcome(alert.name, "resolved", incident_id, "recorded; restoring is a human decision")
        if self.stop.is_set():
            return Outcome(alert.name, "shutting-down", reason="lockdown is shutting down", retry=True)
        with self.store.exclusive():
            repeat = self.store.find_repeat(route.alert, key)
            if repeat is None:
                return self._start(source, route, (key, expires), alert, payload, received, t0, remote, note)
        # recorded outside the section, so repeats in a flood fsync in parallel
        return self._duplicate(alert, repeat[0], repeat[1], note)

    def _start(
        self,
        source: str,
        route: Route,
        keyed: tuple[str | None, float | None],
        alert: Alert,
        payload: Any,
        received: str,
        t0: float,
        remote: str | None,
        note: dict[str, Any],
    ) -> Outcome:
        """Start a run. Called inside ``store.exclusive()``."""
        key, expires = keyed
        trigger = {
            "kind": source,
            "route": route.alert,
            "dedup_key": key,
            "dedup_expires": expires,
            "fingerprint": alert.fingerprint,
            "startsAt": alert.starts_at,
            "payload": payload,
            "received": received,
            "remote": remote,
        }
        # Root and CAP_NET_ADMIN were checked by prepare() at start-up; Docker is asked by the
        # preflight of each step that uses it (resolving its containers) and fails the run the
        # same way (503, retry) if it has gone. The ping in between cost 4 ms before the cut.
        run = Run(self.playbook(route), self.root, trigger=trigger, stop=self.stop, privileges_checked=True)
        run.emit = lambda kind, data: self._on_event(run, kind, data)
        try:
            incident_id = run.start()
        except Busy as exc:
            holder, holder_route = self.store.route_of_holder()
            if holder is not None and holder_route == route.alert:
                return self._duplicate(alert, holder, "the route's incident is still running", note)
            return Outcome(alert.name, "busy", reason=exc.message, retry=True)
        except (Unavailable, ActionError, BadInput) as exc:
            # the daemon or the container may be back in a moment: worth a retry
            return Outcome(alert.name, "unavailable", reason=exc.message, retry=True)
        except LockdownError as exc:
            return Outcome(alert.name, "failed", reason=exc.message)
        thread = threading.Thread(target=self._execute, args=(run, t0), name=f"run-{incident_id}", daemon=False)
        with self._runs_lock:
            self._runs.add(thread)
        thread.start()  # the lock passes with the run; execute() releases it
        try:
            self.store.record(route.alert, key, incident_id, expires=expires)
        except OSError as exc:  # incident.json holds the key; open() adopts it after a restart
            self.log.write("dedup-record-failed", incident_id=incident_id, error=str(exc))
        return Outcome(alert.name, "started", incident_id, f"playbook {run.playbook.name}")

    def _duplicate(self, alert: Alert, incident_id: str, reason: str, note: dict[str, Any]) -> Outcome:
        try:
            append_trigger(self.root, incident_id, {**note, "result": "duplicate", "reason": reason})
        except (OSError, LockdownError) as exc:
            self.log.write("trigger-record-failed", incident_id=incident_id, error=str(exc))
        return Outcome(alert.name, "duplicate", incident_id, reason)

    def _on_event(self, run: Run, kind: str, data: dict[str, Any]) -> None:
        if kind in ("step-end", "interrupted", "note"):
            self.log.write(kind, incident_id=run.incident_id, **data)

    def _execute(self, run: Run, t0: float) -> None:
        try:
            result = run.execute()
        except Exception as exc:  # noqa: BLE001 - a thread's boundary: log it, count it
            self.log.write("run-error", incident_id=run.incident_id, error=f"{type(exc).__name__}: {exc}")
            self.metrics.run_finished("error", None)
        else:
            seconds = time.monotonic() - t0
            contained = result.status in ("contained", "partial")
            self.metrics.run_finished(result.status, seconds if contained else None)
            self.log.write(
                "run-end",
                incident_id=result.incident_id,
                status=result.status,
                seconds_since_trigger=round(seconds, 4),
                steps={s.id: s.state for s in result.steps},
            )
        finally:
            with self._runs_lock:
                self._runs.discard(threading.current_thread())
            for hook in self.on_run_end:
                hook(str(run.incident_id))

    def running(self) -> list[threading.Thread]:
        with self._runs_lock:
            return list(self._runs)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for background runs; True when none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self.running():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not self.running()
