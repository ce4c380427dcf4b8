"""``serve`` (the alert webhook) and ``watch`` (the outbound-mail alarm)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lockdown.cli.common import StateDirOpt
from lockdown.cli.output import Output
from lockdown.errors import BadInput, ExitCode, LockdownError
from lockdown.paths import DEFAULT_STATE_DIR, state_dir
from lockdown.triggers.config import DEFAULT_CONFIG, Config, Route, load_config

if TYPE_CHECKING:
    from lockdown.triggers.watch import WatchSettings

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config",
        envvar="LOCKDOWN_CONFIG",
        help="The lockdown.toml to use (routes, authentication, watch settings).",
    ),
]


JsonLinesOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object per line (listening, watching, stopped) instead of text.")
]


def _root(explicit: Path | None, config: Config) -> Path:
    """--state-dir / LOCKDOWN_STATE_DIR, then the config's state_dir, then /var/lib/lockdown."""
    return state_dir(explicit if explicit is not None else config.state_dir or DEFAULT_STATE_DIR)


def _stop_on_signals(out: Output, what: str) -> tuple[threading.Event, dict[signal.Signals, Any]]:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            out.info(f"lockdown: {signal.Signals(signum).name}: {what}")
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    return stop, old


def serve(
    config: ConfigOpt = DEFAULT_CONFIG, state_dir_opt: StateDirOpt = None, json_out: JsonLinesOpt = False
) -> None:
    """Run the alert webhook: Alertmanager, Grafana and generic alerts start playbooks.

    Listens on 127.0.0.1:9595 unless server.listen says otherwise. Every
    route's playbook is validated before it listens; authentication (a token
    file and/or an HMAC secret file) is required. With --json, stdout carries
    one JSON object per line (``listening``, ``stopped``); requests are logged
    in the state dir's triggers/ log either way.
    """
    from lockdown.triggers.server import WebhookServer
    from lockdown.triggers.server import serve as run_server

    out = Output(json_out)
    cfg = load_config(config)
    for warning in cfg.warnings:
        out.info(f"lockdown: warning: {warning}")
    root = _root(state_dir_opt, cfg)
    stop, old = _stop_on_signals(out, "stopping; a running step finishes and is journaled first")

    def ready(server: WebhookServer) -> None:
        _show_startup_problems(out, server.dispatcher.startup_problems)
        host = server.host
        shown = f"[{host}]" if ":" in host else host
        routes = ", ".join(f"{r.alert} -> {r.playbook}" for r in cfg.routes) or "none (every alert is ignored)"
        out.line(f"lockdown: listening on http://{shown}:{server.port} (state dir {root})")
        out.line(f"lockdown: routes: {routes}")
        if cfg.guard.enabled:
            out.line(f"lockdown: guarding every incident whose containment is active (timer {cfg.guard.timer:g} s)")
        else:
            out.line("lockdown: guard off (guard.enabled = false): undone containment is not re-asserted")
        out.json_line(
            {
                "event": "listening",
                "url": f"http://{shown}:{server.port}",
                "state_dir": str(root),
                "routes": [{"alert": r.alert, "playbook": r.playbook} for r in cfg.routes],
                "guard": cfg.guard.enabled,
            }
        )

    try:
        clean = run_server(cfg, root, stop=stop, on_ready=ready)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    out.json_line({"event": "stopped", "clean": clean})
    if not clean:
        out.info("lockdown: a run was still going when serve stopped; check it with `lockdown status`")
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    out.info("lockdown: stopped")


def _pick_route(cfg: Config, name: str | None) -> Route:
    chosen = name or cfg.watch.route
    if chosen is not None:
        route = cfg.route_for(chosen)
        if route is None:
            known = ", ".join(r.alert for r in cfg.routes) or "none"
            raise BadInput(f"--route {chosen!r}: {cfg.path} has no [[routes]] entry with that alert (routes: {known})")
        return route
    if len(cfg.routes) == 1:
        return cfg.routes[0]
    raise BadInput(
        f"{cfg.path}: watch.route: which route should the watch trigger? "
        f"({len(cfg.routes)} routes are configured)",
        "set watch.route = \"ALERT\" in lockdown.toml or pass --route ALERT",
    )


