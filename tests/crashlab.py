"""Kill the real CLI at its durable boundaries, from the test side.

Nothing in lockdown knows about this. :data:`WRAPPER` starts the CLI with
``python -c``, after replacing ``os.write`` (counted on the journal only),
``os.fsync`` (counted on directories only), ``os.replace``, ``os.rename`` and
``os.mkdir`` with versions that count their calls and SIGKILL the process
right *before* call number ``LKD_CRASH_AT``. Those calls are every durable
boundary of a run and of a restore: each journal write, each head update
(rename over ``journal.head``, then fsync the directory), each metadata file,
the creation and renaming of the incident directory, and so the points just
before and just after each apply and each undo (the directory fsync that ends
an ``intent`` line's head update, and the write of its ``applied`` line).
A file's own fsync is not a point of its own: killing before it leaves the
same files as killing before the next counted call. With ``LKD_CRASH_AT=0`` nothing is killed
and the number of boundaries is written to ``LKD_CRASH_COUNT``: a clean run
tells the test how many points there are.

SIGKILL keeps what already reached the page cache and loses the rest of the
process, so ``kill before call N`` gives exactly the on-disk state a crash
between call N-1 and call N would leave (power loss is another matter: that
is what the fsyncs are for, and this harness checks they are where they must be
only in the sense that every ordering point is exercised).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO

WRAPPER = r"""
import os, signal, stat, sys
_at = int(os.environ.pop("LKD_CRASH_AT", "0"))
_count_file = os.environ.pop("LKD_CRASH_COUNT", "")
_only_journal = os.environ.pop("LKD_CRASH_ONLY", "") == "journal-write"
_calls = 0

def _boundary(journal=False):
    global _calls
    if _only_journal and not journal:
        return
    _calls += 1
    if _calls == _at:
        os.kill(os.getpid(), signal.SIGKILL)

