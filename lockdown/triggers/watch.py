"""``lockdown watch``: count outside mail in a sliding minute and trigger a playbook.

Follows the mail container's log (``docker logs --follow``) or a log file,
parses Postfix lines (``lockdown.mail.parser``) and counts messages with a
recipient in a non-local domain (the Correlator's ``outside-recipient``
event, once per message) over the last 60 seconds. ``max_per_minute`` is
the most this server is allowed to send: when the count goes above it, the
watch triggers the configured route's playbook through the same dispatcher
and de-duplication store as ``serve``.

One crossing is one episode: the trigger key is the source plus the time the
count crossed, so while the count stays up the watch re-sends the same key
(recorded as a repeat in the incident's ``triggers.jsonl``, at most every
10 s) and never starts a second run. When the count falls below the
limit again the episode ends; a later crossing is a new trigger, which the
store still treats as a repeat while the route's incident is contained.

``on_signature``: one outside message from a Docker gateway address without
``sasl_username`` is enough (the postmortem's open relay through Docker's
userland proxy).

It survives log rotation (inode change or truncation), a container that
stops, restarts or is paused, and the Docker daemon going away and coming
back: it reconnects with a backoff and says what happens. After a
reconnect the daemon sends the log again from the last timestamp read
(``since`` is inclusive, and lines can share a timestamp once cut to
microseconds), so the lines already counted at that timestamp are skipped by
number, never by a ``<=`` test that would also drop new lines.

What the watch sees (lines read, messages in the window, the episodes) is
kept in ``<state>/triggers/watch-status.json``, rewritten at most twice a
second while it changes, so an operator (or a test) can tell "read, below
the limit" from "not read yet".
"""

from __future__ import annotations

import bisect
import json
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lockdown.errors import BadInput, LockdownError
from lockdown.mail.parser import Correlator, GatewayMatcher, LineSplitter, MessageEvent, default_gateways, parse_line
from lockdown.record.journal import utcnow
from lockdown.triggers.config import Route
from lockdown.triggers.dedup import EventLog
from lockdown.triggers.dispatch import Alert, Dispatcher, Outcome

WINDOW = 60.0
RESEND = 10.0  # seconds between repeats of one episode while the count stays up
RETRY = 5.0  # seconds before retrying a trigger that failed in a way worth a retry
READ_CHUNK = 1 << 16
STATUS_FILE = "watch-status.json"
STATUS_EVERY = 0.5  # seconds between rewrites of the status file while something changes


@dataclass
class WatchSettings:
    route: Route
    max_per_minute: int | None
    on_signature: bool
    container: str = "auto"
    log_file: Path | None = None
    local_domains: set[str] | None = None
    gateways: list[str] | None = None  # None: Docker's network gateways plus its default pools

    def check(self) -> None:
        if self.max_per_minute is None and not self.on_signature:
            raise BadInput(
                "nothing to watch for: give --max-per-minute N and/or --on-signature",
                "or set watch.max_per_minute / watch.on_signature in lockdown.toml",
            )
        if self.log_file is None and self.container in ("all", ""):
            raise BadInput(f"--container {self.container!r}: watch follows one container; name it, or use auto")


class RateWindow:
    """Event times in a sliding window; ``count(now)`` is how many are newer than ``now - seconds``."""

    def __init__(self, seconds: float = WINDOW) -> None:
        self.seconds = seconds
        self._times: list[float] = []

    def add(self, when: float, now: float) -> int:
        bisect.insort(self._times, when)
        return self.count(now)

    def count(self, now: float) -> int:
        cut = bisect.bisect_right(self._times, now - self.seconds)
        if cut:
            del self._times[:cut]
        return len(self._times)


class Backoff:
    def __init__(self, first: float = 1.0, most: float = 30.0) -> None:
        self.first = first
        self.most = most
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.most)
        return delay

    def reset(self) -> None:
        self.delay = self.first


@dataclass
class _Episode:
    reason: str  # "rate" | "signature"
    started: str  # UTC time of the crossing: the trigger's startsAt
    next_send: float = 0.0  # monotonic
    detail: dict[str, Any] = field(default_factory=dict)
    sent: int = 0