def watch(
    container: Annotated[
        str | None,
        typer.Option("--container", help='The mail container: "auto" (the one publishing port 25), a name or id.'),
    ] = None,
    max_per_minute: Annotated[
        int | None,
        typer.Option(
            "--max-per-minute", min=1, help="The most outside messages allowed within 60 s; one more triggers."
        ),
    ] = None,
    on_signature: Annotated[
        bool,
        typer.Option(
            "--on-signature", help="Also trigger on one outside message from a Docker gateway without SASL login."
        ),
    ] = False,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", help="Follow this mail log file instead of the container's log.")
    ] = None,
    local_domain: Annotated[
        list[str] | None,
        typer.Option("--local-domain", help="A domain this server delivers locally (repeatable)."),
    ] = None,
    gateway: Annotated[
        list[str] | None,
        typer.Option("--gateway", help="A Docker gateway address or network (repeatable; default: ask Docker)."),
    ] = None,
    route: Annotated[
        str | None, typer.Option("--route", help="The [[routes]] alert whose playbook to run (default: watch.route).")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    state_dir_opt: StateDirOpt = None,
    json_out: JsonLinesOpt = False,
) -> None:
    """Watch the mail log and run a playbook when outside mail exceeds a rate.

    Counts messages to non-local domains over a sliding minute and triggers
    the route's playbook once when the count goes above --max-per-minute (or
    on the postmortem's signature with --on-signature). Flags override the
    [watch] table of lockdown.toml.
    """
    from lockdown.triggers.watch import WatchSettings

    out = Output(json_out)
    cfg = load_config(config, read_secrets=False)
    root = _root(state_dir_opt, cfg)
    w = cfg.watch
    settings = WatchSettings(
        route=_pick_route(cfg, route),
        max_per_minute=max_per_minute if max_per_minute is not None else w.max_per_minute,
        on_signature=on_signature or w.on_signature,
        container=container or w.container,
        log_file=log_file or w.log_file,
        local_domains=set(local_domain or w.local_domains) or None,
        gateways=list(gateway or w.gateways) or None,
    )
    settings.check()
    _run_watch(out, cfg, root, settings)


def _run_watch(out: Output, cfg: Config, root: Path, settings: WatchSettings) -> None:
    """The watch itself, apart from ``watch``'s typer signature: flags are merged and checked by then.

    Stops on SIGINT/SIGTERM; a playbook run the watch started is waited for
    (and journaled) before the exit, which is INTERRUPTED if it did not finish.
    """
    from lockdown.triggers.dedup import EventLog
    from lockdown.triggers.dispatch import Dispatcher
    from lockdown.triggers.watch import Watcher

    chosen = settings.route
    stop, old = _stop_on_signals(out, "stopping the watch; a running step finishes and is journaled first")
    log = EventLog(root, "watch.log")
    dispatcher = Dispatcher(cfg, root, log=log, stop=stop)
    try:
        dispatcher.prepare(only=chosen.alert)
        _show_startup_problems(out, dispatcher.startup_problems)

        def say(text: str) -> None:
            out.info(f"lockdown: watch: {text}")
            out.json_line({"event": "watch", "message": text})

        watcher = Watcher(settings, dispatcher, stop=stop, log=log, say=say)
        _announce_watch(out, settings, root)
        watcher.run()
    finally:
        stop.set()
        clean = dispatcher.wait(80.0)
        for s, h in old.items():
            signal.signal(s, h)
    out.json_line({"event": "stopped", "clean": clean})
    if not clean:
        out.info("lockdown: a run was still going when the watch stopped; check it with `lockdown status`")
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    out.info("lockdown: watch: stopped")


def _announce_watch(out: Output, settings: WatchSettings, root: Path) -> None:
    """Say what is watched for and what it will start, once, before the first log line is read."""
    chosen = settings.route
    what = []
    if settings.max_per_minute is not None:
        what.append(f"{settings.max_per_minute} outside messages per minute")
    if settings.on_signature:
        what.append("the open-relay signature")
    source = settings.log_file or f"container {settings.container}"
    out.info(
        f"lockdown: watch: watching {source} for {' or '.join(what)}; "
        f"then {chosen.alert} -> {chosen.playbook} (state dir {root})"
    )
    out.json_line(
        {
            "event": "watching",
            "source": str(source),
            "max_per_minute": settings.max_per_minute,
            "on_signature": settings.on_signature,
            "route": {"alert": chosen.alert, "playbook": chosen.playbook},
            "state_dir": str(root),
        }
    )


def register(app: typer.Typer) -> None:
    app.command(name="serve")(serve)
    app.command(name="watch")(watch)


def _show_startup_problems(out: Output, problems: list[LockdownError]) -> None:
    """Start-up went on without Docker; say so where the admin looks, with what to do."""
    for exc in problems:
        hint = exc.hint or "start the Docker daemon; until then every triggered run will fail"
        out.info(f"lockdown: warning: {exc.message}")
        out.info(f"  -> {hint}")
        out.json_line({"event": "warning", "message": exc.message, "hint": hint})
