"""``logs.container``: stream ``docker logs`` (stdout and stderr, timestamped) into evidence."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

from lockdown import dockerapi
from lockdown.actions.base import ParamError, StepContext, UndoRecord
from lockdown.actions.containers import ContainerAction, ContainerParams
from lockdown.errors import ActionError

_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: float | None = None) -> float | None:
    """``since`` as a Unix time: "" (everything), a duration ("90m", "24h", "7d"),
    Unix seconds ("1767225600") or an RFC 3339 time ("2026-01-01T00:00:00Z").

    Raises ValueError(reason) for anything else.
    """
    value = value.strip()
    if not value:
        return None
    now = time.time() if now is None else now
    match = _DURATION_RE.match(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        return float(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f'expected a duration ("24h", "90m", "7d"), Unix seconds or an RFC 3339 time, got {value!r}'
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; add Z or an offset such as +02:00")
    return parsed.timestamp()


@dataclass(frozen=True)
class Params(ContainerParams):
    since: str = ""
    timestamps: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_since(self.since)
        except ValueError as exc:
            raise ParamError("since", str(exc)) from None


class LogsContainer(ContainerAction[Params]):
    """Stream the container's log (stdout and stderr, as ``docker logs``) into evidence.

    Writes ``logs/<container>.log``: the same bytes as ``docker logs -t
    CONTAINER > file 2>&1``, streamed chunk by chunk (never the whole log in
    memory; chunks are not aligned to lines). Works on running, paused and
    stopped containers whose log driver can be read back (json-file, local,
    journald, or any driver through the daemon's dual-logging cache).
    Mailu's Postfix logs to stdout; docker-mailserver's stdout only holds
    the log since the container started (use logs.files for
    /var/log/mail/).

    Parameters:
      {ContainerParams}
      since: only lines after this: a duration before the step ("24h", "90m",
        "7d"), Unix seconds, or an RFC 3339 time; empty for the whole log.
      timestamps: prefix each line with the daemon's RFC 3339 receive time
        (default true).

    Example::

        [[steps]]
        id = "container-log"
        action = "logs.container"
        container = "mailserver"
        since = "48h"
    """

    name = "logs.container"
    Params = Params

    def describe(self) -> str:
        since = f" since {self.params.since}" if self.params.since else ""
        return f"save the log{since} of {self.params.target_text()}"

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        since = parse_since(self.params.since)
        if since is not None:
            ctx.result["since_unix"] = since
        files = {}
        for ref in self.resolve():
            data = dockerapi.inspect(ref.id, ref.name)
            driver = (data.get("HostConfig") or {}).get("LogConfig", {}).get("Type", "?")
            tty = bool((data.get("Config") or {}).get("Tty"))
            t0 = time.monotonic()
            with ctx.open_evidence(f"logs/{ref.name}.log") as fh:
                try:
                    for chunk in dockerapi.logs_stream(
                        ref.id, ref.name, since=since, timestamps=self.params.timestamps, tty=tty
                    ):
                        fh.write(chunk)
                except ActionError as exc:
                    raise ActionError(
                        f"{exc.message} (log driver {driver}; {fh.size} bytes saved in {fh.rel})", exc.hint
                    ) from None
            entry = ctx.evidence.entries[-1]
            seconds = time.monotonic() - t0
            if not dockerapi.exists(ref.id):
                raise ActionError(
                    f"container {ref.name} disappeared while its log was read; "
                    f"{entry.size} bytes saved in {entry.path} may be incomplete",
                    "everything journaled so far stays restorable: `lockdown restore INCIDENT`",
                )
            files[ref.name] = {"path": entry.path, "bytes": entry.size, "sha256": entry.sha256, "driver": driver}
            rate = entry.size / seconds / 1e6 if seconds > 0 else 0.0
            ctx.note(
                f"{ref.name} ({data['State']['Status']}, log driver {driver}): {entry.size} bytes "
                f"in {seconds:.1f} s ({rate:.0f} MB/s) -> {entry.path}"
            )
        ctx.result["files"] = files
