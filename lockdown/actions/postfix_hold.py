"""``postfix.hold_queue``: save the queued mail as evidence, then put it on hold.

Restore never releases spam on its own: the undo waits for the operator's
decision ``release-queue`` (``lockdown restore --release-queue``), and
``lockdown queue purge`` deletes the held messages instead. Both act on
exactly the queue ids this step recorded, nothing else.

Everything runs through ``docker exec``, which Docker refuses on a paused
container (HTTP 409): this step comes before ``docker.pause``, or after it
with ``resume_paused = true`` once another step closed the outside path
(``relay-incident`` strips IPv6, pauses, then holds).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lockdown import dockerapi
from lockdown.actions.base import StepContext, UndoRecord
from lockdown.actions.containers import ContainerAction, ContainerParams
from lockdown.errors import ActionError, BadInput
from lockdown.record.steps import HELD_UNDO

ACTION = "postfix.hold_queue"
#: The decision its undo waits for, as the journal's reader knows it (one place: record.steps).
DECISION = HELD_UNDO[ACTION]
#: The other decision a held queue offers: delete exactly the held ids (``lockdown queue purge``).
PURGE = "purge-queue"
QUEUE_ID_RE = re.compile(r"^[0-9A-Za-z]{4,32}$")
#: Queue ids per ``postsuper``/``postcat`` exec (well under ARG_MAX).
BATCH = 200
NO_POSTFIX_HINT = (
    'target the container that runs Postfix (Mailu: container = "service:smtp"); '
    'with on_error = "continue" the playbook goes on without this step'
)

#: What the report needs to tell the server's own mail from mail relayed outside
#: (mail/evidence.py reads ``postconf.txt``), and the trust that made the relay.
POSTCONF_PARAMS = (
    "mydestination", "virtual_mailbox_domains", "virtual_alias_domains", "relay_domains",
    "myhostname", "mydomain", "mynetworks",
)
#: The sections a queue exec runs besides ``postcat -q ID`` (a queue id is
#: alphanumeric, so it never starts with "@").
LIST, POSTCONF, HOLD_ALL = "@postqueue", "@postconf", "@hold"

# One exec runs several commands (each docker exec costs ~0.1 s, the commands
# far less): each command's merged output is framed by marker lines carrying a
# random nonce, which spam cannot forge because it is chosen after it arrived.
_QUEUE_SCRIPT = (
    r"""n=$1; shift
for arg do
  printf '\n%s BEGIN %s\n' "$n" "$arg"
  case $arg in
    @postqueue) postqueue -j ;;
    @postconf) postconf -x """
    + " ".join(POSTCONF_PARAMS)
    + r""" ;;
    @hold) postsuper -h ALL ;;
    *) postcat -q "$arg" ;;
  esac 2>&1
  rc=$?
  printf '\n%s END %s %s\n' "$n" "$arg" "$rc"
