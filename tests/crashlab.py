"""Kill the real CLI at its durable boundaries, from the test side.

Nothing in lockdown knows about this. :data:`PATCH` replaces ``os.write``
(counted on the journal only), ``os.fsync`` (counted on directories only),
``os.replace``, ``os.rename`` and ``os.mkdir`` with versions that count their
calls and SIGKILL the process right *before* call number ``LKD_CRASH_AT``.
Those calls are every durable boundary of a run and of a restore: each
journal write, each head update (rename over ``journal.head``, then fsync the
directory), each metadata file, the creation and renaming of the incident
directory, and so the points just before and just after each apply and each
undo (the directory fsync that ends an ``intent`` line's head update, and the
write of its ``applied`` line). A file's own fsync is not a point of its own:
killing before it leaves the same files as killing before the next counted
call. With ``LKD_CRASH_AT=0`` nothing is killed and the number of boundaries
is written to ``LKD_CRASH_COUNT``: a clean run tells the test how many points
there are.

:data:`WRAPPER` runs one CLI command that way in a fresh interpreter
(``python -c``); :class:`Zygote` imports the CLI once and forks a child per
command, patched after the fork, which makes a hundred kills affordable.

SIGKILL keeps what already reached the page cache and loses the rest of the
process, so "kill before call N" leaves exactly the files a crash between
call N-1 and call N would leave. (Power loss is what the fsyncs are for; this
harness exercises every ordering point, not the disk cache.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO

#: Defines ``_install()``: patch ``os`` as described above, from ``LKD_CRASH_*`` variables.
PATCH = r"""
import os, signal, stat, sys
_calls = 0
_at = 0
_only_journal = False

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

def _install():
    global _at, _only_journal
    _at = int(os.environ.pop("LKD_CRASH_AT", "0"))
    _only_journal = os.environ.pop("LKD_CRASH_ONLY", "") == "journal-write"
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

def _write_count():
    path = os.environ.pop("LKD_CRASH_COUNT", "")
    if path:
        with open(path, "w") as fh:
            fh.write(str(_calls))
"""

WRAPPER = PATCH + r"""
_install()
from lockdown.cli import main
code = main(sys.argv[1:])
_write_count()
sys.exit(code)
"""


def _env(state: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, LOCKDOWN_STATE_DIR=str(state), SSH_CONNECTION="", SSH_CLIENT="", **extra)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def lockdown_killed_at(
    ns: str, state: Path, at: int, *args: str, journal_writes_only: bool = False
) -> subprocess.CompletedProcess[str]:
    """The real CLI in ``ns`` (a fresh interpreter), SIGKILLed before its boundary number ``at``.

    ``journal_writes_only`` counts only the journal writes: ``at=3`` is killed
    right before the third journal line is written.
    """
    env = _env(state, LKD_CRASH_AT=str(at))
    if journal_writes_only:
        env["LKD_CRASH_ONLY"] = "journal-write"
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", WRAPPER, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


ZYGOTE = PATCH + r"""
import json
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
        logs = []
        for path in (req["log"] + ".out", req["log"] + ".err"):
            with open(path, errors="replace") as fh:
                logs.append(fh.read())
        print(json.dumps({"code": os.waitstatus_to_exitcode(status), "out": logs[0], "err": logs[1]}), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            for fd, suffix in ((1, ".out"), (2, ".err")):
                os.dup2(os.open(req["log"] + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            os.environ.update(req["env"])
            _install()
            code = main(req["args"])
            _write_count()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
"""


class Zygote:
    """A process in ``ns`` that has imported the CLI once and forks one child per command.

    Each child runs ``main(args)`` (the CLI's entry point) in a process of its
    own that the test can SIGKILL like any other, or that kills itself at a
    boundary (``crash_at``): the CLI as a fresh process would run it, without
    paying the interpreter start and the imports a hundred times.
    """

    def __init__(self, ns: str, state: Path, tmp: Path) -> None:
        self.log = tmp / "child"
        self.count_file = tmp / "boundaries"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(state), cwd=REPO,
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

    def start(self, *args: str, crash_at: int = 0, count: bool = False) -> int:
        """Fork a child running ``lockdown ARGS``, killed before boundary ``crash_at`` (0: never),
        writing its number of boundaries for :meth:`boundaries` when ``count``; its pid."""
        env = {"LKD_CRASH_AT": str(crash_at)}
        if count:
            env["LKD_CRASH_COUNT"] = str(self.count_file)
        pid: int = self._ask(op="start", args=list(args), log=str(self.log), env=env)["pid"]
        return pid

    def reap(self, pid: int) -> tuple[int, str, str]:
        """Wait for the child: (exit code, negative for a signal; its stdout; its stderr)."""
        doc = self._ask(op="reap", pid=pid, log=str(self.log))
        return doc["code"], doc["out"], doc["err"]

    def run(self, *args: str, crash_at: int = 0) -> tuple[int, str, str]:
        return self.reap(self.start(*args, crash_at=crash_at))

    def boundaries(self, *args: str) -> int:
        """Run ``lockdown ARGS`` to the end, counting its boundaries; fails unless it exits 0."""
        code, out, err = self.reap(self.start(*args, count=True))
        assert code == 0, out + err
        return int(self.count_file.read_text())

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
