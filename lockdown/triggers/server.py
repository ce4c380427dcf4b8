"""``lockdown serve``: the alert webhook (Alertmanager, Grafana, generic).

Endpoints::

    POST /v1/alerts/alertmanager   Alertmanager webhook_config payload, version "4"
    POST /v1/alerts/grafana        Grafana webhook contact point payload
    POST /v1/alerts/generic        {"alert": NAME, "status": "firing", "fingerprint": ..., ...}
    GET  /healthz                  {"status": "ok"}
    GET  /metrics                  Prometheus text format

Answers: 202 (a run started; the incident id is in the body), 200 (duplicate,
resolved, ignored), 400 (malformed JSON or payload, with the reason), 401
(authentication failed; nothing echoed), 404, 405, 411, 413 (body too large),
500 (a failure not worth a retry), 503 (worth a retry: another incident holds
the state dir, the Docker daemon is away, the server is full or shutting down).

Robustness (see :class:`WebhookServer`): one asyncio loop reads every
connection; each has ``server.request_timeout`` seconds from accept to send its
whole request, so slow clients cost a coroutine each and never a worker.
Whole, authenticated alert requests go to a bounded pool of workers
(``server.workers``, ``server.queue`` more waiting); beyond that, or beyond
``server.max_connections`` open connections, 503 at once. Bodies are bounded
(``server.max_body``, ``server.max_alerts`` alerts, ``WEBHOOK_MAX_DEPTH``
levels). One request per connection (HTTP/1.0 style, ``Connection: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gc
import hashlib
import hmac
import http
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockdown import jsonsafe
from lockdown.errors import Unavailable
from lockdown.record.journal import utcnow
from lockdown.triggers.config import Config, ServerConfig
from lockdown.triggers.dedup import EventLog
from lockdown.triggers.dispatch import Alert, Dispatcher, Metrics, Outcome
from lockdown.triggers.guarding import GuardService

ALERTMANAGER = "/v1/alerts/alertmanager"
GRAFANA = "/v1/alerts/grafana"
GENERIC = "/v1/alerts/generic"
POST_PATHS = {ALERTMANAGER: "alertmanager", GRAFANA: "grafana", GENERIC: "generic"}
GET_PATHS = ("/healthz", "/metrics")
RETRY_AFTER = "5"
#: Bodies nest at most this deep: lockdown wraps a payload in its own records (incident.json's
#: trigger.payload, the journal's run-start), which must stay within jsonsafe.MAX_DEPTH to be read back.
WEBHOOK_MAX_DEPTH = jsonsafe.MAX_DEPTH - 16
#: Signed requests remembered at most (only authenticated senders can add to it).
MAX_SEEN_SIGNATURES = 100_000
_REJECT_BODY = b'{"error": "server busy: too many connections; retry later"}\n'
_REJECT = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 5\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REJECT_BODY), _REJECT_BODY)
)


class PayloadError(ValueError):
    """A payload that is JSON but not the expected shape; the message is the reason (400)."""


# ---------------------------------------------------------------- payloads


def _alert_from(item: Any, where: str, name_label: str = "alertname") -> Alert:
    if not isinstance(item, dict):
        raise PayloadError(f"{where}: expected an object")
    labels = item.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise PayloadError(f"{where}.labels: expected an object of strings")
    status = item.get("status", "firing")
    if status not in ("firing", "resolved"):
        raise PayloadError(f'{where}.status: expected "firing" or "resolved"')
    fingerprint = item.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise PayloadError(f"{where}.fingerprint: expected a string")
    if not fingerprint and labels:
        # Alertmanager's fingerprint is a hash of the label set; stand in for a missing one.
        fingerprint = "labels:" + hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    starts_at = item.get("startsAt")
    if starts_at is not None and not isinstance(starts_at, str):
        raise PayloadError(f"{where}.startsAt: expected a string")
    name = labels.get(name_label)
    return Alert(name=name, status=status, fingerprint=fingerprint or None, starts_at=starts_at, raw=item)


def parse_alertmanager(doc: Any) -> list[Alert]:
    """Alertmanager webhook_config payload (``version: "4"``) -> alerts."""
    if not isinstance(doc, dict):
        raise PayloadError("expected a JSON object")
    if doc.get("version") != "4":
        raise PayloadError(f'version: expected "4" (Alertmanager webhook payload), got {doc.get("version")!r}')
    return _alerts(doc)


def parse_grafana(doc: Any) -> list[Alert]:
    """Grafana webhook contact point payload: the same ``alerts[]`` shape (labels, status, fingerprint)."""
    if not isinstance(doc, dict):
        raise PayloadError("expected a JSON object")
    return _alerts(doc)


def _alerts(doc: dict[str, Any]) -> list[Alert]:
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts: expected a list")
    return [_alert_from(item, f"alerts[{i}]") for i, item in enumerate(alerts)]


def parse_generic(doc: Any) -> list[Alert]:
    """``{"alert": NAME, "status": "firing"|"resolved", "fingerprint": ..., "startsAt": ...}``."""
    if not isinstance(doc, dict):
        raise PayloadError("expected a JSON object")
    name = doc.get("alert")
    if not isinstance(name, str) or not name:
        raise PayloadError("alert: expected the alert name (a string)")
    item = {k: v for k, v in doc.items() if k in ("status", "fingerprint", "startsAt")}
    alert = _alert_from({**item, "labels": {"alertname": name}}, "payload")
    fingerprint = doc.get("fingerprint")  # generic: no label-hash fingerprint unless given
    return [Alert(name, alert.status, fingerprint if isinstance(fingerprint, str) else None, alert.starts_at, doc)]


PARSERS = {"alertmanager": parse_alertmanager, "grafana": parse_grafana, "generic": parse_generic}


# ---------------------------------------------------------------- auth


@dataclass(frozen=True)
class AuthCheck:
    """The outcome of authenticating one request; ``signature`` is remembered against replay."""

    ok: bool
    why: str | None = None
    signature: str | None = None


@dataclass
class Authenticator:
    """Bearer token (or the same token in a custom header) and/or Grafana-style HMAC-SHA256.

    Any one configured method that checks out is enough. Every comparison
    is ``hmac.compare_digest``. A signature already accepted within the
    replay window is refused: a captured request cannot be sent again.
    """

    config: ServerConfig
    _seen: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, headers: Any, body: bytes, now: float | None = None) -> AuthCheck:
        if self.token_ok(headers):
            return AuthCheck(True)
        now = time.time() if now is None else now
        if not self.signature_ok(headers, body, now):
            return AuthCheck(False)
        signature = str(headers.get(self.config.hmac_header)).strip().lower()
        with self._lock:
            if len(self._seen) >= MAX_SEEN_SIGNATURES // 2:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            if signature in self._seen and self._seen[signature] > now:
                return AuthCheck(False, "replayed signature")
            if len(self._seen) >= MAX_SEEN_SIGNATURES:
                return AuthCheck(False, "too many signed requests in the replay window")
            # valid while the timestamp is within the window: remember it that long
            self._seen[signature] = now + 2 * self.config.replay_window + 1
        return AuthCheck(True, signature=signature)

    def forget(self, check: AuthCheck) -> None:
        """The request was not acted on (503): its sender's retry of the same request must pass."""
        if check.signature is not None:
            with self._lock:
                self._seen.pop(check.signature, None)

    def token_ok(self, headers: Any) -> bool:
        token = self.config.token
        if token is None:
            return False
        ok = False
        auth = headers.get("Authorization")
        if auth:
            scheme, _, cred = auth.strip().partition(" ")
            if scheme.lower() == "bearer":
                ok = hmac.compare_digest(cred.strip().encode("latin-1", "replace"), token)
        if self.config.token_header:
            value = headers.get(self.config.token_header)
            if value is not None:
                ok = hmac.compare_digest(value.strip().encode("latin-1", "replace"), token) or ok
        return ok

    def signature_ok(self, headers: Any, body: bytes, now: float | None = None) -> bool:
        """Grafana's scheme: hex HMAC-SHA256 of ``TIMESTAMP ":" BODY``, timestamp in Unix seconds.

        The timestamp header is required here (replay window), although
        Grafana makes it optional.
        """
        secret = self.config.hmac_secret
        if secret is None:
            return False
        signature = headers.get(self.config.hmac_header)
        stamp = headers.get(self.config.hmac_timestamp_header)
        if not signature or not stamp:
            return False
        stamp = stamp.strip()
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            return False
        now = time.time() if now is None else now
        if abs(now - int(stamp)) > self.config.replay_window:
            return False
        expected = hmac.new(secret, stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), signature.strip().lower().encode("latin-1", "replace"))


