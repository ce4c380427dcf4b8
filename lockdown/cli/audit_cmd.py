"""``audit`` (is this host an open relay?) and ``report`` (what happened in an incident)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from lockdown.cli.common import JsonOpt, StateDirOpt, pick_incident, root
from lockdown.cli.output import Output
from lockdown.errors import BadInput, ExitCode


def audit(
    probe: Annotated[
        bool,
        typer.Option("--probe", help="Also try to relay over IPv6 to the host's own addresses (never sends DATA)."),
    ] = False,
    container: Annotated[
        list[str] | None,
        typer.Option("--container", help="Audit only this container: name, id, auto, all, service:NAME (repeatable)."),
    ] = None,
    log: Annotated[
        list[Path] | None, typer.Option("--log", help="Also look for abuse in these mail logs (repeatable).")
    ] = None,
    container_logs: Annotated[
        bool,
        typer.Option("--container-logs/--no-container-logs", help="Read the mail containers' docker logs."),
    ] = True,
    log_hours: Annotated[
        float, typer.Option("--log-hours", help="How far back to read container logs.", min=0.01)
    ] = 168.0,
    daemon_json: Annotated[Path, typer.Option("--daemon-json", help="dockerd's configuration file.")] = Path(
        "/etc/docker/daemon.json"
    ),
    address: Annotated[
        list[str] | None,
        typer.Option("--address", help="Probe only this IPv6 address; it must be the host's own (repeatable)."),
    ] = None,
    port: Annotated[
        list[int] | None, typer.Option("--port", help="Probe this host port instead of the published ones.")
    ] = None,
    rcpt: Annotated[
        str, typer.Option("--rcpt", help="The outside recipient the probe offers.")
    ] = "lockdown-probe@example.net",
    # 10, not 5: postscreen (mailcow) holds a client it does not allowlist for postscreen_greet_wait
    # (6 s) before the banner, so a fixed mailcow would time out instead of answering 554.
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds per probe step (postscreen waits 6 s).", min=0.1, max=60)
    ] = 10.0,
    json_out: JsonOpt = False,
) -> None:
    """Find the exposure before anyone abuses it: is this host an open relay over IPv6? Exit 1 on a
    high or critical finding."""
    from lockdown import audit as au

    out = Output(json_out)
    if (address or port) and not probe:
        raise BadInput("--address and --port choose what --probe connects to; add --probe")
    options = au.AuditOptions(
        containers=list(container or []),
        daemon_json=daemon_json,
        logs=list(log or []),
        container_logs=container_logs,
        log_seconds=log_hours * 3600,
    )
    if probe:  # refuse a foreign address before reading anything else
        au.probe_targets(address, port, container)
    result = au.audit(options)
    if probe:
        au.merge(result, au.probe(address, port, container, rcpt=rcpt, timeout=timeout))
    if json_out:
        out.json(result.as_dict())
    else:
        _print_audit(out, result)
    if result.exposed:
        raise typer.Exit(int(ExitCode.FAILED))


def _print_audit(out: Output, result: object) -> None:
    from lockdown.audit import AuditResult
    from lockdown.stacks import shown

    assert isinstance(result, AuditResult)
    for st in result.stacks or []:
        where = f"Compose project {shown(st['project'])}" if st["project"] else "a lone container"
        gateway = f", gateway {st['gateway']} ({st['network']['name']})" if st["gateway"] else ""
        out.line(f"stack: {st['title']} ({where}): Postfix in {st['postfix'] or '?'}{gateway}")
        out.line(f"  recognised by: {'; '.join(st['reasons'])}")
        out.line(f"  the knob: {st['knob']}")
    if result.stacks:
        out.line()
    if not result.findings:
        out.line("no findings: no exposure seen")
        return
    out.table([[f.severity, f.id, f.title] for f in result.findings], ["severity", "id", "title"])
    for f in result.findings:
        out.line()
        out.line(f"[{f.severity}] {f.id}: {f.title}")
        out.line(f"  evidence: {f.evidence}")
        out.line(f"  fix:      {f.fix}")
        if f.fix_file:
            out.line(f"  file:     {f.fix_file}")
            out.line(f"  setting:  {f.fix_setting}")
        if f.check:
            out.line(f"  check:    {f.check}")
    out.line()
    out.line("exposed: yes (a high or critical finding; exit 1)" if result.exposed else "exposed: no")


def report(
    incident: Annotated[str | None, typer.Argument(help="Incident id (its collected Postfix logs are read).")] = None,
    log: Annotated[
        list[Path] | None,
        typer.Option("--log", help="Analyse these mail log files instead (plain, .gz or .tar; repeatable)."),
    ] = None,
    gateway: Annotated[
        list[str] | None,
        typer.Option("--gateway", help="A Docker gateway address or network (repeatable)."),
    ] = None,
    local_domain: Annotated[
        list[str] | None,
        typer.Option("--local-domain", help="A domain this server delivers locally (repeatable)."),
    ] = None,
    year: Annotated[
        int | None, typer.Option("--year", help="Year of timestamps without one (default: the incident's).")
    ] = None,
    last: Annotated[bool, typer.Option("--last", help="Report on the most recent incident.")] = False,
    html_file: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    json_out: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Explain a relay incident: who relayed what, through which path, and when it stopped."""
    from lockdown.mail import report as rp

    out = Output(json_out)
    domains = {d.lower() for d in local_domain} if local_domain else None
    if year is not None and not 1970 <= year <= 9999:
        raise BadInput(f"--year {year}: out of range")
    if log:
        if incident or last:
            raise BadInput("give an INCIDENT or --log FILE..., not both")
        sources = rp.sources_from_paths(log)
        gws, gw_source = rp.choose_gateways(gateway)
        result = rp.analyse(sources, gateways=gws, gateway_source=gw_source, local_domains=domains, year=year)
    else:
        if not incident and not last:
            raise BadInput("what should I report on? give an INCIDENT, --last, or --log FILE...")
        base = root(state_dir)
        incident_id = pick_incident(base, incident, last)
        result = rp.incident_report(base, incident_id, gateways=gateway, local_domains=domains, year=year)
        if not result.sources:
            out.info(f"lockdown: note: incident {incident_id} holds no log files (logs.container / logs.files)")
    for note in _notes(result):
        out.info(f"lockdown: note: {note}")
    if html_file is not None:
        rp.write_html(result, html_file)
        out.info(f"lockdown: HTML report written to {html_file}")
    if json_out:
        out.json(result.as_dict())
        return
    _print_report(out, result)


