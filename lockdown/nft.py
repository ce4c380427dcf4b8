"""nftables through ``nft -j``: the one place that runs nft (as dockerapi.py is for Docker).

Why the JSON interface: commands go in as one JSON document on stdin, so no
value is ever spliced into nft's command language, and a batch is one
kernel transaction (all of it or nothing). Listings come back as JSON and
are parsed with ``jsonsafe`` (bounded nesting).

Scope: callers name one table. Nothing here lists, changes or flushes
another table, with one exception that only copies bytes: ``dump_ruleset``
streams ``nft -j list ruleset`` into a file as evidence, never parsed.

Errors: a missing ``nft`` binary is Unavailable (exit 5) naming the Debian
package; no CAP_NET_ADMIN is PrivilegeError (exit 4); anything else nft
refuses is ActionError (exit 1) with nft's own message, escaped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from lockdown import jsonsafe
from lockdown.errors import ActionError, PrivilegeError, Unavailable

#: The Debian package that ships /usr/sbin/nft.
PACKAGE = "nftables"
#: Longest stderr kept in a message; nft's errors are one or two lines.
_MAX_ERROR = 400
#: Largest listing of one table parsed (lockdown's own tables are a few KiB).
_MAX_TABLE = 4 << 20
_TIMEOUT = 30

Command = dict[str, Any]


def binary() -> str:
    """Path of ``nft`` on PATH. Raises Unavailable (exit 5) naming the package when it is missing."""
    path = shutil.which("nft")
    if path is None:
        raise Unavailable(
            "nft (nftables) is not installed: nft.block needs it",
            f"install Debian's {PACKAGE} package: apt-get install {PACKAGE}",
        )
    return path


def _escape(text: str) -> str:
    """nft's stderr, one line, control characters shown escaped, bounded."""
    flat = " ".join(text.split())
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return shown[:_MAX_ERROR] + ("..." if len(shown) > _MAX_ERROR else "")


def _run(args: list[str], doing: str, stdin: bytes | None = None) -> bytes:
    try:
        proc = subprocess.run(
            [binary(), *args], input=stdin, capture_output=True, timeout=_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise ActionError(f"cannot {doing}: nft did not answer within {_TIMEOUT} s") from None
    except OSError as exc:
        raise Unavailable(f"cannot {doing}: running nft failed: {exc.strerror}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace")
        if "Operation not permitted" in err:
            raise PrivilegeError(f"cannot {doing}: nft needs CAP_NET_ADMIN", "run it as root")
        raise _NftFailed(f"cannot {doing}: nft: {_escape(err) or f'exit {proc.returncode}'}", err)
    return proc.stdout


class _NftFailed(ActionError):
    """nft refused; ``stderr`` is kept to recognise "no such table"."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def run_batch(commands: list[Command], doing: str) -> None:
    """Run ``commands`` (nft JSON command objects) as one transaction: all or nothing."""
    document = json.dumps({"nftables": commands}).encode()
    _run(["-j", "-f", "-"], doing, stdin=document)


def list_table(family: str, name: str) -> list[dict[str, Any]] | None:
    """The items (table, chains, rules with counters) of one table, or None when it does not exist."""
    try:
        out = _run(["-j", "list", "table", family, name], f"list table {family} {name}")
    except _NftFailed as exc:
        if "No such file or directory" in exc.stderr:
            return None
        raise
    if len(out) > _MAX_TABLE:
        raise ActionError(f"table {family} {name} lists {len(out)} bytes: not a table lockdown wrote")
    try:
        doc = jsonsafe.loads(out, what=f"nft -j list table {family} {name}")
    except jsonsafe.JSONError as exc:
        raise ActionError(f"cannot read table {family} {name}: {exc}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ActionError(f"cannot read table {family} {name}: nft answered without an nftables list")
    return [i for i in items if isinstance(i, dict) and "metainfo" not in i]


def dump_ruleset(write: Callable[[bytes], object]) -> int:
    """Stream ``nft -j list ruleset`` into ``write`` (evidence), in chunks; returns the size.

    Copied, never parsed: other tables are recorded as they are, not read into.
    """
    path = binary()
    size = 0
    with subprocess.Popen([path, "-j", "list", "ruleset"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        while chunk := proc.stdout.read(1 << 16):
            write(chunk)
            size += len(chunk)
        err = proc.stderr.read(_MAX_ERROR * 4).decode("utf-8", "replace")
    if proc.returncode != 0:
        if "Operation not permitted" in err:
            raise PrivilegeError("cannot list the nftables ruleset: nft needs CAP_NET_ADMIN", "run it as root")
        raise ActionError(f"cannot list the nftables ruleset: nft: {_escape(err)}")
    return size


# ------------------------------------------------------------ JSON pieces


def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    """A ``match`` expression: ``left op right``."""
    return {"match": {"op": op, "left": left, "right": right}}


def payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def prefix(network: str) -> dict[str, Any]:
    """``172.18.0.0/16`` as nft's prefix object."""
    addr, _, length = network.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


def rule_counters(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chain, handle, comment, packets and bytes of every rule with a counter in a table listing."""
    out = []
    for item in items:
        rule = item.get("rule")
        if not isinstance(rule, dict):
            continue
        for expr in rule.get("expr") or []:
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                out.append(
                    {
                        "chain": rule.get("chain"),
                        "handle": rule.get("handle"),
                        "comment": rule.get("comment", ""),
                        "packets": counter.get("packets", 0),
                        "bytes": counter.get("bytes", 0),
                    }
                )
    return out


def chain_names(items: list[dict[str, Any]]) -> list[str]:
    """Names of the chains in a table listing."""
    return [str(i["chain"].get("name")) for i in items if isinstance(i.get("chain"), dict)]
