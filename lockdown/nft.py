"""nftables through its JSON interface: the one place that runs nft (as dockerapi.py is for Docker).

Commands go to libnftables in this process when the library loads (the
library ``nft -j`` is built on, from the same Debian package), else to
``nft -j -f -``; listings of the whole ruleset, copied as evidence, are
streamed from ``nft -j list ruleset``.

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

import contextvars
import ctypes
import errno
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lockdown import jsonsafe
from lockdown.errors import ActionError, PrivilegeError, Unavailable

#: The Debian package that ships /usr/sbin/nft (and, through libnftables1, the library below).
PACKAGE = "nftables"
#: The library ``nft`` is built on; used in process when present (see ``_run``).
LIBRARY = "libnftables.so.1"
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


def _run(document: bytes, doing: str) -> bytes:
    """Run one JSON document of nft commands (``nft -j -f -``); its JSON output.

    Through libnftables in this process when it loads (the library ``nft``
    itself is a thin command line over, from the same Debian package): ~1 ms,
    against ~8 ms idle and 10-20 ms under a flood for starting ``nft``, and
    the block is the cut. Else ``nft -j -f -``. The same JSON either way.
    """
    lib = _library()
    if lib is not None:
        try:
            code, out, err = lib.run(document)
        except OSError as exc:
            out_of_fds = exc.errno in (errno.EMFILE, errno.ENFILE)
            raise ActionError(
                f"cannot {doing}: cannot open a netfilter netlink socket ({exc.strerror}); nothing was changed",
                "the process is out of file descriptors: raise its limit (ulimit -n; LimitNOFILE= for serve's"
                " unit) and run the same command again"
                if out_of_fds
                else "check that the kernel has nf_tables (modprobe nf_tables) and run the same command again",
            ) from None
    else:
        code, out, err = _exec(document, doing)
    if code != 0:
        if "Operation not permitted" in err:
            raise PrivilegeError(f"cannot {doing}: nft needs CAP_NET_ADMIN", "run it as root")
        raise _NftFailed(f"cannot {doing}: nft: {_escape(err) or f'exit {code}'}", err)
    return out


def _exec(document: bytes, doing: str) -> tuple[int, bytes, str]:
    try:
        proc = subprocess.run(
            [binary(), "-j", "-f", "-"], input=document, capture_output=True, timeout=_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise ActionError(f"cannot {doing}: nft did not answer within {_TIMEOUT} s") from None
    except OSError as exc:
        raise Unavailable(f"cannot {doing}: running nft failed: {exc.strerror}") from None
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


#: The netlink protocol of nf_tables (linux/netlink.h), the socket libnftables opens.
_NETLINK_NETFILTER = 12


class _Libnftables:
    """libnftables.so.1 through ctypes: a context per call, in the calling thread's netns.

    Calls are serialised: libnftables keeps some state global to the process.
    """

    NFT_CTX_OUTPUT_JSON = 1 << 4

    def __init__(self, lib: Any) -> None:
        c_void_p, c_char_p = ctypes.c_void_p, ctypes.c_char_p
        for name, restype, argtypes in (
            ("nft_ctx_new", c_void_p, [ctypes.c_uint32]),
            ("nft_ctx_free", None, [c_void_p]),
            ("nft_ctx_output_set_flags", None, [c_void_p, ctypes.c_uint]),
            ("nft_ctx_buffer_output", ctypes.c_int, [c_void_p]),
            ("nft_ctx_buffer_error", ctypes.c_int, [c_void_p]),
            ("nft_ctx_get_output_buffer", c_char_p, [c_void_p]),
            ("nft_ctx_get_error_buffer", c_char_p, [c_void_p]),
            ("nft_run_cmd_from_buffer", ctypes.c_int, [c_void_p, c_char_p]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.lib = lib
        self.lock = threading.Lock()

    def run(self, document: bytes) -> tuple[int, bytes, str]:
        """``nft_run_cmd_from_buffer`` in a new context; OSError when no netfilter socket can open.

        libnftables opens its netlink socket itself, and when that fails (no free file
        descriptor, no nf_tables in the kernel) it prints and calls ``exit()``: from ``serve``,
        that would end the server. So a socket of the same kind is opened first, here, and
        closed just before the call, which leaves the library the descriptor it needs.
        """
        lib = self.lib
        with self.lock:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER).close()
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise ActionError("cannot use libnftables: nft_ctx_new failed")
            try:
                lib.nft_ctx_output_set_flags(ctx, self.NFT_CTX_OUTPUT_JSON)
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                code = lib.nft_run_cmd_from_buffer(ctx, document)
                out = lib.nft_ctx_get_output_buffer(ctx) or b""
                err = lib.nft_ctx_get_error_buffer(ctx) or b""
            finally:
                lib.nft_ctx_free(ctx)
        return (0 if code == 0 else 1), out, err.decode("utf-8", "replace")


_LIB: list[_Libnftables | None] = []


def load_library() -> bool:
    """Load libnftables now (``nft.block``'s preflight, so serve's warm-up does); True if it loaded."""
    return _library() is not None


def _library() -> _Libnftables | None:
    """libnftables, loaded once; None where it is not installed (then ``nft`` is run)."""
    if not _LIB:
        try:
            _LIB.append(_Libnftables(ctypes.CDLL(LIBRARY)))
        except (OSError, AttributeError):  # not installed, or a libnftables without these symbols
            _LIB.append(None)
    return _LIB[0]


class _NftFailed(ActionError):
    """nft refused; ``stderr`` is kept to recognise "no such table"."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def run_batch(commands: list[Command], doing: str) -> None:
    """Run ``commands`` (nft JSON command objects) as one transaction: all or nothing."""
    _run(json.dumps({"nftables": commands}).encode(), doing)


