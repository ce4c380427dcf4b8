"""``lockdown.toml``: the triggers' configuration, loaded and validated up front.

Other tools write this file, so its format is part of the interface. Unknown
keys are ignored (extra keys are fine); a known key with a wrong value fails
with one message naming the file and the key, exit code 2::

    /etc/lockdown/lockdown.toml: server.listen: expected HOST:PORT, got 'localhost'

Secrets are read from files the config names, never from the command line.
Relative paths are taken from the config file's directory.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import stat
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockdown.errors import BadInput

DEFAULT_CONFIG = Path("/etc/lockdown/lockdown.toml")
DEFAULT_PORT = 9595
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
GRAFANA_SIGNATURE_HEADER = "X-Grafana-Alerting-Signature"
GRAFANA_TIMESTAMP_HEADER = "X-Grafana-Alerting-Signature-Timestamp"
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_ALERT_RE = re.compile(r"^[^\x00-\x1f]{1,200}$")
_MAX_SECRET = 4096
#: A shorter secret can be guessed; 16 bytes is what ``head -c 12 /dev/urandom | base64`` gives.
MIN_SECRET = 16


@dataclass(frozen=True)
class Route:
    """An alert name mapped to a playbook and fixed vars. The caller picks neither."""

    alert: str
    playbook: str
    vars: dict[str, str]  # as ``--var KEY=VALUE`` overrides
    where: str  # "routes[0] (MailRelaySurge)" for messages


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token_file: Path | None = None
    token: bytes | None = field(default=None, repr=False)
    #: Also accept the token in this header (Grafana "Extra Headers"), besides ``Authorization: Bearer``.
    token_header: str | None = None
    hmac_secret_file: Path | None = None
    hmac_secret: bytes | None = field(default=None, repr=False)
    hmac_header: str = GRAFANA_SIGNATURE_HEADER
    hmac_timestamp_header: str = GRAFANA_TIMESTAMP_HEADER
    replay_window: float = 300.0
    max_body: int = 1024 * 1024
    workers: int = 8
    queue: int = 32
    #: Seconds a client has to send its whole request (headers and body), counted from accept.
    request_timeout: float = 10.0
    #: Connections open at once (most of them slow clients); beyond that, 503 at once.
    max_connections: int = 512
    #: Alerts in one request; more gets 413 (Alertmanager groups are far smaller).
    max_alerts: int = 1000
    #: Listening on anything but loopback without TLS must be asked for.
    allow_insecure_listen: bool = False
    #: Seconds a generic alert without a fingerprint is a repeat of the same alert (same identity).
    generic_dedup_window: float = 3600.0
    #: serve's scheduling priority (nice value, -20..19): ahead of the flood it contains. See docs/triggers.md.
    nice: int = -10

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class WatchConfig:
    container: str = "auto"
    log_file: Path | None = None
    max_per_minute: int | None = None
    on_signature: bool = False
    route: str | None = None
    local_domains: list[str] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)


@dataclass
class GuardConfig:
    """``[guard]``: serve keeps every active incident contained (``lockdown/guard.py``)."""

    enabled: bool = True
    #: Seconds between re-reads of accept_ra/autoconf and rescans of the state dir.
    timer: float = 30.0
    #: Where a drift notification is POSTed (JSON), if anywhere: http(s)://HOST[:PORT]/PATH.
    notify_url: str | None = None
    #: Seconds one notification may take (connect and answer) before it is given up.
    notify_timeout: float = 5.0


@dataclass
class Config:
    path: Path
    state_dir: Path | None
    server: ServerConfig
    routes: list[Route]
    watch: WatchConfig
    warnings: list[str] = field(default_factory=list)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def route_for(self, alert: str) -> Route | None:
        for route in self.routes:
            if route.alert == alert:
                return route
        return None


class _Reader:
    """Typed access to one TOML table, with errors that name the file and key."""

    def __init__(self, file: Path, table: dict[str, Any], prefix: str) -> None:
        self.file = file
        self.table = table
        self.prefix = prefix

    def err(self, key: str, reason: str) -> BadInput:
        return BadInput(f"{self.file}: {self.prefix}{key}: {reason}")

    def get(self, key: str, kind: type[Any] | tuple[type[Any], ...], expected: str) -> Any:
        value = self.table.get(key)
        if value is None:
            return None
        bad_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        if not isinstance(value, kind) or bad_bool:
            raise self.err(key, f"expected {expected}, got {value!r}")
        return value

    def string(self, key: str) -> str | None:
        value = self.get(key, str, "a string")
        if value is not None and not value.strip():
            raise self.err(key, "must not be empty")
        return value if value is None else str(value)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, (int, float), "a number")
        if value is None:
            return default
        if not low <= value <= high:
            raise self.err(key, f"expected a number from {low:g} to {high:g}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int | None, low: int, high: int) -> int | None:
        value = self.get(key, int, "an integer")
        if value is None:
            return default
        if not low <= value <= high:
            raise self.err(key, f"expected an integer from {low} to {high}, got {value!r}")
        return int(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, bool, "true or false")
        return default if value is None else bool(value)

    def path(self, key: str) -> Path | None:
        value = self.string(key)
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else self.path_base / p

    @property
    def path_base(self) -> Path:
        return self.file.parent

    def header(self, key: str, default: str | None) -> str | None:
        value = self.string(key)
        if value is None:
            return default
        if not _HEADER_RE.match(value):
            raise self.err(key, f"expected an HTTP header name (letters, digits, '-'), got {value!r}")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.get(key, list, "a list of strings")
        if value is None:
            return []
        if not all(isinstance(v, str) and v for v in value):
            raise self.err(key, f"expected a list of strings, got {value!r}")
        return [str(v) for v in value]

    def sub(self, key: str) -> _Reader:
        value = self.get(key, dict, "a table")
        return _Reader(self.file, value or {}, f"{self.prefix}{key}.")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port). Raises ValueError."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", text)
    if not m:
        raise ValueError("expected HOST:PORT or [IPV6]:PORT")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (give an address, not a name)") from None
    return host, port


def read_secret(path: Path, where: str, warnings: list[str]) -> bytes:
    """The secret in ``path`` with surrounding whitespace removed.

    Raises BadInput (naming ``where``, e.g. ``lockdown.toml: server.token_file``)
    when it cannot be read, is empty or shorter than ``MIN_SECRET`` bytes, is a
    symlink (whoever controls the link picks the secret), is writable by group
    or others, or is not owned by the user serve runs as: each lets someone
    else choose the secret. Others merely able to read it get a warning.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInput(
                f"{where}: {path} is a symbolic link; refusing to follow it",
                f"point the config at the file itself ({os.path.realpath(path)})",
            ) from None
        raise BadInput(f"{where}: cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        _check_secret_file(path, st, where, warnings)
        try:
            data = fh.read(_MAX_SECRET + 1)
        except OSError as exc:
            raise BadInput(f"{where}: cannot read {path}: {exc.strerror}") from None
    if len(data) > _MAX_SECRET:
        raise BadInput(f"{where}: {path} is larger than {_MAX_SECRET} bytes; expected one secret")
    secret = data.strip()
    if not secret:
        raise BadInput(f"{where}: {path} is empty")
    if len(secret) < MIN_SECRET:
        raise BadInput(
            f"{where}: {path} holds {len(secret)} bytes; a secret needs at least {MIN_SECRET}",
            f"make a new one: head -c 32 /dev/urandom | base64 > {path}",
        )
    return secret


def _check_secret_file(path: Path, st: os.stat_result, where: str, warnings: list[str]) -> None:
    """Refuse a secret file someone other than the service user could have written."""
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{where}: {path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise BadInput(
            f"{where}: {path} is owned by uid {st.st_uid}, not by the user serve runs as (uid {os.geteuid()})",
            f"run chown {os.geteuid()} {path}",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BadInput(
            f"{where}: {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
            f"run chmod 600 {path}",
        )
    if st.st_mode & stat.S_IROTH:
        warnings.append(f"{where}: {path} is world-readable; run chmod 600 {path}")


def _route_vars(reader: _Reader, where: str, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise reader.err(f"{where}.vars", f"expected a table, got {raw!r}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            out[key] = str(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[key] = ",".join(value)
        else:
            raise reader.err(
                f"{where}.vars.{key}", f"expected a string, number, boolean or list of strings, got {value!r}"
            )
    return out


def _server_config(path: Path, srv: _Reader, read_secrets: bool, warnings: list[str]) -> ServerConfig:
    """The ``[server]`` table; with ``read_secrets`` (serve itself) also its secrets and listen checks."""
    server = ServerConfig()
    listen = srv.string("listen") or DEFAULT_LISTEN
    try:
        server.host, server.port = parse_listen(listen)
    except ValueError as exc:
        raise srv.err("listen", f"{exc}, got {listen!r}") from None
    server.token_file = srv.path("token_file")
    server.token_header = srv.header("token_header", None)
    server.hmac_secret_file = srv.path("hmac_secret_file")
    server.hmac_header = srv.header("hmac_header", GRAFANA_SIGNATURE_HEADER) or GRAFANA_SIGNATURE_HEADER
    server.hmac_timestamp_header = (
        srv.header("hmac_timestamp_header", GRAFANA_TIMESTAMP_HEADER) or GRAFANA_TIMESTAMP_HEADER
    )
    server.replay_window = srv.number("replay_window", 300.0, 1, 3600)
    server.max_body = int(srv.integer("max_body", 1024 * 1024, 1024, 64 * 1024 * 1024) or 0)
    server.workers = int(srv.integer("workers", 8, 1, 256) or 0)
    server.queue = int(srv.integer("queue", 32, 0, 10000) or 0)
    server.request_timeout = srv.number("request_timeout", 10.0, 0.1, 300)
    server.max_connections = int(srv.integer("max_connections", 512, 1, 100_000) or 0)
    server.max_alerts = int(srv.integer("max_alerts", 1000, 1, 1_000_000) or 0)
    server.generic_dedup_window = srv.number("generic_dedup_window", 3600.0, 0, 30 * 86400)
    server.nice = int(srv.integer("nice", -10, -20, 19) or 0)
    server.allow_insecure_listen = srv.boolean("allow_insecure_listen", False)
    if read_secrets and not server.allow_insecure_listen and not ipaddress.ip_address(server.host).is_loopback:
        raise BadInput(
            f"{path}: server.listen: {listen} is reachable from other hosts and serve speaks plain HTTP "
            "(tokens and alerts would cross the network in clear text)",
            "listen on 127.0.0.1 behind a TLS proxy, or set server.allow_insecure_listen = true "
            "if that network is trusted",
        )
    if server.token_header and server.token_file is None:
        raise srv.err("token_header", "needs server.token_file (the token it carries)")
    if read_secrets:
        if server.token_file is None and server.hmac_secret_file is None:
            raise BadInput(
                f"{path}: server: no authentication configured: set server.token_file and/or server.hmac_secret_file",
                "lockdown serve refuses to run an unauthenticated webhook; see docs/triggers.md",
            )
        if server.token_file is not None:
            server.token = read_secret(server.token_file, f"{path}: server.token_file", warnings)
        if server.hmac_secret_file is not None:
            server.hmac_secret = read_secret(server.hmac_secret_file, f"{path}: server.hmac_secret_file", warnings)
    return server


def load_config(path: Path, *, read_secrets: bool = True) -> Config:
    """Parse and validate ``path``. ``read_secrets`` (the server) also reads the secret files.

    The server refuses to start without authentication, so with
    ``read_secrets`` at least one of ``server.token_file`` and
    ``server.hmac_secret_file`` is required.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such config file", "write one (see docs/triggers.md) or pass --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: invalid TOML: {exc}") from None
    top = _Reader(path, doc, "")
    warnings: list[str] = []
    state = top.path("state_dir")

    server = _server_config(path, top.sub("server"), read_secrets, warnings)

    raw_routes = doc.get("routes", [])
    if not isinstance(raw_routes, list) or not all(isinstance(r, dict) for r in raw_routes):
        raise top.err("routes", "expected [[routes]] tables")
    routes: list[Route] = []
    for i, raw in enumerate(raw_routes):
        where = f"routes[{i}]"
        r = _Reader(path, raw, f"{where}.")
        alert = r.string("alert")
        if alert is None:
            raise r.err("alert", "missing (the alert name matched against labels.alertname)")
        if not _ALERT_RE.match(alert):
            raise r.err("alert", f"expected a printable alert name, got {alert!r}")
        if any(x.alert == alert for x in routes):
            raise r.err("alert", f"duplicate route for alert {alert!r}")
        playbook = r.string("playbook")
        if playbook is None:
            raise r.err("playbook", "missing (a playbook name or path)")
        pb_path = Path(playbook)
        if ("/" in playbook or playbook.endswith(".toml")) and not pb_path.is_absolute():
            playbook = str(path.parent / pb_path)
        routes.append(Route(alert, playbook, _route_vars(top, where, raw.get("vars")), f"{where} ({alert})"))

    w = top.sub("watch")
    watch = WatchConfig(
        container=w.string("container") or "auto",
        log_file=w.path("log_file"),
        max_per_minute=w.integer("max_per_minute", None, 1, 1_000_000),
        on_signature=w.boolean("on_signature", False),
        route=w.string("route"),
        local_domains=w.strings("local_domains"),
        gateways=w.strings("gateways"),
    )
    for i, gw in enumerate(watch.gateways):
        try:
            ipaddress.ip_network(gw, strict=False)
        except ValueError:
            raise w.err(f"gateways[{i}]", f"expected an IP address or network, got {gw!r}") from None
    if watch.route is not None and not any(r.alert == watch.route for r in routes):
        raise w.err("route", f"no [[routes]] entry has alert = {watch.route!r}")
    return Config(
        path=path, state_dir=state, server=server, routes=routes, watch=watch, warnings=warnings,
        guard=_guard_config(top.sub("guard")),
    )


def _guard_config(g: _Reader) -> GuardConfig:
    """The ``[guard]`` table: on by default; a notification URL must be http(s) with a host."""
    url = g.string("notify_url")
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c in url for c in "\r\n\t "):
            raise g.err("notify_url", f"expected an http:// or https:// URL with a host, got {url!r}")
    return GuardConfig(
        enabled=g.boolean("enabled", True),
        timer=g.number("timer", 30.0, 0.1, 3600),
        notify_url=url,
        notify_timeout=g.number("notify_timeout", 5.0, 0.1, 30),
    )