# ---------------------------------------------------------------- HTTP on asyncio

#: The request line's limit (414 beyond), as ``http.server`` has it.
MAX_LINE = 65536
#: Header lines and header bytes (431 beyond).
MAX_HEADERS = 100
MAX_HEADER_BYTES = 65536
#: Connections answered 503 that may still linger (so the client reads the 503, not a reset).
MAX_LINGERING = 256
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION_RE = re.compile(r"HTTP/1\.[0-9]")
_LENGTH_RE = re.compile(r"[0-9]{1,15}")


class HttpError(Exception):
    """A request answered with ``code`` before it reaches a handler; ``linger`` drains what the client still sends."""

    def __init__(self, code: int, message: str, *, headers: dict[str, str] | None = None, linger: bool = True):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.linger = linger


class _Gone(Exception):
    """The client closed the connection before sending a whole request: nothing to answer."""


class Headers:
    """Request headers, case-insensitive, the last of repeated ones (Content-Length is checked for repeats)."""

    def __init__(self) -> None:
        self._items: dict[str, str] = {}
        self.lengths: set[str] = set()

    def add(self, name: str, value: str) -> None:
        key = name.lower()
        if key == "content-length":
            self.lengths.add(value.strip())
        self._items[key] = value

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._items.get(name.lower(), default)


