"""The thin typer layer. ``main`` is the only place that turns errors into exit codes."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from typing import Any

import typer

from lockdown.cli.output import error_line
from lockdown.errors import ExitCode, LockdownError

# Newer typer vendors click; take its exception classes from typer itself.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


class LockdownApp(typer.Typer):
    """``lockdown.cli:app`` is the console entry point; calling it runs ``main``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sys.exit(main())


app = LockdownApp(
    name="lockdown",
    help="Emergency containment for mail servers in Docker: contain, keep evidence, restore.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _register() -> None:
    from lockdown.cli import playbooks_cmd, run_cmd

    run_cmd.register(app)
    app.add_typer(playbooks_cmd.app, name="playbooks")
    for name in ("evidence_cmd", "serve_cmd", "audit_cmd", "queue_cmd"):
        try:
            module = __import__(f"lockdown.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"lockdown.cli.{name}":
                raise
            continue
        module.register(app)


_register()


def _wants_json(argv: Sequence[str]) -> bool:
    return "--json" in argv


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit code (tests call this directly)."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_tb = "--traceback" in args or os.environ.get("LOCKDOWN_TRACEBACK") == "1"
    args = [a for a in args if a != "--traceback"]
    command = typer.main.get_command(app)
    try:
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


def _report(message: str, hint: str | None, code: int, args: Sequence[str]) -> int:
    if _wants_json(args):
        doc = {"error": {"message": message, "hint": hint, "exit_code": code}}
        print(json.dumps(doc, indent=2), flush=True)
    print(error_line(message, hint), file=sys.stderr, flush=True)
    return code
