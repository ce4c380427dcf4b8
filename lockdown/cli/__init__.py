"""The thin typer layer. ``main`` is the only place that turns errors into exit codes."""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

import typer

from lockdown.cli.output import error_line
from lockdown.errors import ExitCode, LockdownError

# Newer typer vendors click; take its exception classes from typer itself.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


class LockdownApp(typer.Typer):
    """Calling the app runs ``main`` (as ``python -m lockdown`` and the console script do)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sys.exit(main())


def run() -> None:
    """The console entry point (``lockdown = "lockdown.cli:run"``; ``python -m lockdown`` too)."""
    code = main()
    # The process is about to end: its objects die with it. Without this, the interpreter's
    # last collection walks every object the docker SDK and pyroute2 created at import, and
    # `lockdown run` spent 0.5-0.9 s after its last journal line (bench/bench_run.py).
    # Frozen objects are left out of that walk; nothing runs after this but the exit.
    gc.freeze()
    sys.exit(code)


#: The module that registers each top-level command. ``main`` imports only the one invoked:
#: ``lockdown report`` on a large log should not wait for the webhook server's imports.
#: tests/test_docs.py checks this table against what each module registers.
COMMAND_MODULES: dict[str, str] = {
    "run": "run_cmd",
    "restore": "run_cmd",
    "status": "run_cmd",
    "incidents": "run_cmd",
    "playbooks": "playbooks_cmd",
    "export": "evidence_cmd",
    "verify": "evidence_cmd",
    "serve": "serve_cmd",
    "watch": "serve_cmd",
    "audit": "audit_cmd",
    "report": "audit_cmd",
    "queue": "queue_cmd",
    "guard": "guard_cmd",
}


def _print_version(value: bool) -> None:
    """``lockdown --version``: the same ``__version__`` that every incident and bundle records
    as ``lockdown_version``, so a script can compare the two."""
    if value:
        from lockdown import __version__

        print(f"lockdown {__version__}")
        raise typer.Exit(0)


def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    """The group's callback: with one, typer keeps the command name even when an app holds a
    single command (without, it would run that command directly and refuse its name)."""


def _new_app() -> LockdownApp:
    app = LockdownApp(
        name="lockdown",
        help="Emergency containment for mail servers in Docker: contain, keep evidence, restore.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
    )
    app.callback()(_root)
    return app


def register_module(target: typer.Typer, name: str) -> None:
    """Add the commands of ``lockdown.cli.<name>`` to ``target``."""
    __import__(f"lockdown.cli.{name}", fromlist=["register"]).register(target)


def build_app(modules: Iterable[str] | None = None) -> LockdownApp:
    """The CLI with the commands of ``modules`` (default: all, in help order)."""
    target = _new_app()
    for name in modules if modules is not None else dict.fromkeys(COMMAND_MODULES.values()):
        register_module(target, name)
    return target


_full_app: LockdownApp | None = None


def __getattr__(name: str) -> Any:
    """``lockdown.cli.app``: every command, built on first use (tests and docs read it)."""
    global _full_app
    if name == "app":
        if _full_app is None:
            _full_app = build_app()
        return _full_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _command_app(args: Sequence[str]) -> typer.Typer:
    """The app for this command line: only the invoked command's module when the first
    argument names one, else every command (top-level help, unknown command)."""
    if args[:1] == ["--version"]:
        return build_app([])  # nothing else to import for one line
    name = COMMAND_MODULES.get(args[0]) if args else None
    return __getattr__("app") if name is None else build_app([name])


def _wants_json(argv: Sequence[str]) -> bool:
    return "--json" in argv


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit code (tests call this directly)."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_tb = "--traceback" in args or os.environ.get("LOCKDOWN_TRACEBACK") == "1"
    args = [a for a in args if a != "--traceback"]
    try:
        command = typer.main.get_command(_command_app(args))
        rv = command.main(args=args, prog_name="lockdown", standalone_mode=False)
    except typer.Abort:
        print("lockdown: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except _ClickException as exc:
        message = exc.format_message()  # type: ignore[attr-defined]
        ctx = getattr(exc, "ctx", None)
        hint = f"see `{ctx.command_path} --help`" if ctx is not None else None
        return _report(message, hint, int(ExitCode.BAD_INPUT), args)
    except LockdownError as exc:
        return _report(exc.message, exc.hint, int(exc.exit_code), args)
    except KeyboardInterrupt:
        print("lockdown: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the one catch-all, at the boundary
        fd, path = tempfile.mkstemp(prefix="lockdown-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(traceback.format_exc())
        if show_tb:
            traceback.print_exc()
        return _report(
            f"internal error: {type(exc).__name__}: {exc}",
            f"this is a bug; the traceback is in {path} (or rerun with --traceback)",
            int(ExitCode.INTERNAL),
            args,
        )
    if isinstance(rv, int):
        return rv
    return 0


#: Commands whose --json output is one object per line: an error is one more line.
_STREAMING = frozenset({"serve", "watch", "guard"})


def _report(message: str, hint: str | None, code: int, args: Sequence[str]) -> int:
    if _wants_json(args):
        error = {"message": message, "hint": hint, "exit_code": code}
        if args and args[0] in _STREAMING:
            print(json.dumps({"event": "error", "error": error}), flush=True)
        else:
            print(json.dumps({"error": error}, indent=2), flush=True)
    print(error_line(message, hint), file=sys.stderr, flush=True)
    return code