@dataclass
class Request:
    method: str
    path: str
    headers: Headers
    body: bytes
    remote: str | None


@dataclass
class Answer:
    code: int
    doc: Any = None
    text: str | None = None
    headers: dict[str, str] | None = None

    def encode(self) -> bytes:
        body = self.text.encode() if self.text is not None else json.dumps(self.doc, sort_keys=True).encode() + b"\n"
        ctype = "text/plain; version=0.0.4; charset=utf-8" if self.text is not None else "application/json"
        phrase = http.HTTPStatus(self.code).phrase
        lines = [
            f"HTTP/1.0 {self.code} {phrase}",
            "Server: lockdown",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (self.headers or {}).items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_RETRY = {"Retry-After": RETRY_AFTER}


def _allow(method: str) -> dict[str, str]:
    return {"Allow": method}


class WebhookServer:
    """The webhook on an asyncio loop: every connection has one deadline, counted from accept.

    A connection costs a coroutine, not a thread, so slow clients (one header
    byte every few seconds) cannot fill a pool: each is cut off
    ``server.request_timeout`` seconds after it was accepted, whatever it
    sends, and ``/healthz`` is answered by the loop itself. Only a whole,
    authenticated alert request takes a worker thread (``server.workers``,
    with ``server.queue`` more waiting); beyond those, or beyond
    ``server.max_connections`` open connections, the answer is 503 at once.
    """

    def __init__(self, config: Config, dispatcher: Dispatcher, metrics: Metrics) -> None:
        srv = config.server
        self.config = config
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.auth = Authenticator(srv)
        self.pool = ThreadPoolExecutor(max_workers=srv.workers, thread_name_prefix="lockdown-http")
        self.metrics_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockdown-metrics")
        self.sock = socket.socket(socket.AF_INET6 if ":" in srv.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((srv.host, srv.port))
            self.sock.listen(1024)  # a flood waits in the kernel's backlog, not in memory
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()  # bound to the loop on first use (3.10+)
        self._open = 0
        self._lingering = 0
        self._pending = 0
        #: Body bytes being read or handled: slow uploads on many connections cannot pile up memory.
        self._body_bytes = 0
        self._body_budget = max(32 * 1024 * 1024, 4 * srv.max_body)
        self._reading: set[asyncio.Task[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def host(self) -> str:
        return str(self.sock.getsockname()[0])

    # ------------------------------------------------------------ life cycle
    def serve_forever(self) -> None:
        """Run the loop until :meth:`shutdown` (from another thread)."""
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    def shutdown(self) -> None:
        """Stop accepting, cut off clients still sending, let handlers in progress answer."""
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._request_stop)

    def _request_stop(self) -> None:
        self._stopping.set()

    def server_close(self) -> None:
        self.sock.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.metrics_pool.shutdown(wait=True, cancel_futures=True)

    async def _main(self) -> None:
        server = await asyncio.start_server(self._connection, sock=self.sock, limit=MAX_LINE + 2, backlog=1024)
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._reading):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=self.config.server.request_timeout + 5)
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2.0)

    # ------------------------------------------------------------ one connection
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._open += 1
        try:
            if self._open > self.config.server.max_connections:
                await self._reject(reader, writer)
                return
            await self._serve_one(reader, writer, task)
        except (OSError, asyncio.CancelledError, _Gone):
            pass  # the client went away, or serve is stopping
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not end the loop
            self.dispatcher.log.write("http-error", error=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self._open -= 1
            self._tasks.discard(task)
            writer.close()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[Any]
    ) -> None:
        srv = self.config.server
        peer = writer.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._reading.add(task)
        try:
            request = await asyncio.wait_for(self._read_request(reader, remote), srv.request_timeout)
        except TimeoutError:
            return  # whatever arrived is incomplete: answer nothing, close
        except HttpError as exc:
            await self._write(writer, Answer(exc.code, {"error": exc.message}, headers=exc.headers))
            if exc.linger:
                await self._linger(reader, writer)
            return
        finally:
            self._reading.discard(task)
        try:
            answer = await self._route(request)
        except Exception as exc:  # noqa: BLE001 - a bug in one request: answer it, log it, keep serving
            self.dispatcher.log.write("http-error", remote=remote, error=f"{type(exc).__name__}: {exc}"[:500])
            answer = Answer(500, {"error": "internal error handling this request; see the server log"})
        finally:
            self._body_bytes -= len(request.body)
        await self._write(writer, answer)

    async def _read_request(self, reader: asyncio.StreamReader, remote: str | None) -> Request:
        """Read one request: the line, the headers and (for an alert) the whole body."""
        method, path = await self._request_line(reader)
        headers = await self._headers(reader)
        if method == "GET" and path in GET_PATHS:
            return Request(method, path, headers, b"", remote)
        if method != "POST" or path not in POST_PATHS:
            raise self._not_here(method, path)
        srv = self.config.server
        if headers.get("Transfer-Encoding") is not None:
            raise HttpError(411, "send the body with a Content-Length")
        if not headers.lengths:
            raise HttpError(411, "Content-Length required")
        if len(headers.lengths) > 1 or not _LENGTH_RE.fullmatch(next(iter(headers.lengths))):
            raise HttpError(400, "invalid Content-Length")
        length = int(next(iter(headers.lengths)))
        if length > srv.max_body:
            raise HttpError(413, f"body too large: the limit is {srv.max_body} bytes")
        if self._body_bytes + length > self._body_budget:
            raise HttpError(503, "server busy: too many request bodies in flight; retry later", headers=_RETRY)
        self._body_bytes += length
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            self._body_bytes -= length
            raise _Gone from None
        except BaseException:  # cut off by the deadline (cancelled) or a reset: the budget is given back
            self._body_bytes -= length
            raise
        return Request(method, path, headers, body, remote)

    @staticmethod
    def _not_here(method: str, path: str) -> HttpError:
        if path in POST_PATHS:
            return HttpError(405, "method not allowed: use POST", headers=_allow("POST"))
        if path in GET_PATHS:
            return HttpError(405, "method not allowed: use GET", headers=_allow("GET"))
        return HttpError(404, "not found")

    @staticmethod
    async def _request_line(reader: asyncio.StreamReader) -> tuple[str, str]:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise HttpError(414, f"request line too long: the limit is {MAX_LINE} bytes", linger=False) from None
        except asyncio.IncompleteReadError:
            raise _Gone from None
        parts = raw.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not _TOKEN_RE.fullmatch(parts[0]) or not _VERSION_RE.fullmatch(parts[2]):
            raise HttpError(400, "malformed request line", linger=False)
        return parts[0], parts[1].split("?", 1)[0]

    @staticmethod
    async def _headers(reader: asyncio.StreamReader) -> Headers:
        headers = Headers()
        total = 0
        for _ in range(MAX_HEADERS + 1):
            try:
                raw = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                break
            except asyncio.IncompleteReadError:
                raise _Gone from None
            total += len(raw)
            if total > MAX_HEADER_BYTES:
                break
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line:
                return headers
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN_RE.fullmatch(name):
                raise HttpError(400, "malformed header line", linger=False)
            headers.add(name, value.strip())
        raise HttpError(
            431,
            f"request header fields too large: at most {MAX_HEADERS} lines and {MAX_HEADER_BYTES} bytes",
            linger=False,
        )

    # ------------------------------------------------------------ answering
    async def _write(self, writer: asyncio.StreamWriter, answer: Answer) -> None:
        self.metrics.response(answer.code)
        writer.write(answer.encode())
        await asyncio.wait_for(writer.drain(), self.config.server.request_timeout)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read and drop what the client still sends (2 s at most), so our answer is not lost to a reset."""
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
            budget = 4 * self.config.server.max_body

            async def drain() -> None:
                received = 0
                while received < budget:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    received += len(chunk)

            await asyncio.wait_for(drain(), 2.0)

    async def _reject(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """503 before reading anything; linger (bounded) so the client sees it."""
        self.metrics.response(503)
        writer.write(_REJECT)
        if self._lingering >= MAX_LINGERING:
            return
        self._lingering += 1
        try:
            await self._linger(reader, writer)
        finally:
            self._lingering -= 1

    async def _route(self, request: Request) -> Answer:
        if request.path == "/healthz":
            return Answer(200, {"status": "ok", "runs_in_progress": len(self.dispatcher.running())})
        if request.path == "/metrics":
            text = await self._loop.run_in_executor(self.metrics_pool, self.metrics.render)
            return Answer(200, text=text)
        return await self._alert(request)

    async def _alert(self, request: Request) -> Answer:
        source = POST_PATHS[request.path]
        check = self.auth.check(request.headers, request.body)
        if not check.ok:
            fields = {"reason": check.why} if check.why else {}
            self.dispatcher.log.write("unauthorized", source=source, remote=request.remote, **fields)
            self.metrics.trigger(source, "unauthorized")
            return Answer(401, {"error": "unauthorized"}, headers={"WWW-Authenticate": "Bearer"})
        srv = self.config.server
        if self._pending >= srv.workers + srv.queue:
            self.auth.forget(check)
            return Answer(503, {"error": "server busy: too many requests; retry later"}, headers=_RETRY)
        self._pending += 1
        try:
            answer = await self._loop.run_in_executor(self.pool, self._handle_alert, source, request)
        finally:
            self._pending -= 1
        if answer.code == 503:
            self.auth.forget(check)  # a retry of this very request must get through
        return answer

    def _handle_alert(self, source: str, request: Request) -> Answer:
        """Parse and dispatch one authenticated alert request (in a worker thread)."""
        t0 = time.monotonic()
        received = utcnow()
        try:
            doc = parse_body(request.body, self.config.server.max_alerts)
            alerts = PARSERS[source](doc)
        except HttpError as exc:
            return Answer(exc.code, {"error": exc.message})
        except PayloadError as exc:
            return Answer(400, {"error": f"invalid {source} payload: {exc}"})
        outcomes = [
            self.dispatcher.handle(source, alert, payload=doc, received=received, t0=t0, remote=request.remote)
            for alert in alerts
        ]
        code, doc_out = summarise(outcomes)
        return Answer(code, doc_out, headers={"Retry-After": RETRY_AFTER} if code == 503 else None)


#: Bodies with more ``{``/``[`` bytes than this are parsed one at a time (_BIG_PARSE): bounded memory.
_SMALL_BODY_CONTAINERS = 4096
_BIG_PARSE = threading.Lock()


def parse_body(body: bytes, max_alerts: int) -> Any:
    """The JSON of a webhook body. Raises HttpError: 400 (malformed, too deep), 413 (too many alerts).

    Bodies may nest at most ``WEBHOOK_MAX_DEPTH`` levels: lockdown stores the
    payload inside its own records (``incident.json``, the journal), which
    must stay within ``jsonsafe.MAX_DEPTH`` to be read back.
    """
    try:
        text = body.decode("utf-8")  # RFC 8259: JSON on the wire is UTF-8
    except UnicodeDecodeError:
        raise HttpError(400, "JSON body: not UTF-8") from None
    # Parsed, ``{}`` takes 25 times its 3 bytes; a body that may hold many objects is parsed one at a time.
    many = body.count(b"{") + body.count(b"[") > _SMALL_BODY_CONTAINERS
    with _BIG_PARSE if many else contextlib.nullcontext():
        try:
            doc = jsonsafe.loads(text, max_depth=WEBHOOK_MAX_DEPTH, what="JSON body")
        except jsonsafe.JSONError as exc:
            raise HttpError(400, str(exc)) from None
    alerts = doc.get("alerts") if isinstance(doc, dict) else None
    if isinstance(alerts, list) and len(alerts) > max_alerts:
        raise HttpError(
            413, f"too many alerts: {len(alerts)} in one request; the limit is {max_alerts} (server.max_alerts)"
        )
    return doc


_PRIORITY = ("started", "duplicate", "resolved", "ignored")


def summarise(outcomes: list[Outcome]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body for one webhook's outcomes.

    503 if any alert failed in a way worth a retry (a retry's repeats are
    de-duplicated), else 202 if a run started, else 500 for a failure not worth
    a retry, else 200.
    """
    results = {o.result for o in outcomes}
    incident = next((o.incident_id for o in outcomes if o.result == "started"), None) or next(
        (o.incident_id for o in outcomes if o.incident_id), None
    )
    if any(o.retry for o in outcomes):
        code = 503
        overall = next(o.result for o in outcomes if o.retry)
    elif "started" in results:
        code, overall = 202, "started"
    elif "failed" in results:
        code, overall = 500, "failed"
    else:
        code = 200
        overall = next((r for r in _PRIORITY if r in results), "ignored")
    doc: dict[str, Any] = {"result": overall, "alerts": [o.as_dict() for o in outcomes]}
    if incident:
        doc["incident_id"] = incident
    if not outcomes:
        doc["reason"] = "no alerts in the payload"
    return code, doc


