"""The report as one self-contained HTML page: no scripts, no external assets, every value escaped."""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lockdown.errors import BadInput
from lockdown.mail.analysis import SAMPLE, Report, minute, top


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def timeline_svg(report: Report, width: int = 900, height: int = 220) -> str:
    """A per-minute bar chart of outside (grey) and signature (red) messages, inline SVG."""
    items = sorted(report.timeline.items())
    if not items:
        return '<p class="muted">no outside messages or rejects to chart</p>'
    start, end = items[0][0], items[-1][0]
    minutes = int((end - start).total_seconds() // 60) + 1
    peak = max(max(v[0], v[2]) for _, v in items) or 1
    pad_l, pad_b, pad_t = 40, 30, 10
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    bar = plot_w / max(minutes, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="messages per minute">',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 10}" y2="{pad_t + plot_h}" stroke="#888"/>',
        f'<text x="2" y="{pad_t + 10}" font-size="10">{peak}</text>',
        f'<text x="2" y="{pad_t + plot_h}" font-size="10">0</text>',
    ]
    for t, (outside, signature, rejects) in items:
        i = int((t - start).total_seconds() // 60)
        x = pad_l + i * bar
        w = max(bar * 0.9, 0.5)
        for value, colour in ((outside, "#999"), (signature, "#c0392b")):
            if value:
                h = plot_h * value / peak
                parts.append(
                    f'<rect x="{x:.2f}" y="{pad_t + plot_h - h:.2f}" width="{w:.2f}" height="{h:.2f}" '
                    f'fill="{colour}"><title>{_e(t.isoformat())}: {value}</title></rect>'
                )
        if rejects:
            y = pad_t + plot_h - plot_h * rejects / peak
            parts.append(f'<circle cx="{x + w / 2:.2f}" cy="{y:.2f}" r="2" fill="#2c7be5"/>')
    if report.containment_time is not None:
        off = (minute(report.containment_time) - start).total_seconds() / 60
        if 0 <= off <= minutes:
            x = pad_l + off * bar
            parts.append(
                f'<line x1="{x:.2f}" y1="{pad_t}" x2="{x:.2f}" y2="{pad_t + plot_h}" '
                'stroke="#27ae60" stroke-width="2" stroke-dasharray="4 3"/>'
                f'<text x="{x + 3:.2f}" y="{pad_t + 10}" font-size="10" fill="#27ae60">containment</text>'
            )
    parts.append(f'<text x="{pad_l}" y="{height - 8}" font-size="10">{_e(start.strftime("%Y-%m-%d %H:%M"))} UTC</text>')
    parts.append(
        f'<text x="{width - 10}" y="{height - 8}" font-size="10" text-anchor="end">'
        f"{_e(end.strftime('%Y-%m-%d %H:%M'))} UTC</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top;font-size:13px}th{background:#f4f4f4}.muted{color:#777}.bad{color:#c0392b;font-weight:bold}
code{font-family:ui-monospace,monospace;word-break:break-all}
"""


def render_html(report: Report) -> str:
    """One self-contained HTML page: no scripts, no external assets; every value escaped."""
    inc = report.incident or {}
    title = f"lockdown report {inc.get('incident_id') or ''}".strip()
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    if inc:
        out.append(
            f"<p>playbook <code>{_e(inc.get('playbook'))}</code>, created {_e(inc.get('created'))}, "
            f"run {_e(inc.get('run_status'))}, containment active: {_e(inc.get('containment_active'))}</p>"
        )
    out.append(
        f'<p class="bad">{report.signature_messages} message(s) relayed to outside domains from a Docker gateway '
        "without authentication: the IPv6-through-docker-proxy open relay signature.</p>"
        if report.signature_messages
        else '<p class="muted">No message matches the gateway-without-SASL signature.</p>'
    )
    out.append("<h2>Summary</h2>" + _table(["", ""], _summary(report)))
    out.append("<h2>Timeline (per minute)</h2>" + timeline_svg(report))
    out.append('<p class="muted">grey: outside messages; red: signature messages; blue dots: rejects; '
               "green dashed line: containment.</p>")  # fmt: skip
    out += _breakdowns(report)
    out += _held(report.held_queue)
    steps = inc.get("steps") or []
    if steps:
        rows = [(s["number"], s["id"], s["action"], s["state"], s["started"], s["ended"], s["describe"]) for s in steps]
        heads = ["#", "step", "action", "state", "started", "ended", "what"]
        out.append("<h2>Incident steps</h2>" + _table(heads, rows))
    out.append("<h2>Sources</h2>" + _table(["log"], [(s,) for s in report.sources]))
    if report.unparsed_sample:
        out.append(f"<h2>Lines that are not Postfix ({report.unparsed_lines})</h2>"
                   + _table(["line"], [(x,) for x in report.unparsed_sample]))  # fmt: skip
    out.append(f'<p class="muted">generated by lockdown at {_e(datetime.now(UTC).isoformat())}</p>')
    out.append("</body></html>\n")
    return "\n".join(out)


def _summary(report: Report) -> list[tuple[str, Any]]:
    d = report.as_dict()
    return [
        ("messages", d["messages"]),
        ("outside messages (accepted for outside domains)", d["outside_messages"]),
        ("outside recipients", d["outside_recipients"]),
        ("signature messages (gateway client, no SASL)", d["signature_messages"]),
        ("first abuse", d["first_abuse"] or "-"),
        ("last abuse", d["last_abuse"] or "-"),
        ("containment time", d["containment_time"] or "-"),
        ("abusive before containment", "-" if d["before_containment"] is None else d["before_containment"]),
        ("abusive after containment", "-" if d["after_containment"] is None else d["after_containment"]),
        ("rejects", d["rejects"]["total"]),
        ("rejects from a gateway", d["rejects"]["from_gateway"]),
        ("connections from a gateway", d["connects_from_gateway"]),
        ("postscreen ALLOWLISTED/WHITELISTED from a gateway",
         d["postscreen"]["from_gateway"]["allowlisted"] + d["postscreen"]["from_gateway"]["whitelisted"]),
        ("first gateway trace (postscreen)", _trace_text(d["first_gateway_trace"])),
        ("stack (incident evidence)", (d["stack"] or {}).get("title") or "-"),
        ("hand-off addresses (counted as the gateway path)", ", ".join(d["handoff"]) or "-"),
        ("gateways", f"{', '.join(d['gateways'])} ({d['gateway_source']})"),
        ("log lines read", d["lines"]),
        ("lines that are not Postfix", d["unparsed_lines"]),
    ]


def _trace_text(trace: dict[str, Any] | None) -> str:
    return f"{trace['time']} {trace['verdict']} [{trace['client_addr']}]" if trace else "-"


def _breakdowns(report: Report) -> list[str]:
    rows = []
    for m in report.sample:
        rcpts = ", ".join(f"{r.address} ({r.status or '?'})" for r in m.recipients if r.outside)
        rows.append((
            m.first_seen.astimezone(UTC).isoformat() if m.first_seen else "",
            m.queue_id + (" → " + " → ".join(m.queued_as) if m.queued_as else ""),
            f"{m.client_host or ''}[{m.client_addr or ''}]",
            m.sender,
            rcpts,
        ))  # fmt: skip
    by_rcpt = [(k, v, report.signature_by_recipient_domain.get(k, 0)) for k, v in top(report.by_recipient_domain, 25)]
    return [
        "<h2>Outside messages by client address</h2>" + _table(["client", "messages"], top(report.by_client, 25)),
        "<h2>By sender domain</h2>" + _table(["sender domain", "messages"], top(report.by_sender_domain, 25)),
        "<h2>By recipient domain</h2>" + _table(["recipient domain", "messages", "signature messages"], by_rcpt),
        "<h2>Rejects by code</h2>" + _table(["code", "count"], sorted(report.rejects_by_code.items())),
        f"<h2>Signature messages (first {SAMPLE})</h2>"
        + _table(["first seen (UTC)", "queue id", "client", "from", "outside recipients"], rows),
    ]


def _held(held: dict[str, Any] | None) -> list[str]:
    """The mail held in the queue at containment, with its recipients (the logs name none)."""
    if held is None:
        return []
    rows = [
        (h["container"], h["queue_id"], h["queue_name"], h["sender"],
         ", ".join(r["address"] + (" (outside)" if r["outside"] else "") for r in h["recipients"]))
        for h in held["sample"]
    ]  # fmt: skip
    return [
        f"<h2>Held in the queue at containment: {held['messages']} message(s), "
        f"{held['outside_recipients']} of {held['recipients']} recipient(s) outside</h2>",
        _table(["container", "queue id", "queue", "from", "recipients"], rows),
    ]


def write_html(report: Report, path: Path) -> None:
    """Write the HTML report 0600 (it holds addresses), replacing the file atomically."""
    from lockdown.paths import atomic_write

    if path.is_dir():
        raise BadInput(f"--html {path}: is a directory")
    if not path.parent.is_dir():
        raise BadInput(f"--html {path}: directory {path.parent} does not exist")
    try:
        atomic_write(path, render_html(report).encode("utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror}") from None
