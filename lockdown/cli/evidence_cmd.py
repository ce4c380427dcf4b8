"""``export`` and ``verify``: evidence bundles for whoever asks what happened."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, TextIO

import typer

from lockdown.cli.common import JsonOpt, StateDirOpt, pick_incident, root
from lockdown.cli.output import FAIL, OK, Output
from lockdown.errors import ExitCode, IntegrityError
from lockdown.evidence.export import export_incident
from lockdown.evidence.verify import verify_bundle

#: Exports smaller than this finish too fast for a progress bar to help.
PROGRESS_MIN_BYTES = 64 << 20


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class ProgressBar:
    """A one-line progress bar on a terminal (stderr), redrawn at most 10 times a second.

    Drawn only when ``stream`` is a terminal and the output is for a human:
    under ``--json`` a caller is a program, and carriage-return redraws in a
    captured stderr only garble its log.
    """

    def __init__(self, stream: TextIO, label: str, *, json_out: bool = False) -> None:
        self.stream = stream
        self.label = label
        self.enabled = stream.isatty() and not json_out
        self.t0 = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < PROGRESS_MIN_BYTES:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        frac = min(1.0, done / total) if total else 1.0
        width = 30
        fill = int(frac * width)
        rate = done / max(now - self.t0, 1e-6)
        self.stream.write(
            f"\r{self.label} [{'#' * fill}{'-' * (width - fill)}] {frac * 100:5.1f}% "
            f"{_mib(done)}/{_mib(total)} {_mib(int(rate))}/s"
        )
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def export(
    incident: Annotated[str | None, typer.Argument(help="Incident id (see `lockdown incidents`).")] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Bundle to write (default: ./<incident-id>.tar.gz); never overwritten."),
    ] = None,
    last: Annotated[bool, typer.Option("--last", help="Export the most recent incident.")] = False,
    report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report",
            help="Add the incident report (report/report.html, report.json) when the evidence holds mail logs.",
        ),
    ] = True,
    json_out: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Write an incident as a .tar.gz evidence bundle plus a FILE.sha256 sidecar.

    Works during containment and after restore; does not wait for a run in progress.
    When the evidence holds mail logs, the `lockdown report` of the incident is
    added under report/ (listed in case.json, so `verify` checks it too).
    """
    out = Output(json_out)
    base = root(state_dir)
    incident_id = pick_incident(base, incident, last)
    bar = ProgressBar(sys.stderr, f"exporting {incident_id}", json_out=json_out)
    try:
        result = export_incident(base, incident_id, output, progress=bar, report=report)
    finally:
        bar.finish()
    for item in result.not_exported:
        out.info(f"lockdown: warning: {item['path']}: not exported: {item['reason']}")
    if result.report.get("error"):
        why = result.report["error"]
        out.info(f"lockdown: warning: the incident report was not built (the bundle is complete without it): {why}")
        where = f"; the traceback is in {result.report['traceback']}" if result.report.get("traceback") else ""
        out.info(f"  -> `lockdown report {result.incident_id} --html FILE` builds it on its own{where}")
    if json_out:
        out.json(result.as_dict())
    else:
        state = "containment active" if result.containment_active else "no active containment"
        out.line(f"{OK} exported incident {result.incident_id} ({state})")
        out.line(f"  bundle:  {result.bundle} ({_mib(result.bundle_bytes)} from {_mib(result.input_bytes)})")
        out.line(f"  sha256:  {result.sha256}  ({result.sidecar.name})")
        out.line(f"  content: {result.evidence_files} evidence file(s), journal of {result.journal_lines} line(s)")
        rep = result.report
        if rep.get("included"):
            out.line(f"  report:  {', '.join(rep['files'])} ({rep['summary']['outside_messages']} outside message(s))")
        elif rep.get("sources") and rep.get("reason"):
            out.line(f"  report:  not included: {rep['reason']}")
        out.line(f"  check it: lockdown verify {result.bundle}")
    if result.problems:
        more = f" (and {len(result.problems) - 1} more, listed in case.json)" if len(result.problems) > 1 else ""
        message = (
            f"exported {result.bundle}, but the incident itself fails its integrity checks: {result.problems[0]}{more}"
        )
        hint = "the bundle holds the incident as it is on disk; `lockdown verify` will report the same failure"
        if json_out:
            out.error(message, hint)
            raise typer.Exit(int(ExitCode.FAILED))
        raise IntegrityError(message, hint)


def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `lockdown export`.")],
    no_sidecar: Annotated[
        bool,
        typer.Option("--no-sidecar", help="Check the contents even though FILE.sha256 is missing."),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check a bundle: sidecar hash, archive safety, every evidence hash, the journal chain, case.json.

    Reads the bundle as a stream and extracts nothing; needs neither root nor Docker.
    Exit 0 when everything holds, 1 naming the first failure.
    """
    out = Output(json_out)
    report = verify_bundle(bundle, require_sidecar=not no_sidecar)
    if json_out:
        out.json(report.as_dict())
    else:
        for check in report.checks:
            mark = {True: OK, False: FAIL, None: "-"}[check.ok]
            out.line(f"{mark} {check.name:<9} {check.detail}")
        if report.ok:
            out.line(f"{OK} {bundle}: verified (incident {report.incident_id})")
    if report.ok:
        return
    if json_out:
        assert report.failure is not None
        out.error(report.failure)
        raise typer.Exit(int(ExitCode.FAILED))
    report.raise_for_failure()


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command()(verify)