class Watcher:
    """Feeds log bytes through the parser and triggers the route. One thread drives it."""

    def __init__(
        self,
        settings: WatchSettings,
        dispatcher: Dispatcher,
        *,
        stop: threading.Event,
        log: EventLog,
        say: Callable[[str], None] | None = None,
    ) -> None:
        settings.check()
        self.settings = settings
        self.dispatcher = dispatcher
        self.stop = stop
        self.log = log
        self._say = say or (lambda text: None)
        self.splitter = LineSplitter()
        self.correlator = Correlator(settings.local_domains, max_open=50_000)
        self.gateway = GatewayMatcher(settings.gateways or default_gateways())
        self.window = RateWindow()
        self.counted: OrderedDict[str, None] = OrderedDict()
        self.signatures = RateWindow()
        self.episodes: dict[str, _Episode] = {}
        self.outcomes: list[Outcome] = []
        self.last_docker_time: datetime | None = None
        self._at_last_time = 0  # parsed lines read with exactly ``last_docker_time``
        self._replay: tuple[datetime, int] | None = None  # after a reconnect: (time, lines to skip at it)
        self.following: str | None = None
        self.connects = 0  # times the source was (re)opened: a reconnect shows here
        self.status_path: Path | None = log.path.parent  # <state>/triggers/, made by EventLog
        self._status_written: tuple[Any, ...] | None = None
        self._status_at = 0.0
        self.source = str(settings.log_file) if settings.log_file else f"container:{settings.container}"
        self.lines = 0

    # ------------------------------------------------------------ reporting
    def say(self, text: str, **fields: Any) -> None:
        self.log.write("watch", message=text, source=self.source, **fields)
        self._say(text)

    # ------------------------------------------------------------ lines
    def feed(self, chunk: bytes) -> None:
        for text in self.splitter.feed(chunk):
            self.feed_line(text)

    def flush(self) -> None:
        for text in self.splitter.flush():
            self.feed_line(text)

    def feed_line(self, text: str) -> None:
        line = parse_line(text)
        if line is None:
            return
        stamp = line.docker_time
        if stamp is not None:
            if self._replay is not None:
                last, skip = self._replay
                if stamp < last:
                    return  # sent again after a reconnect
                if stamp == last and skip > 0:
                    self._replay = (last, skip - 1)
                    return
                self._replay = None
            if self.last_docker_time is None or stamp > self.last_docker_time:
                self.last_docker_time = stamp
                self._at_last_time = 1
            elif stamp == self.last_docker_time:
                self._at_last_time += 1
        self.lines += 1
        for event in self.correlator.feed(line):
            if event.kind == "outside-recipient":
                self._outside(event, line.docker_time)

    def _outside(self, event: MessageEvent, docker_time: datetime | None) -> None:
        m = event.message
        key = m.queue_id
        if key in self.counted:
            return  # one message with several outside recipients counts once
        self.counted[key] = None
        if len(self.counted) > 100_000:
            self.counted.popitem(last=False)
        now = time.time()
        when = docker_time.timestamp() if docker_time is not None else now
        count = self.window.add(when, now)
        summary = {
            "queue_id": m.queue_id,
            "client": m.client_addr,
            "sasl_username": m.sasl_username,
            "sender": m.sender,
            "recipient": event.recipient.address if event.recipient else None,
        }
        limit = self.settings.max_per_minute
        if self.settings.on_signature and self.gateway(m.client_addr) and not m.sasl_username:
            self.signatures.add(when, now)
            self._episode("signature", {"message": summary, "why": "client is a Docker gateway, no sasl_username"})
        if limit is not None and count > limit:
            self._episode("rate", {"count": count, "max_per_minute": limit, "last_message": summary})
        self.tick()

    # ------------------------------------------------------------ triggering
    def _episode(self, reason: str, detail: dict[str, Any]) -> None:
        episode = self.episodes.get(reason)
        if episode is None:
            episode = _Episode(reason, utcnow(), detail=detail)
            self.episodes[reason] = episode
            if reason == "rate":
                self.say(
                    f"{detail['count']} outside messages in the last {WINDOW:g} s "
                    f"(limit {detail['max_per_minute']}): triggering {self.settings.route.alert}"
                )
            else:
                msg = detail["message"]
                self.say(
                    f"signature: message {msg['queue_id']} from gateway {msg['client']} without SASL to "
                    f"{msg['recipient']}: triggering {self.settings.route.alert}"
                )
        else:
            episode.detail = detail

    def tick(self) -> None:
        """End episodes whose condition is gone; send (or re-send) the ones due."""
        now = time.time()
        limit = self.settings.max_per_minute
        if "rate" in self.episodes and (limit is None or self.window.count(now) <= limit):
            ended = self.episodes.pop("rate")
            self.say(
                f"outside mail is back under the limit ({self.window.count(now)} in {WINDOW:g} s)",
                episode=ended.started,
            )
        if "signature" in self.episodes and not self.signatures.count(now):
            self.episodes.pop("signature")
        mono = time.monotonic()
        for episode in list(self.episodes.values()):
            if mono >= episode.next_send:
                self._send(episode, mono)
        self.write_status()

    def status(self) -> dict[str, Any]:
        """What the watch sees now (the content of ``watch-status.json``)."""
        now = time.time()
        return {
            "time": utcnow(),
            "pid": os.getpid(),
            "source": self.source,
            "following": self.following,
            "connects": self.connects,
            "lines": self.lines,
            "outside_in_window": self.window.count(now),
            "window_seconds": WINDOW,
            "max_per_minute": self.settings.max_per_minute,
            "on_signature": self.settings.on_signature,
            "signatures_in_window": self.signatures.count(now),
            "episodes": {e.reason: {"crossed_at": e.started, "sent": e.sent} for e in self.episodes.values()},
            "incidents": sorted({o.incident_id for o in self.outcomes if o.incident_id}),
        }

    def write_status(self, *, force: bool = False) -> None:
        """Rewrite the status file when something changed, at most every STATUS_EVERY seconds."""
        if self.status_path is None:
            return
        mono = time.monotonic()
        if not force and mono - self._status_at < STATUS_EVERY:
            return
        doc = self.status()
        changed = (
            doc["following"],
            doc["connects"],
            doc["lines"],
            doc["outside_in_window"],
            doc["signatures_in_window"],
            tuple(doc["episodes"]),
            tuple(doc["incidents"]),
        )
        if changed == self._status_written and not force:
            return
        self._status_at = mono
        self._status_written = changed
        path = self.status_path / STATUS_FILE
        tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(doc, sort_keys=True, indent=1) + "\n")
            os.replace(tmp, path)
        except OSError:
            pass  # the status file is for the operator; a full disk must not stop the watch

    def _send(self, episode: _Episode, mono: float) -> None:
        route = self.settings.route
        received = utcnow()
        payload = {
            "watch": {
                "source": self.source,
                "reason": episode.reason,
                "window_seconds": WINDOW,
                "crossed_at": episode.started,
                **episode.detail,
            }
        }
        alert = Alert(
            name=route.alert,
            status="firing",
            fingerprint=f"watch:{episode.reason}:{self.source}",
            starts_at=episode.started,
            raw=payload["watch"],
        )
        outcome = self.dispatcher.handle("watch", alert, payload=payload, received=received, t0=time.monotonic())
        self.outcomes.append(outcome)
        episode.sent += 1
        episode.next_send = mono + (RETRY if outcome.retry else RESEND)
        if outcome.result == "started":
            self.say(f"incident {outcome.incident_id} started ({outcome.reason})", incident_id=outcome.incident_id)
        elif outcome.retry or outcome.result == "failed":
            self.say(f"could not start {route.playbook}: {outcome.reason}; retrying in {RETRY:g} s")
        elif episode.sent == 1:
            self.say(
                f"incident {outcome.incident_id} already covers this ({outcome.reason})",
                incident_id=outcome.incident_id,
            )

    # ------------------------------------------------------------ sources
    def run(self) -> None:
        """Follow the configured source until ``stop`` is set."""
        if self.settings.log_file is not None:
            self.follow_file(self.settings.log_file)
        else:
            self.follow_docker(self.settings.container)

    def _pump(self, chunks: Iterable[bytes], close: Callable[[], None], *, flush: bool = True) -> bool:
        """Feed ``chunks`` (read in a helper thread) until they end (True) or stop is set (False).

        Errors raised while reading come out here. ``flush``: feed a last
        line without its newline when the chunks end (a log file), rather than
        dropping it (a Docker stream, which sends that line again in full).
        """
        q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=64)

        def reader() -> None:
            try:
                for chunk in chunks:
                    q.put(chunk)
                q.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the watching thread
                q.put(exc)

        threading.Thread(target=reader, name="lockdown-watch-reader", daemon=True).start()
        while not self.stop.is_set():
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                self.tick()
                continue
            if item is None:
                if flush:
                    self.flush()
                return True
            if isinstance(item, BaseException):
                raise item
            self.feed(item)
        close()
        return False

    def reopening(self) -> float | None:
        """Get ready to read a Docker log stream again; return its ``since`` (None: never read one).

        The daemon sends again every line from ``since`` on, inclusive; the
        ones already read at exactly that time are skipped by number. A line
        cut off by a broken stream comes again whole, so the part held is dropped.
        """
        self.splitter = LineSplitter()
        if self.last_docker_time is None:
            return None
        self._replay = (self.last_docker_time, self._at_last_time)
        return self.last_docker_time.timestamp()

    def follow_docker(self, spec: str) -> None:
        from lockdown import dockerapi

        backoff = Backoff()
        start = time.time() - WINDOW  # a restarted watch sees the last minute again
        waiting_for: str | None = None
        while not self.stop.is_set():
            try:
                refs = dockerapi.resolve_containers(spec)
                if len(refs) != 1:
                    raise BadInput(f"--container {spec!r} names {len(refs)} containers; watch follows one")
                ref = refs[0]
                if ref.status not in ("running", "paused"):
                    if waiting_for != ref.status:
                        self.say(f"container {ref.name} is {ref.status}; waiting for it to run")
                        waiting_for = ref.status
                    self.stop.wait(min(backoff.next(), 5.0))
                    continue
                if self.settings.gateways is None:
                    self.gateway = GatewayMatcher([*dockerapi.network_gateways(), *default_gateways()])
                since = self.reopening() or start
                follower = dockerapi.LogFollower(ref.id, ref.name, since=since)
                paused = " (paused: nothing to read until it is unpaused)" if ref.status == "paused" else ""
                self.say(f"following the log of container {ref.name} ({ref.id[:12]}){paused}")
                backoff.reset()
                waiting_for = None
                self.following = f"container {ref.name}"
                self.connects += 1
                self.write_status(force=True)
                if not self._pump(follower, follower.close, flush=False):
                    return
                self.following = None
                self.write_status(force=True)
                self.say(f"the log stream of {ref.name} ended (stopped, restarted or the daemon went away)")
            except LockdownError as exc:
                self.following = None
                self.write_status(force=True)
                dockerapi.reset_client()
                delay = backoff.next()
                self.say(f"{exc.message}; retrying in {delay:g} s")
                self.stop.wait(delay)

    def follow_file(self, path: Path) -> None:
        """Follow ``path`` like ``tail -F``: from its end, across rotation and truncation."""
        backoff = Backoff(0.5, 5.0)
        fh = None
        ident: tuple[int, int] | None = None
        first = True
        missing_said = False
        try:
            while not self.stop.is_set():
                if fh is None:
                    try:
                        fh = open(path, "rb")  # noqa: SIM115 - kept open across iterations
                    except OSError as exc:
                        if not missing_said:
                            self.say(f"cannot open {path}: {exc.strerror}; waiting for it")
                            missing_said = True
                        self.tick()
                        self.stop.wait(backoff.next())
                        continue
                    st = os.fstat(fh.fileno())
                    ident = (st.st_dev, st.st_ino)
                    self.following = f"file {path}"
                    self.connects += 1
                    self.write_status(force=True)
                    if first:
                        fh.seek(0, os.SEEK_END)
                        self.say(f"following {path} from its end")
                        first = False
                    else:
                        self.say(f"following the new {path} from its start")
                    backoff.reset()
                    missing_said = False
                data = fh.read(READ_CHUNK)
                if data:
                    self.feed(data)
                    continue
                self.tick()
                now_st: os.stat_result | None
                try:
                    now_st = os.stat(path)
                except FileNotFoundError:
                    now_st = None
                if now_st is None or (now_st.st_dev, now_st.st_ino) != ident:
                    rest = fh.read()  # what was written before the rename
                    if rest:
                        self.feed(rest)
                    self.flush()
                    fh.close()
                    fh = None
                    self.following = None
                    self.say(f"{path} was rotated" + ("" if now_st else " and is not there yet"))
                    continue
                if now_st.st_size < fh.tell():
                    self.say(f"{path} was truncated; reading it from the start")
                    self.flush()
                    fh.seek(0)
                    continue
                self.stop.wait(0.25)
        finally:
            if fh is not None:
                fh.close()
