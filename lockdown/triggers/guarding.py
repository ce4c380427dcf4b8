"""``serve`` keeps containment true: the guard (``lockdown/guard.py``) in a thread of its own.

A webhook that starts a run and then trusts the host reports "contained"
while a router advertisement or a colleague's ``docker unpause`` has opened
the relay again. So serve runs one guard over every incident whose
containment is active: the ones in the state dir when it starts (a restarted
serve picks them up again, whoever ran them) and each one its own runs
contain (told by the dispatcher when a run ends, rather than found at the
next rescan). The guard lets an incident go once its restore begins.

A Docker daemon that restarts does not stop the guard (it reconnects and
compares again by itself, ``guard-lost``/``guard-reconnected``). A guard that
fails otherwise (an event source that cannot be opened again) is started
again after ``RESTART_DELAY`` seconds; it compares the live state with the
journals at start, so nothing that happened in between is missed.
Missing privileges stop guarding for good: retrying would not grant them.

Drift can be announced with a JSON POST to ``[guard] notify_url``: from a
thread of its own, through a bounded queue, each with a bounded timeout, so a
slow or dead receiver never delays a re-assertion.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lockdown.errors import LockdownError, PrivilegeError
from lockdown.triggers.config import GuardConfig
from lockdown.triggers.dedup import EventLog

#: Seconds before a guard whose event source died is started again.
RESTART_DELAY = 2.0
#: Notifications waiting to be sent at most; beyond that they are dropped (and logged).
NOTIFY_QUEUE = 256
#: Guard events worth a line in server.log (``compared``: once per start and per reconnect;
#: ``lost``/``reconnected``: an event source went away and came back).
LOGGED = ("guarding", "compared", "drift", "released", "warning", "lost", "reconnected")


class DriftNotifier:
    """POSTs each drift as JSON to ``url`` from its own thread; never blocks the caller."""

    def __init__(self, url: str, timeout: float, log: EventLog) -> None:
        self.url = url
        self.timeout = timeout
        self.log = log
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(NOTIFY_QUEUE)
        self._thread = threading.Thread(target=self._send_all, name="lockdown-notify", daemon=True)
        self._thread.start()

    def notify(self, doc: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(doc)
        except queue.Full:
            self.log.write("notify-dropped", url=self.url, reason=f"{NOTIFY_QUEUE} notifications waiting")

    def close(self) -> None:
        """Stop after what is queued (each bounded by the timeout); the thread is a daemon anyway."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return
        self._thread.join(timeout=self.timeout + 1)

    def _send_all(self) -> None:
        while (doc := self._queue.get()) is not None:
            self._send(doc)

    def _send(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, sort_keys=True).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # http(s) only: config checks
                resp.read(65536)
        except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError is a URLError
            reason = getattr(exc, "reason", None) or exc
            self.log.write("notify-failed", url=self.url, incident_id=doc.get("incident_id"), error=str(reason)[:300])


class GuardService:
    """One ``Guard`` over every active incident, for as long as serve runs."""

    def __init__(self, root: Path, settings: GuardConfig, log: EventLog, stop: threading.Event) -> None:
        self.root = root
        self.settings = settings
        self.log = log
        self.stop = stop
        self.notifier = (
            DriftNotifier(settings.notify_url, settings.notify_timeout, log) if settings.notify_url else None
        )
        self._guard: Any = None
        self._thread = threading.Thread(target=self._run, name="lockdown-guard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def incident_ended(self, incident_id: str) -> None:
        """A run of serve's own ended: guard its incident now if its containment is active."""
        guard = self._guard
        if guard is not None:
            guard.rescan()

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        if self.notifier is not None:
            self.notifier.close()

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind in LOGGED:
            self.log.write(f"guard-{kind}", **data)
        if kind == "drift" and self.notifier is not None:
            self.notifier.notify({"event": "drift", **data})

    def _run(self) -> None:
        from lockdown.guard import Guard

        while not self.stop.is_set():
            self._guard = Guard(self.root, None, on_event=self._on_event, stop=self.stop, timer=self.settings.timer)
            self.log.write("guard-start", timer=self.settings.timer)
            try:
                self._guard.run()
            except PrivilegeError as exc:
                self.log.write("guard-stopped", error=exc.message, hint=exc.hint, restart=False)
                return
            except (LockdownError, OSError) as exc:
                message = exc.message if isinstance(exc, LockdownError) else str(exc)
                self.log.write("guard-stopped", error=message[:500], restart=True)
            except Exception as exc:  # noqa: BLE001 - a thread's boundary: log it, start again
                self.log.write("guard-stopped", error=f"{type(exc).__name__}: {exc}"[:500], restart=True)
            finally:
                self._guard = None
            if self.stop.wait(RESTART_DELAY):
                return