def _printable(text: object) -> str:
    """A log's text made safe for a terminal: control and other unprintable characters escaped."""
    s = str(text)
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def _notes(r: object) -> list[str]:
    """What the reader should know about the input itself: nothing Postfix in it, or no gateway seen."""
    from lockdown.mail.report import Report

    assert isinstance(r, Report)
    notes: list[str] = []
    if r.lines and not r.postfix_lines:
        notes.append(f"nothing in the log looked like Postfix: none of its {r.lines} line(s) is a "
                     "postfix/* (or amavis) syslog line")  # fmt: skip
    elif r.lines and not r.gateway_seen and r.gateway_source != "option":
        notes.append(f"no client in the log is one of the gateways ({r.gateway_source}): if the mail "
                     "server's Docker network uses another, give it with --gateway ADDR")  # fmt: skip
    return notes


def _print_report(out: Output, r: object) -> None:
    from lockdown.mail.analysis import top
    from lockdown.mail.report import Report

    assert isinstance(r, Report)
    d = r.as_dict()
    if r.incident:
        out.line(f"incident {r.incident['incident_id']}")
    out.line(f"read {d['lines']} lines from {len(d['sources'])} source(s)")
    if r.unparsed_lines:
        out.line(f"not Postfix:         {r.unparsed_lines} line(s), e.g.")
        for sample in r.unparsed_sample[:3]:
            out.line(f"  {_printable(sample)}")
    more = " ..." if len(d["gateways"]) > 6 else ""
    out.line(f"gateways ({d['gateway_source']}): {', '.join(d['gateways'][:6])}{more}")
    out.line()
    out.line(f"messages:            {d['messages']}")
    out.line(f"outside messages:    {d['outside_messages']} ({d['outside_recipients']} recipients)")
    out.line(f"signature messages:  {d['signature_messages']}  (client is a Docker gateway, no SASL)")
    if d["signature_messages"]:
        out.line(f"first abuse:         {d['first_abuse']}")
        out.line(f"last abuse:          {d['last_abuse']}")
    if d["containment_time"]:
        out.line(f"containment:         {d['containment_time']}")
        out.line(f"abusive before/after containment: {d['before_containment']} / {d['after_containment']}")
    out.line(f"rejects:             {d['rejects']['total']} ({d['rejects']['from_gateway']} from a gateway)")
    _print_path(out, r)
    held = r.held_queue
    if held is not None:
        out.line(f"held at containment: {held['messages']} message(s), "
                 f"{held['outside_recipients']} of {held['recipients']} recipient(s) outside")  # fmt: skip
    for title, counter, unit in (
        ("by client", r.by_client, "messages"),
        ("by sender domain", r.by_sender_domain, "messages"),
        ("by recipient domain", r.by_recipient_domain, "messages"),
        ("held, outside domain", Counter(held["by_recipient_domain"]) if held else Counter(), "recipients"),
    ):
        if counter:
            out.line()
            out.table([[_printable(k), str(v)] for k, v in top(counter, 10)], [title, unit])


def _print_path(out: Output, r: object) -> None:
    """postscreen's verdicts, the gateway's first trace, and the stack's hand-off (when there are any)."""
    from lockdown.mail.report import Report

    assert isinstance(r, Report)
    d = r.as_dict()
    ps = d["postscreen"]
    counts = {k: v for k, v in ps.items() if k != "from_gateway"}
    if any(counts.values()):
        shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        gw = ", ".join(f"{k} {v}" for k, v in ps["from_gateway"].items() if v) or "none"
        out.line(f"postscreen:          {shown} (from a gateway: {gw})")
    trace = d["first_gateway_trace"]
    if trace:
        addr = _printable(trace["client_addr"])
        out.line(f"first gateway trace: {trace['time']} postscreen {trace['verdict']} [{addr}] "
                 "(the gateway path: let in without postscreen's tests)")  # fmt: skip
    if r.stack:
        hand = f"; front hands clients over from {', '.join(r.handoff)}" if r.handoff else ""
        out.line(f"stack:               {_printable(r.stack.get('title') or r.stack['stack'])} "
                 f"(incident evidence){_printable(hand)}")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(audit)
    app.command()(report)
