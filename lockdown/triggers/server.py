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

Robustness: a bounded pool of workers (``server.workers``) behind a bounded
queue (``server.queue``); a connection beyond both gets 503 at once. Each
request must arrive whole within ``server.request_timeout`` seconds (a
watchdog shuts the socket of a slow client), and each socket operation has the
same timeout. One request per connection (HTTP/1.0 style, ``Connection: close``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockdown.engine.journal import utcnow
from lockdown.errors import Unavailable
from lockdown.triggers.config import Config, ServerConfig
from lockdown.triggers.dedup import EventLog
from lockdown.triggers.dispatch import Alert, Dispatcher, Metrics, Outcome

ALERTMANAGER = "/v1/alerts/alertmanager"
GRAFANA = "/v1/alerts/grafana"
GENERIC = "/v1/alerts/generic"
POST_PATHS = {ALERTMANAGER: "alertmanager", GRAFANA: "grafana", GENERIC: "generic"}
GET_PATHS = ("/healthz", "/metrics")
RETRY_AFTER = "5"
_REJECT_BODY = b'{"error": "server busy: too many requests; retry later"}\n'
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


@dataclass
class Authenticator:
    """Bearer token (or the same token in a custom header) and/or Grafana-style HMAC-SHA256.

    Any one configured method that checks out is enough. Every comparison
    is ``hmac.compare_digest``.
    """

    config: ServerConfig

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


# ---------------------------------------------------------------- slow clients


class Watchdog:
    """Shuts the socket of a client that has not sent its whole request in time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: dict[int, tuple[float, socket.socket]] = {}
        self._next = 0
        self._fired: set[int] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lockdown-http-watchdog", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket, seconds: float) -> int:
        with self._cond:
            self._next += 1
            self._items[self._next] = (time.monotonic() + seconds, sock)
            self._cond.notify()
            return self._next

    def remove(self, token: int) -> None:
        with self._cond:
            self._items.pop(token, None)
            self._fired.discard(token)

    def fired(self, token: int | None) -> bool:
        """True when the deadline of ``token`` passed and its socket was shut."""
        with self._cond:
            return token in self._fired

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for token, (deadline, sock) in list(self._items.items()):
                    if deadline <= now:
                        del self._items[token]
                        self._fired.add(token)
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                wait = min((d for d, _ in self._items.values()), default=now + 60) - now
                self._cond.wait(max(0.01, wait))


class Rejecter:
    """503 for connections beyond the pool, answered from the accept loop without reading the request.

    The answer is sent at once; the socket then lingers (at most 2 s, at most
    256 of them, in one thread) reading what the client still sends, so that
    closing it does not reset the connection before the client reads the 503.
    """

    LINGER = 2.0
    MAX = 256

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._incoming: list[socket.socket] = []
        self._count = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lockdown-http-reject", daemon=True)
        self._thread.start()

    def reject(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while sock.recv(65536):
                    pass
            sock.send(_REJECT)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        with self._cond:
            if self._closed or self._count >= self.MAX:
                sock.close()
                return
            self._count += 1
            self._incoming.append(sock)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        deadlines: dict[socket.socket, float] = {}
        while True:
            with self._cond:
                while not self._incoming and not deadlines and not self._closed:
                    self._cond.wait()
                if self._closed:
                    break
                for sock in self._incoming:
                    sel.register(sock, selectors.EVENT_READ)
                    deadlines[sock] = time.monotonic() + self.LINGER
                self._incoming.clear()
            done: list[socket.socket] = []
            for key, _ in sel.select(timeout=0.1):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    if not sock.recv(65536):
                        done.append(sock)
                except BlockingIOError:
                    pass
                except OSError:
                    done.append(sock)
            now = time.monotonic()
            done += [s for s, d in deadlines.items() if d <= now and s not in done]
            for sock in done:
                sel.unregister(sock)
                deadlines.pop(sock, None)
                sock.close()
            if done:
                with self._cond:
                    self._count -= len(done)
        for sock in deadlines:
            sock.close()
        sel.close()


# ---------------------------------------------------------------- the server


class WebhookServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer with a bounded pool instead of a thread per connection."""

    daemon_threads = True
    request_queue_size = 1024  # listen backlog: a flood waits in the kernel, not in threads

    def __init__(self, config: Config, dispatcher: Dispatcher, metrics: Metrics) -> None:
        srv = config.server
        self.address_family = socket.AF_INET6 if ":" in srv.host else socket.AF_INET
        self.config = config
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.auth = Authenticator(srv)
        self.pool = ThreadPoolExecutor(max_workers=srv.workers, thread_name_prefix="lockdown-http")
        self.slots = threading.BoundedSemaphore(srv.workers + srv.queue)
        self.watchdog = Watchdog()
        self.rejecter = Rejecter()
        super().__init__((srv.host, srv.port), WebhookHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def host(self) -> str:
        address = self.server_address[0]
        return address.decode() if isinstance(address, bytes) else str(address)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.metrics.response(503)
            self._reject(request)
            return
        try:
            self.pool.submit(self._work, request, client_address)
        except RuntimeError:  # the pool is shutting down
            self.slots.release()
            self._reject(request)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one connection's failure must not end the worker
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def _reject(self, sock: socket.socket) -> None:
        self.rejecter.reject(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.dispatcher.log.write("http-error", remote=str(client_address[0]) if client_address else None)

    def server_close(self) -> None:
        super().server_close()
        self.watchdog.close()
        self.rejecter.close()
        self.pool.shutdown(wait=True, cancel_futures=True)


class WebhookHandler(http.server.BaseHTTPRequestHandler):
    server: WebhookServer
    server_version = "lockdown"
    sys_version = ""
    protocol_version = "HTTP/1.0"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        seconds = self.server.config.server.request_timeout
        self.connection.settimeout(seconds)  # each socket operation
        self._deadline: int | None = self.server.watchdog.add(self.connection, seconds)  # the whole request

    def finish(self) -> None:
        self._clear_deadline()
        with contextlib.suppress(OSError):
            super().finish()

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            self.server.watchdog.remove(self._deadline)
            self._deadline = None

    def _timed_out(self) -> bool:
        """The watchdog cut this client off: whatever was parsed is incomplete, answer nothing."""
        if self._deadline is not None and self.server.watchdog.fired(self._deadline):
            self.close_connection = True
            return True
        return False

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every decision is logged by the dispatcher; a flood must not flood stderr

    # ------------------------------------------------------------ responses
    def _send(self, code: int, doc: Any, *, headers: dict[str, str] | None = None, text: str | None = None) -> None:
        body = text.encode() if text is not None else json.dumps(doc, sort_keys=True).encode() + b"\n"
        self.server.metrics.response(code)
        self.send_response(code)
        ctype = "text/plain; version=0.0.4; charset=utf-8" if text is not None else "application/json"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _error(self, code: int, message: str, *, linger: bool = False, headers: dict[str, str] | None = None) -> None:
        self._send(code, {"error": message}, headers=headers)
        if linger:
            self._linger()

    def _linger(self) -> None:
        """Read and drop what the client still sends, so our answer is not lost to a reset."""
        self._clear_deadline()
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            end = time.monotonic() + 2.0
            received = 0
            while time.monotonic() < end and received < 4 * self.server.config.server.max_body:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                received += len(chunk)

    # ------------------------------------------------------------ methods
    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def do_GET(self) -> None:
        if self._timed_out():
            return
        path = self._path()
        self._clear_deadline()
        if path == "/healthz":
            self._send(200, {"status": "ok", "runs_in_progress": len(self.server.dispatcher.running())})
        elif path == "/metrics":
            self._send(200, None, text=self.server.metrics.render())
        elif path in POST_PATHS:
            self._error(405, "method not allowed: use POST", headers={"Allow": "POST"})
        else:
            self._error(404, "not found")

    def _not_post(self) -> None:
        if self._timed_out():
            return
        path = self._path()
        if path in POST_PATHS:
            self._error(405, "method not allowed: use POST", headers={"Allow": "POST"}, linger=True)
        elif path in GET_PATHS:
            self._error(405, "method not allowed: use GET", headers={"Allow": "GET"}, linger=True)
        else:
            self._error(404, "not found", linger=True)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_post

    def do_HEAD(self) -> None:
        self._not_post()

    def do_POST(self) -> None:
        if self._timed_out():
            return
        t0 = time.monotonic()
        received = utcnow()
        path = self._path()
        source = POST_PATHS.get(path)
        if source is None:
            if path in GET_PATHS:
                self._error(405, "method not allowed: use GET", headers={"Allow": "GET"}, linger=True)
            else:
                self._error(404, "not found", linger=True)
            return
        srv = self.server.config.server
        if self.headers.get("Transfer-Encoding"):
            self._error(411, "send the body with a Content-Length", linger=True)
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._error(411, "Content-Length required", linger=True)
            return
        if not length_text.strip().isdigit():
            self._error(400, "invalid Content-Length", linger=True)
            return
        length = int(length_text)
        if length > srv.max_body:
            self._error(413, f"body too large: the limit is {srv.max_body} bytes", linger=True)
            return
        body = self.rfile.read(length) if length else b""
        if len(body) != length or self._timed_out():
            self.close_connection = True
            return  # the client went away or the watchdog cut it off
        self._clear_deadline()
        auth = self.server.auth
        if not (auth.token_ok(self.headers) or auth.signature_ok(self.headers, body)):
            self.server.dispatcher.log.write("unauthorized", source=source, remote=self.client_address[0])
            self.server.metrics.trigger(source, "unauthorized")
            self._error(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"})
            return
        try:
            doc = json.loads(body.decode("utf-8"))  # RFC 8259: JSON on the wire is UTF-8
        except UnicodeDecodeError:
            self._error(400, "malformed JSON: not UTF-8")
            return
        except json.JSONDecodeError as exc:
            self._error(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
            return
        try:
            alerts = PARSERS[source](doc)
        except PayloadError as exc:
            self._error(400, f"invalid {source} payload: {exc}")
            return
        outcomes = [
            self.server.dispatcher.handle(
                source, alert, payload=doc, received=received, t0=t0, remote=self.client_address[0]
            )
            for alert in alerts
        ]
        code, doc_out = summarise(outcomes)
        self._send(code, doc_out, headers={"Retry-After": RETRY_AFTER} if code == 503 else None)


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


def serve(
    config: Config,
    root: Path,
    *,
    stop: threading.Event,
    on_ready: Callable[[WebhookServer], None] | None = None,
    drain_timeout: float = 80.0,
) -> bool:
    """Validate, bind, serve until ``stop`` is set, then let a running step finish.

    Raises PlaybookError/BadInput (exit 2) for a bad route or playbook,
    PrivilegeError (4), or Unavailable (5) when the address cannot be bound.
    Returns False when a run was still going after ``drain_timeout`` seconds.
    """
    log = EventLog(root, "server.log")
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
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25}, name="lockdown-http")
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
        log.write("serve-stopped", clean=clean)
    return clean