def make_server(config: Config, dispatcher: Dispatcher) -> WebhookServer:
    """Bind the listener. Raises OSError when the address is taken."""
    return WebhookServer(config, dispatcher, dispatcher.metrics)


def set_priority(nice: int, log: EventLog) -> None:
    """Give every thread of serve the nice value ``nice`` (``server.nice``); threads started later inherit it.

    Why: the alert comes while the flood it is about holds the CPU (bots,
    docker-proxy, Postfix's smtpd processes). At the default nice 0, serve's
    preflight, journal and cut waited their turn behind them: the same work
    took 3-5x longer than on an idle host (bench/bench_containment.py). A
    value below 0 needs root (CAP_SYS_NICE); without it serve logs
    ``nice-failed`` and runs at the priority it was given.
    """
    if nice == os.getpriority(os.PRIO_PROCESS, 0):
        return
    try:
        for tid in os.listdir("/proc/self/task"):  # Linux: a thread's nice value is its own
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            except ProcessLookupError:  # that thread has just ended
                continue
    except OSError as exc:
        log.write("nice-failed", nice=nice, error=exc.strerror or str(exc))
        return
    log.write("nice", nice=nice)


def serve(
    config: Config,
    root: Path,
    *,
    stop: threading.Event,
    on_ready: Callable[[WebhookServer], None] | None = None,
    drain_timeout: float = 80.0,
) -> bool:
    """Validate, bind, serve until ``stop`` is set, then let a running step finish.

    Unless ``[guard] enabled = false``, the guard keeps every incident whose
    containment is active contained meanwhile (``triggers/guarding.py``).

    Raises PlaybookError/BadInput (exit 2) for a bad route or playbook,
    PrivilegeError (4), or Unavailable (5) when the address cannot be bound.
    Returns False when a run was still going after ``drain_timeout`` seconds.
    """
    log = EventLog(root, "server.log")
    set_priority(config.server.nice, log)
    metrics = Metrics(root)
    dispatcher = Dispatcher(config, root, log=log, stop=stop, metrics=metrics)
    dispatcher.prepare()
    try:
        server = make_server(config, dispatcher)
    except OSError as exc:
        raise Unavailable(
            f"{config.path}: server.listen: cannot listen on {config.server.listen}: {exc.strerror or exc}",
            "is another lockdown serve running? pick another port in server.listen",
        ) from None
    log.write(
        "serve-start",
        listen=f"{server.host}:{server.port}",
        routes={r.alert: r.playbook for r in config.routes},
        pid=os.getpid(),
    )
    guard = None
    if config.guard.enabled:
        guard = GuardService(root, config.guard, log, stop)
        dispatcher.on_run_end.append(guard.incident_ended)
        guard.start()
    # Everything loaded at start-up (modules, the warmed preflight) goes to the GC's permanent
    # generation: a collection between an alert and its first change then walks only what the
    # alert itself made (they cost up to ~70 ms each here with ~60k objects tracked).
    gc.collect()
    gc.freeze()
    thread = threading.Thread(target=server.serve_forever, name="lockdown-http")
    thread.start()
    try:
        if on_ready is not None:
            on_ready(server)
        while not stop.wait(1.0):
            pass
    finally:
        stop.set()
        log.write("serve-stopping", runs_in_progress=[t.name for t in dispatcher.running()])
        server.shutdown()
        thread.join()
        server.server_close()
        clean = dispatcher.wait(drain_timeout)
        if guard is not None:
            guard.join()
        log.write("serve-stopped", clean=clean)
    return clean