done
"""
)


# ------------------------------------------------------------------ queue access


def _check_exec(name: str, cmd: str, code: int, output: bytes) -> None:
    """ActionError for a missing tool, a stopped Postfix or a failed command."""
    text = output.decode("utf-8", "replace").strip()
    if code in (126, 127) or "executable file not found" in text:
        raise ActionError(f"no Postfix in container {name}: {cmd} not found", NO_POSTFIX_HINT)
    if code != 0:
        raise ActionError(f"{cmd} failed in {name} (exit {code}): {text[-400:] or 'no output'}")


class QueueListing:
    """``postqueue -j`` of one container: ids per queue (hold, active, deferred, incoming, maildrop)."""

    def __init__(self) -> None:
        self.queue_of: dict[str, str] = {}
        self.bad_lines = 0

    def add_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            item = json.loads(line)
            qid, queue = str(item["queue_id"]), str(item["queue_name"])
        except (ValueError, KeyError, TypeError):
            self.bad_lines += 1
            return
        if QUEUE_ID_RE.match(qid):
            self.queue_of[qid] = queue
        else:
            self.bad_lines += 1

    def feed(self, data: bytes) -> bytes:
        """Add the complete lines of ``data``; returns the unfinished last line, to prepend to the next."""
        lines = data.split(b"\n")
        for line in lines[:-1]:
            self.add_line(line)
        return lines[-1]

    def ids(self, queue: str | None = None, *, not_in: str | None = None) -> list[str]:
        return sorted(
            q for q, name in self.queue_of.items() if (queue is None or name == queue) and name != not_in
        )

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in self.queue_of.values():
            out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items()))

    def text(self, empty: str = "empty") -> str:
        """``2 deferred, 1 hold``: the counts as an operator reads them."""
        return ", ".join(f"{n} {q}" for q, n in self.counts().items()) or empty


def read_queue(cid: str, name: str) -> QueueListing:
    """Run ``postqueue -j`` in the container (the undo and ``queue purge`` look before they act)."""
    return queue_exec(None, cid, name, [LIST]).checked_listing(name)


def postsuper(cid: str, name: str, flag: str, ids: Iterable[str], queue: str | None = None) -> list[str]:
    """``postsuper -H/-d id ... [queue]`` in batches; returns postsuper's output lines."""
    out: list[str] = []
    ids = list(ids)
    for i in range(0, len(ids), BATCH):
        batch = ids[i : i + BATCH]
        cmd = ["postsuper"]
        for qid in batch:
            cmd += [flag, qid]
        if queue:
            cmd.append(queue)
        code, output = dockerapi.exec_output(cid, name, cmd)
        _check_exec(name, "postsuper", code, output)
        out += [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    return out


def _split_framed(chunks: Iterator[bytes], nonce: bytes) -> Iterator[tuple[str, bytes | None, int | None]]:
    """Turn a framed stream (see ``_QUEUE_SCRIPT``) into BEGIN / content / END events.

    Yields ``(section, None, None)`` on BEGIN, ``(section, bytes, None)`` for
    content and ``(section, None, rc)`` on END; output outside any section (the
    shell's own error) comes as ``("", bytes, None)``. Only the tail that could
    hold a split marker is kept between chunks.
    """
    buf = b""
    current = ""
    keep = len(nonce) + 1
    for chunk in chunks:
        buf += chunk
        while True:
            pos = buf.find(b"\n" + nonce + b" ")
            if pos < 0:
                if len(buf) > keep:
                    yield current, buf[:-keep], None
                    buf = buf[-keep:]
                break
            if pos:
                yield current, buf[:pos], None
            nl = buf.find(b"\n", pos + 1)
            if nl < 0:
                buf = buf[pos:]
                break
            words = buf[pos + 1 : nl].decode("ascii", "replace").split()
            buf = buf[nl + 1 :]
            if len(words) >= 3 and words[1] == "BEGIN":
                current = words[2]
                yield current, None, None
            elif len(words) >= 4 and words[1] == "END":
                yield words[2], None, int(words[3]) if words[3].lstrip("-").isdigit() else -1
                current = ""
    if buf and current == "":
        yield "", buf, None


#: Bytes kept of a section that is not streamed to a file (postconf, postsuper, errors).
_KEEP = 1 << 20


@dataclass
class QueueExec:
    """What one or more queue execs printed, by section (see ``queue_exec``)."""

    listing: QueueListing | None = None
    kept: dict[str, bytes] = field(default_factory=dict)  # section -> output (postconf, postsuper, errors)
    codes: dict[str, int] = field(default_factory=dict)  # section -> exit code
    shell: tuple[int, bytes] | None = None  # the exec's own exit code and output when no section ran

    def checked(self, name: str, section: str, cmd: str) -> bytes:
        """The section's output; ActionError if it did not run or failed."""
        if section not in self.codes:
            code, out = self.shell or (-1, b"")
            _check_exec(name, "sh", code if code else -1, out)
        _check_exec(name, cmd, self.codes[section], self.kept.get(section, b""))
        return self.kept.get(section, b"")

    def checked_listing(self, name: str) -> QueueListing:
        self.checked(name, LIST, "postqueue")
        assert self.listing is not None
        return self.listing


class _Sections:
    """Routes one exec's framed events: the listing to its parser (and file), postcat to its file."""

    def __init__(self, ctx: StepContext | None, name: str, out: QueueExec, listing_file: str | None) -> None:
        self.ctx, self.name, self.out, self.listing_file = ctx, name, out, listing_file
        self.fh: Any = None
        self.carry = b""

    def begin(self, section: str) -> None:
        if section == LIST:
            self.out.listing = QueueListing()
            if self.ctx is not None and self.listing_file:
                self.fh = self.ctx.open_evidence(self.listing_file)
        elif not section.startswith("@") and self.ctx is not None:
            self.fh = self.ctx.open_evidence(f"queue/{self.name}/{section}.txt")

    def data(self, section: str, data: bytes) -> None:
        if self.fh is not None:
            self.fh.write(data)
        if section == LIST:
            assert self.out.listing is not None
            self.carry = self.out.listing.feed(self.carry + data)
        if section == LIST or section.startswith("@") or not section:
            kept = self.out.kept.get(section, b"")
            if len(kept) < (4096 if section == LIST else _KEEP):
                self.out.kept[section] = kept + data[: _KEEP - len(kept)]

    def end(self, section: str, rc: int) -> None:
        if section == LIST and self.out.listing is not None:
            self.out.listing.add_line(self.carry)
            self.carry = b""
        self.close()
        self.out.codes[section] = rc

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def queue_exec(
    ctx: StepContext | None, cid: str, name: str, sections: list[str], *, listing_file: str | None = None
) -> QueueExec:
    """Run ``sections`` (LIST, POSTCONF, HOLD_ALL, then queue ids for ``postcat -q``) in as few execs as possible.

    One ``docker exec`` per BATCH ids: the named sections run first, in order,
    in the first. The listing streams into ``listing_file`` when given (with a
    ``ctx``); each ``postcat`` goes to ``queue/<name>/<id>.txt``.
    """
    out = QueueExec()
    named = [s for s in sections if s.startswith("@")]
    ids = [s for s in sections if not s.startswith("@")]
    batches = [named + ids[:BATCH]] + [ids[i : i + BATCH] for i in range(BATCH, len(ids), BATCH)]
    with ctx.evidence.batch() if ctx is not None else nullcontext():  # one manifest write for every message
        for batch in batches:
            if batch:
                _exec_batch(ctx, cid, name, batch, out, listing_file)
    postcats = [out.codes[q] for q in ids if q in out.codes]
    if postcats and all(rc == 127 for rc in postcats):
        raise ActionError(f"no Postfix in container {name}: postcat not found", NO_POSTFIX_HINT)
    return out


def _exec_batch(
    ctx: StepContext | None, cid: str, name: str, batch: list[str], out: QueueExec, listing_file: str | None
) -> None:
    """One ``docker exec`` of ``_QUEUE_SCRIPT`` over ``batch``, its sections routed into ``out``."""
    nonce = secrets.token_hex(16)
    stream = dockerapi.ExecStream(cid, name, ["sh", "-c", _QUEUE_SCRIPT, "sh", nonce, *batch])
    route = _Sections(ctx, name, out, listing_file)
    try:
        for section, data, rc in _split_framed(iter(stream), nonce.encode()):
            if data is None and rc is None:
                route.begin(section)
            elif data is not None:
                route.data(section, data)
            elif rc is not None:
                route.end(section, rc)
    finally:
        route.close()
    if not any(s in out.codes for s in batch):
        out.shell = (stream.exit_code, out.kept.get("", b""))


def locate(entry: dict[str, Any], ctx_note: Callable[[str], None]) -> tuple[str, str] | None:
    """(id, name) of the recorded container: by id, else a container recreated under the same name.

    docker-mailserver keeps its queue on a volume, so a recreated container
    holds the same queue ids. None if neither exists.
    """
    cid, name = entry["id"], entry["name"]
    if dockerapi.inspect_or_none(cid) is not None:
        return cid, name
    data = dockerapi.inspect_or_none(name)
    if data is None:
        return None
    ctx_note(f"{name} was recreated ({cid[:12]} -> {data['Id'][:12]}); acting on the new container's queue")
    return data["Id"], name


def _not_paused(cid: str, name: str) -> None:
    data = dockerapi.inspect(cid, name)
    status = data["State"]["Status"]
    if status == "paused":
        raise ActionError(
            f"container {name} is paused: Docker refuses exec in a paused container (HTTP 409 Conflict), "
            "so its queue cannot be read or changed",
            "hold the queue before pausing (put postfix.hold_queue before docker.pause, or after it with "
            "resume_paused = true once another step closed the outside path), "
            "or unpause it first (`lockdown restore` of the pause, or `docker unpause`)",
        )
    if status != "running":
        raise ActionError(f"container {name} is {status}: Postfix's queue can only be handled in a running container")


def pending_ids(entry: dict[str, Any]) -> list[str]:
    """Recorded held ids not purged yet."""
    purged = set(entry.get("purged", []))
    return [q for q in entry.get("held", []) if q not in purged]


def _where_now(
    entry: dict[str, Any], ids: list[str], note: Callable[[str], None]
) -> tuple[str, str, list[str], list[str], list[str]] | None:
    """(container id, name, ids still on hold, ids released elsewhere, ids gone), or None without the container.

    The one reading of "where are the recorded messages now" for both decisions
    on a held queue: release (``undo``) and delete (``purge-queue``).
    """
    found = locate(entry, note)
    if found is None:
        return None
    cid, name = found
    _not_paused(cid, name)
    queue_of = read_queue(cid, name).queue_of
    on_hold = [q for q in ids if queue_of.get(q) == "hold"]
    elsewhere = [q for q in ids if q in queue_of and queue_of[q] != "hold"]
    return cid, name, on_hold, elsewhere, [q for q in ids if q not in queue_of]


def _hold_entry(ctx: StepContext, record: UndoRecord, entry: dict[str, Any], *, resumed: bool) -> dict[str, Any]:
    """Save one container's queue as evidence and ``postsuper -h ALL``, in two execs; returns its summary.

    The first exec lists the queue (evidence) and reads ``postconf``; for a
    container this step resumed, the ids to hold are journaled from that
    listing before the second exec holds, lists again and saves every listed
    message with ``postcat`` (a held message stays readable). Mail that
    arrived between the listing and the hold is held too, so it is recorded
    too (``amend_undo``) and saved by a third exec.
    """
    cid, name = entry["id"], entry["name"]
    first = queue_exec(ctx, cid, name, [LIST, POSTCONF], listing_file=f"queue/{name}/postqueue.jsonl")
    listing = first.checked_listing(name)
    _record_postconf(ctx, name, first)
    if resumed:
        entry["held"], entry["already_held"] = listing.ids(not_in="hold"), listing.ids("hold")
        entry["queues_before"] = listing.counts()
        ctx.amend_undo(record)  # the ids to hold, journaled before the hold
    second = queue_exec(ctx, cid, name, [HOLD_ALL, LIST, *listing.ids()])
    output = second.checked(name, HOLD_ALL, "postsuper").decode("utf-8", "replace").splitlines()
    after = second.checked_listing(name)
    codes = {q: second.codes[q] for q in listing.ids() if q in second.codes}
    extra = sorted(set(after.ids("hold")) - set(entry["already_held"]) - set(entry["held"]))
    if extra:
        entry["held"] = sorted(set(entry["held"]) | set(extra))
        ctx.amend_undo(record)
        third = queue_exec(ctx, cid, name, extra)
        codes.update({q: third.codes[q] for q in extra if q in third.codes})
    failed = sorted(q for q, rc in codes.items() if rc != 0)
    ctx.note(
        f"{name}: queue {listing.text()}; saved {len(codes) - len(failed)} message(s) "
        f"with postcat to evidence/queue/{name}/"
        + (f" ({len(failed)} left the queue meanwhile)" if failed else "")
    )
    not_held = sorted(set(entry["held"]) - set(after.ids("hold")))
    held_now = sorted(set(entry["held"]) & set(after.ids("hold")))
    said = "; ".join(line for line in output if line.strip())
    ctx.note(
        f"{name}: {said or 'postsuper -h ALL done'}; {len(held_now)} message(s) held by "
        f"this step" + (f", {len(entry['already_held'])} were on hold before" if entry["already_held"] else "")
        + (f", {len(not_held)} left the queue before the hold" if not_held else "")
    )
    return {
        "held": len(held_now),
        "already_held": len(entry["already_held"]),
        "queues_after": after.counts(),
        "postcat_failed": failed,
    }


def _record_postconf(ctx: StepContext, name: str, done: QueueExec) -> None:
    """Save ``postconf -x`` of POSTCONF_PARAMS as ``queue/NAME/postconf.txt``.

    Without it the incident report counts mail to the server's own domains as
    relayed outside. A failure is noted, not fatal: the report then learns the
    local domains from deliveries.
    """
    code = done.codes.get(POSTCONF, -1)
    if code != 0:
        ctx.note(f"{name}: postconf -x failed (exit {code}); the report learns local domains from deliveries")
        return
    ctx.write_bytes(f"queue/{name}/postconf.txt", done.kept.get(POSTCONF, b""))


# ------------------------------------------------------------------ the action


@dataclass(frozen=True)
class Params(ContainerParams):
    #: A container an earlier step paused is resumed for the hold and paused again. Only
    #: safe once another step (ipv6.strip, nft.block) closed the outside path.
    resume_paused: bool = False


class PostfixHoldQueue(ContainerAction[Params]):
    """Save the Postfix queue as evidence, then put every queued message on hold.

    Runs through ``docker exec`` while the container is still running:
    Docker refuses exec in a paused container (HTTP 409), so place this step
    before ``docker.pause``. Writes ``queue/<container>/postqueue.jsonl``
    (``postqueue -j``) and ``queue/<container>/<queue_id>.txt`` (``postcat
    -q``: the spam itself) per message, then runs ``postsuper -h ALL`` and
    journals the ids it held (messages already on hold are left out).
    Restore does not release them on its own: ``lockdown restore
    --release-queue`` releases exactly those ids (``postsuper -H``), and
    ``lockdown queue purge INCIDENT`` deletes them (``postsuper -d``). A
    container without Postfix fails the step with a clear message; the
    playbook's ``on_error`` decides whether the run goes on.

    Parameters:
      {ContainerParams}
      resume_paused: a container that an earlier step paused is resumed for
        the hold (about 0.5 s of docker exec) and paused again. Lets the
        playbook pause early and hold later; put an
        ipv6.strip or nft.block step before this one, so that no outside
        client reaches the container while it runs (default false).

    Example::

        [[steps]]
        id = "hold-queue"
        action = "postfix.hold_queue"
        container = "mailserver"
        on_error = "continue"
    """

    name = ACTION
    Params = Params
    held_undo = DECISION
    offers = (PURGE,)

    def describe(self) -> str:
        return f"save and hold the Postfix queue of {self.params.target_text()}"

    def prepare(self, ctx: StepContext) -> UndoRecord:
        entries = []
        for ref in self.resolve():
            if self.params.resume_paused and dockerapi.inspect(ref.id, ref.name)["State"]["Status"] == "paused":
                # Read in apply, once resumed (prepare changes nothing): an empty record until then.
                entries.append({"id": ref.id, "name": ref.name, "held": [], "already_held": [], "resume": True})
                continue
            _not_paused(ref.id, ref.name)
            listing = read_queue(ref.id, ref.name)
            entries.append(
                {
                    "id": ref.id,
                    "name": ref.name,
                    # What this step will hold: everything not already on hold.
                    "held": listing.ids(not_in="hold"),
                    "already_held": listing.ids("hold"),
                    "queues_before": listing.counts(),
                }
            )
        return {"incident": ctx.incident_id, "containers": entries}

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        assert undo is not None
        record = json.loads(json.dumps(undo))
        summary: dict[str, dict[str, Any]] = {}
        total = 0
        for entry in record["containers"]:
            cid, name = entry["id"], entry["name"]
            if not entry.get("resume"):
                summary[name] = _hold_entry(ctx, record, entry, resumed=False)
                total += summary[name]["held"]
                continue
            t0 = time.monotonic()
            dockerapi.unpause(cid, name)
            try:
                summary[name] = _hold_entry(ctx, record, entry, resumed=True)
                total += summary[name]["held"]
            finally:
                dockerapi.pause(cid, name)
            ctx.note(f"{name} was paused: resumed for the hold, paused again after {time.monotonic() - t0:.2f} s")
        ctx.result["containers"] = summary
        if total:
            ctx.note(
                f"{total} message(s) stay held after `lockdown restore`: release them with "
                f"`lockdown restore {ctx.incident_id} --release-queue` or delete them with "
                f"`lockdown queue purge {ctx.incident_id}`"
            )

    @classmethod
    def undo(cls, ctx: StepContext, record: UndoRecord) -> None:
        """Release exactly the recorded ids that are still on hold (``postsuper -H``)."""
        for entry in record["containers"]:
            name = entry["name"]
            purged = entry.get("purged", [])
            if purged:
                ctx.note(
                    f"{name}: {len(purged)} message(s) were deleted by `lockdown queue purge` "
                    f"({entry.get('purged_at', '?')}): gone, not released"
                )
            ids = pending_ids(entry)
            if not ids:
                ctx.note(f"{name}: nothing to release")
                continue
            split = _where_now(entry, ids, ctx.note)
            if split is None:
                ctx.note(
                    f"{name} ({entry['id'][:12]}) no longer exists: its {len(ids)} held message(s) went with it "
                    "(their copies are in the evidence)"
                )
                continue
            cid, name, on_hold, elsewhere, gone = split
            if on_hold:
                postsuper(cid, name, "-H", on_hold)
            after = read_queue(cid, name)
            still = [q for q in on_hold if after.queue_of.get(q) == "hold"]
            if still:
                raise ActionError(f"{name}: {len(still)} message(s) are still on hold after postsuper -H: {still[:5]}")
            ctx.note(
                f"{name}: released {len(on_hold)} message(s) from hold (now {after.text('empty queue')})"
                + (f"; {len(elsewhere)} already released" if elsewhere else "")
                + (f"; {len(gone)} no longer in the queue" if gone else "")
            )

    @classmethod
    def decide(cls, ctx: StepContext, record: UndoRecord, decision: str) -> dict[str, Any]:
        """``purge-queue``: delete exactly the recorded ids still on hold (``postsuper -d ID ... hold``).

        Write-ahead like every change: the record is amended (``purged``) in the
        journal before postsuper runs, so a later ``restore --release-queue``
        knows they are gone and never tries to release them.
        """
        if decision != PURGE:
            return super().decide(ctx, record, decision)
        done = []
        for entry in record["containers"]:
            notes: list[str] = []
            item: dict[str, Any] = {"container": entry["name"], "deleted": [], "gone": [], "notes": notes}
            done.append(item)
            ids = pending_ids(entry)
            if not ids:
                notes.append("nothing left to purge")
                continue
            split = _where_now(entry, ids, notes.append)
            if split is None:
                notes.append("the container no longer exists: its held messages went with it")
                item["gone"] = ids
                continue
            cid, name, on_hold, released, item["gone"] = split
            if released:
                notes.append(
                    f"{len(released)} recorded message(s) are no longer on hold (released by hand?): not deleted"
                )
            # Ids no longer in the queue count as purged too: nothing is left to release.
            entry["purged"] = sorted(set(entry.get("purged", [])) | set(on_hold) | set(item["gone"]))
            entry["purged_at"] = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            ctx.amend_undo(record, reason="queue purge", container=name, deleting=on_hold)
            if on_hold:
                postsuper(cid, name, "-d", on_hold, queue="hold")
            after = read_queue(cid, name)
            left = [q for q in on_hold if q in after.queue_of]
            if left:
                raise ActionError(f"{name}: {len(left)} message(s) survived postsuper -d: {left[:5]}")
            item["deleted"] = on_hold
            item["container"] = name
        return {"containers": done}

    @classmethod
    def held_summary(cls, record: UndoRecord) -> str:
        incident = record.get("incident", "INCIDENT")
        parts = []
        total = 0
        for entry in record["containers"]:
            n = len(pending_ids(entry))
            total += n
            text = f"{n} message(s) held in {entry['name']}"
            if entry.get("purged"):
                text += f" ({len(entry['purged'])} purged)"
            parts.append(text)
        if not total:
            return (
                "; ".join(parts) + f": nothing left to release; `lockdown restore {incident} --release-queue` "
                "closes this step"
            )
        return (
            "; ".join(parts)
            + f". `lockdown restore {incident} --release-queue` puts exactly these back in the queue for delivery; "
            f"`lockdown queue purge {incident}` deletes them (copies are in evidence/queue/)"
        )


# ------------------------------------------------------------------ queue purge / show


@dataclass
class QueueStep:
    """One hold step of an incident, as the journal records it."""

    step: str
    state: str
    record: dict[str, Any]

    @property
    def open(self) -> bool:
        return self.state not in ("undone",)


def _hold_steps(root: Path, incident_id: str) -> tuple[Any, list[QueueStep]]:
    from lockdown.record.incident import read_incident

    view = read_incident(root, incident_id)
    steps = [
        QueueStep(s.id, s.state, s.undo)
        for s in view.steps
        if s.action == ACTION and s.has_intent and s.undo is not None
    ]
    if not steps:
        raise BadInput(
            f"incident {incident_id} held no mail queue (no {ACTION} step got as far as its intent)",
            f"see `lockdown status {incident_id}`",
        )
    return view, steps


def show_queue(root: Path, incident_id: str, *, live: bool = True) -> dict[str, Any]:
    """What an incident held: recorded ids per container, purged ids, and (``live``) where they are now."""
    view, steps = _hold_steps(root, incident_id)
    out: dict[str, Any] = {"incident_id": incident_id, "steps": []}
    for qs in steps:
        containers = []
        for entry in qs.record["containers"]:
            item: dict[str, Any] = {
                "container": entry["name"],
                "container_id": entry["id"],
                "held": entry.get("held", []),
                "already_held_before": entry.get("already_held", []),
                "purged": entry.get("purged", []),
                "purged_at": entry.get("purged_at"),
            }
            if live and qs.open:
                notes: list[str] = []
                try:
                    found = locate(entry, notes.append)
                    if found is None:
                        item["live"] = {"error": "the container no longer exists"}
                    else:
                        listing = read_queue(*found)
                        item["live"] = {
                            q: listing.queue_of.get(q, "gone") for q in entry.get("held", [])
                        }
                except (ActionError, BadInput) as exc:
                    item["live"] = {"error": exc.message}
                if notes:
                    item["notes"] = notes
            containers.append(item)
        out["steps"].append(
            {
                "step": qs.step,
                "state": qs.state,
                "decision_pending": qs.open,
                "summary": PostfixHoldQueue.held_summary(qs.record) if qs.open else "released by restore",
                "containers": containers,
            }
        )
    out["journal_intact"] = view.chain.intact
    return out