def list_table(family: str, name: str) -> list[dict[str, Any]] | None:
    """The items (table, chains, rules with counters) of one table, or None when it does not exist."""
    try:
        listing = {"nftables": [{"list": {"table": {"family": family, "name": name}}}]}
        out = _run(json.dumps(listing).encode(), f"list table {family} {name}")
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


class RulesetRead:
    """``nft -j list ruleset`` started now, its bytes collected later by ``chunks()``.

    ``nft.block`` records the ruleset as it was before the run changed
    anything. Started in the preflight, the listing runs in its own process
    while the run's other checks and the incident's creation go on (~7 ms
    idle, 20-35 ms under a bot flood on 2 cores, no longer between the alert
    and the cut); ``chunks()`` waits for nft to exit, so the listing is
    complete before the step changes the ruleset.
    """

    def __init__(self) -> None:
        path = binary()
        try:
            self._proc = subprocess.Popen(
                [path, "-j", "list", "ruleset"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise Unavailable(f"cannot list the nftables ruleset: running nft failed: {exc.strerror}") from None
        self._chunks: list[bytes] | None = None
        self._error: ActionError | None = None

    def close(self) -> None:
        """Stop a listing nobody collected (the run was refused after its preflight), and reap it."""
        if self._proc.returncode is None:
            self._proc.kill()
        with self._proc:  # closes the pipes, waits
            pass

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - at interpreter exit the process may be gone already
                pass

    def chunks(self) -> list[bytes]:
        """The listing, as read; raises PrivilegeError/ActionError as ``dump_ruleset`` does (every call)."""
        if self._chunks is None and self._error is None:
            out: list[bytes] = []
            try:
                _drain(self._proc, out.append)
            except ActionError as exc:
                self._error = exc
            else:
                self._chunks = out
        if self._error is not None:
            raise self._error
        assert self._chunks is not None
        return self._chunks


_looks: contextvars.ContextVar[dict[str, RulesetRead] | None] = contextvars.ContextVar("nft_looks", default=None)


@contextmanager
def one_look() -> Iterator[None]:
    """Inside the block, ``ruleset_read()`` starts one listing and every caller shares it.

    A run's preflight is one moment, before anything changes: the two
    ``nft.block`` steps of ``relay-incident-surgical`` record the same
    "before" ruleset, and one nft process lists it for both.
    """
    token = _looks.set({})
    try:
        yield
    finally:
        _looks.reset(token)


def ruleset_read() -> RulesetRead:
    """A ``RulesetRead`` started now, or the one started earlier in the same ``one_look()``."""
    memo = _looks.get()
    if memo is None:
        return RulesetRead()
    if "ruleset" not in memo:
        memo["ruleset"] = RulesetRead()
    return memo["ruleset"]


def dump_ruleset(write: Callable[[bytes], object]) -> int:
    """Stream ``nft -j list ruleset`` into ``write`` (evidence), in chunks; returns the size.

    Copied, never parsed: other tables are recorded as they are, not read into.
    """
    proc = subprocess.Popen([binary(), "-j", "list", "ruleset"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return _drain(proc, write)


def _drain(proc: subprocess.Popen[bytes], write: Callable[[bytes], object]) -> int:
    """Copy a listing's stdout into ``write`` until nft exits; its failure becomes a lockdown error."""
    size = 0
    with proc:
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
