"""All printing: human lines on the terminal, or one JSON document with --json."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

OK, FAIL, HELD, DOT = "✓", "✗", "⏸", "·"

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal would act on shown as an escape instead.

    Why: member names, alert labels, log lines and container names come from
    whoever wrote the bundle, the alert or the log. Printed raw, an escape
    sequence can move the cursor and overwrite a ``✗`` with a forged
    ``✓ verified`` line, a newline can forge a line of its own, and a bidi
    override can reorder what is shown (issue 13). Every human printer goes
    through this one function; ``--json`` output is escaped by the JSON encoder.
    Unprintable means what ``str.isprintable`` says: control and format
    characters (C0, DEL, C1, bidi overrides, zero-width), separators other
    than the space, unassigned code points.
    """
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _fmt_seconds(s: float | None) -> str:
    return "" if s is None else f"{s:.2f}s"


class Output:
    """Human or JSON output. Diagnostics always go to stderr."""

    def __init__(self, json_mode: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = self.out.isatty() and not json_mode
        self._current: str | None = None
        self._t0 = 0.0

    # ----------------------------------------------------------- basics
    def line(self, text: str = "") -> None:
        """One line for a human on stdout (nothing under --json); control characters escaped."""
        if not self.json_mode:
            print(terminal_safe(text), file=self.out, flush=True)

    def info(self, text: str) -> None:
        """One line of side information on stderr, shown in both modes; control characters escaped."""
        print(terminal_safe(text), file=self.err, flush=True)

    def error(self, message: str, hint: str | None = None) -> None:
        """``lockdown: error: …`` and its hint on stderr, in both modes (:func:`error_line` escapes both parts)."""
        print(error_line(message, hint), file=self.err, flush=True)

    def json_line(self, doc: dict[str, Any]) -> None:
        """One compact JSON object per line: the --json form of long-running commands (serve, watch)."""
        if self.json_mode:
            print(json.dumps(doc, sort_keys=True, default=str), file=self.out, flush=True)

    def json(self, doc: Any) -> None:
        print(json.dumps(doc, indent=2, sort_keys=True, default=str), file=self.out, flush=True)

    def table(self, rows: Iterable[Iterable[str]], headers: list[str]) -> None:
        rows = [[terminal_safe(str(c)) for c in r] for r in rows]
        widths = [len(h) for h in headers]
        for r in rows:
            widths = [max(w, len(c)) for w, c in zip(widths, r, strict=False)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        self.line(fmt.format(*headers).rstrip())
        for r in rows:
            self.line(fmt.format(*r).rstrip())

    # ----------------------------------------------------------- run events
    def event(self, kind: str, data: dict[str, Any]) -> None:
        """Render runner events as a live list of steps."""
        if self.json_mode:
            return
        if kind == "start":
            self.line(f"incident {data['incident_id']}: {len(data['plan'])} steps")
        elif kind == "step-start":
            self._current = data["id"]
            self._t0 = time.monotonic()
            if self.tty:
                text = terminal_safe(f"  … {data['id']:<22} {data['describe']}")
                print(text, end="\r", file=self.out, flush=True)
        elif kind == "note":
            if self.tty:
                print("\x1b[2K", end="", file=self.out)
            self.line(f"      {DOT} [{data['step']}] {data['message']}")
        elif kind == "step-end":
            mark = {"ok": OK, "undone": OK, "held": HELD}.get(data["state"], FAIL)
            if self.tty:
                print("\x1b[2K", end="", file=self.out)
            label = data["state"] if data["state"] not in ("ok",) else ""
            seconds = _fmt_seconds(data.get("seconds"))
            self.line(f"  {mark} {data['id']:<22} {data['action']:<20} {seconds:>7} {label}".rstrip())
            if data.get("error"):
                self.line(f"      {data['error']}")
        elif kind == "interrupted":
            self.line(f"  stopped before step {data['before']}: the incident is journaled and restorable")


def error_line(message: str, hint: str | None) -> str:
    """``lockdown: error: MESSAGE`` and its hint line; both escaped (they may quote untrusted input)."""
    text = f"lockdown: error: {terminal_safe(message)}"
    if hint:
        text += f"\n  -> {terminal_safe(hint)}"
    return text