def _is_journal(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith("/journal.jsonl")
    except OSError:
        return False

_write, _fsync, _replace, _rename, _mkdir = os.write, os.fsync, os.replace, os.rename, os.mkdir

def write(fd, data):
    if _is_journal(fd):
        _boundary(journal=True)
    return _write(fd, data)

def fsync(fd):
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        _boundary()
    return _fsync(fd)

def replace(*args, **kwargs):
    _boundary()
    return _replace(*args, **kwargs)

def rename(*args, **kwargs):
    _boundary()
    return _rename(*args, **kwargs)

def mkdir(*args, **kwargs):
    _boundary()
    return _mkdir(*args, **kwargs)

os.write, os.fsync, os.replace, os.rename, os.mkdir = write, fsync, replace, rename, mkdir
from lockdown.cli import main
if os.environ.pop("LKD_READY", ""):
    sys.stderr.write("ready\n")
    sys.stderr.flush()
code = main(sys.argv[1:])
if _count_file:
    with open(_count_file, "w") as fh:
        fh.write(str(_calls))
sys.exit(code)
"""


def lockdown_killed_at(
    ns: str, state: Path, at: int, *args: str, count_file: Path | None = None, journal_writes_only: bool = False
) -> subprocess.CompletedProcess[str]:
    """The real CLI in ``ns``, SIGKILLed before its boundary number ``at`` (0: never).

    ``journal_writes_only`` counts only the journal writes: ``at=3`` is killed
    right before the third journal line is written.
    """
    env = dict(os.environ, LOCKDOWN_STATE_DIR=str(state), SSH_CONNECTION="", SSH_CLIENT="", LKD_CRASH_AT=str(at))
    if journal_writes_only:
        env["LKD_CRASH_ONLY"] = "journal-write"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if count_file is not None:
        env["LKD_CRASH_COUNT"] = str(count_file)
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", WRAPPER, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def boundaries(ns: str, state: Path, tmp: Path, *args: str) -> int:
    """Run the CLI to the end, counting its boundaries; fails unless it exits 0."""
    count_file = tmp / "boundaries"
    r = lockdown_killed_at(ns, state, 0, *args, count_file=count_file)
    assert r.returncode == 0, r.stdout + r.stderr
    n = int(count_file.read_text())
    count_file.unlink()
    return n


def status_last(ns: str, state: Path) -> dict[str, object]:
    """``lockdown status --json`` of the newest incident (the real CLI)."""
    env = dict(os.environ, LOCKDOWN_STATE_DIR=str(state))
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "lockdown", "status", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


CLI_THEN = r"""
import contextlib, io, json, sys
from lockdown.cli import main
results = []
for args in json.loads(sys.argv[1]):
    if args[0] == "@cat":  # the test reading real state (/proc), not lockdown
        text = " ".join(open(path).read().strip() for path in args[1:])
        results.append({"code": 0, "stdout": text, "stderr": ""})
        continue
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def cli_then(ns: str, state: Path, *commands: list[str]) -> list[dict[str, Any]]:
    """Several CLI commands, one after the other, in one fresh process in ``ns`` (``main()``
    is the CLI's entry point): one interpreter start instead of one per command.
    ``["@cat", path, ...]`` reads files (real state from /proc) at that point."""
    env = dict(os.environ, LOCKDOWN_STATE_DIR=str(state), SSH_CONNECTION="", SSH_CLIENT="")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", CLI_THEN, json.dumps(list(commands))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    results: list[dict[str, Any]] = json.loads(r.stdout)
    return results


def start_ready(ns: str, state: Path, *args: str) -> subprocess.Popen[str]:
    """The real CLI in ``ns``, started; returns once it has imported everything and is
    about to run the command (so a kill soon after lands in the command's work)."""
    env = dict(os.environ, LOCKDOWN_STATE_DIR=str(state), SSH_CONNECTION="", SSH_CLIENT="", LKD_READY="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", WRAPPER, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line == "ready\n", line
    return proc


ZYGOTE = r"""
import json, os, sys
from lockdown.actions import REGISTRY, get_action
from lockdown.cli import main
for name in REGISTRY:
    get_action(name)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "cat":  # the test reading real state (/proc), not lockdown
        text = " ".join(open(path).read().strip() for path in req["paths"])
        print(json.dumps({"text": text}), flush=True)
        continue
    if req["op"] == "reap":
        _, status = os.waitpid(req["pid"], 0)
        with open(req["log"], errors="replace") as fh:
            log = fh.read()
        print(json.dumps({"code": os.waitstatus_to_exitcode(status), "log": log}), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 70
        try:
            code = main(req["args"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
"""


class Zygote:
    """A process in ``ns`` that has imported the CLI once and forks one child per command.

    Each child runs ``main(args)`` (the CLI's entry point) in a process of its
    own that the test can SIGKILL like any other: it is the CLI as a fresh
    process would run it, without paying the interpreter start and imports a
    hundred times in a stress test.
    """

    def __init__(self, ns: str, state: Path, tmp: Path) -> None:
        env = dict(os.environ, LOCKDOWN_STATE_DIR=str(state), SSH_CONNECTION="", SSH_CLIENT="")
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log = tmp / "child.log"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )  # fmt: skip
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the zygote died (exit {self.proc.poll()})"
        doc: dict[str, Any] = json.loads(line)
        return doc

    def _ask(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, *args: str) -> int:
        """Fork a child running ``lockdown ARGS``; its pid."""
        pid: int = self._ask(op="start", args=list(args), log=str(self.log))["pid"]
        return pid

    def reap(self, pid: int) -> tuple[int, str]:
        """Wait for the child: (exit code, negative for a signal; its output)."""
        doc = self._ask(op="reap", pid=pid, log=str(self.log))
        return doc["code"], doc["log"]

    def run(self, *args: str) -> tuple[int, str]:
        return self.reap(self.start(*args))

    def cat(self, *paths: str) -> str:
        text: str = self._ask(op="cat", paths=list(paths))["text"]
        return text

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
