"""The compiled report reader (scripts/build-native, mypyc) against the same code uncompiled.

One source, two builds: these tests prove that the build in use is the compiled one wherever it
can be built (always in CI), that both give byte-identical reports, and that the parser's own
tests pass uncompiled too (in process, the suite runs whichever build is installed).
"""

from __future__ import annotations

import gzip
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from lockdown import mail
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
PURE = {"LOCKDOWN_MAIL_READER": "pure"}


def _why_not_built() -> str | None:
    """scripts/build-native's own answer: why it cannot build here, or None."""
    script = runpy.run_path(str(REPO / "scripts" / "build-native"), run_name="build_native")
    why: str | None = script["missing"]()
    return why


def _reader(env: dict[str, str], cwd: Path = REPO) -> str:
    """``mail.reader()`` in a new interpreter that finds ``lockdown`` in ``cwd`` first."""
    code = "from lockdown import mail; print(mail.reader())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, cwd=cwd, check=True
    )
    return out.stdout.strip()


def _compiled_or_skip() -> None:
    """The compiled build must be in use; in CI (or wherever it could be built) its absence fails."""
    if mail.reader() == "compiled":
        return
    why = _why_not_built()
    if why is None or os.environ.get("CI") == "true":
        pytest.fail(f"the report's reader is not compiled: {why or 'scripts/build-native was not run, or failed'}")
    pytest.skip(f"no compiled reader here: {why}")


def test_the_compiled_reader_is_in_use_and_the_override_runs_the_source() -> None:
    _compiled_or_skip()
    assert mail.native_is_fresh()
    assert _reader({}) == "compiled"
    assert _reader(PURE) == "pure-python"


def test_an_edited_source_is_never_shadowed_by_an_old_build(tmp_path: Path) -> None:
    _compiled_or_skip()
    # A copy of the package whose parser.py differs by one comment: its SOURCES no longer match.
    copy = tmp_path / "lockdown"
    subprocess.run(["cp", "-a", str(REPO / "lockdown"), str(copy)], check=True)
    with open(copy / "mail" / "parser.py", "a") as fh:
        fh.write("\n# edited after the build\n")
    assert _reader({}, cwd=tmp_path) == "pure-python"
    (copy / "mail" / "parser.py").write_bytes((REPO / "lockdown" / "mail" / "parser.py").read_bytes())
    assert _reader({}, cwd=tmp_path) == "compiled"  # the same copy, its source as built: compiled


def _logs(tmp_path: Path) -> list[Path]:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import bench_report
    finally:
        sys.path.remove(str(REPO / "bench"))
    generated = tmp_path / "generated.log"
    bench_report.generate(generated, 30_000, seed=3)
    odd = tmp_path / "odd.log.gz"
    with gzip.open(odd, "wt") as fh:
        fh.write(
            "Mar 7 02:09:33 mail postfix/smtpd[7]: 1D8CC1CA0A7F: client=unknown[172.17.0.1]\n"
            "Mar 7 02:09:34 mail postfix/smtpd[7]: 1D8CC1CA0A7F: milter-reject: END-OF-MESSAGE from "
            "unknown[172.17.0.1]: 5.7.1 Spam; from=<a@b.example> to=<c@qq.com> proto=ESMTP helo=<x>\n"
            "Mar 7 02:09:35 mail postfix/smtpd[7]: NOQUEUE: milter-reject: RCPT from unknown[172.17.0.1]: "
            "550 5.7.1 no; from=<a@b.example> to=<d@qq.com> proto=ESMTP helo=<x>\n"
            "2026-03-07T02:09:36.123456789Z Mar  7 02:09:36 mail postfix/qmgr[9]: 4F00000001: "
            "from=<bot@spam.example>, size=10, nrcpt=1 (queue active)\n"
            "2026-03-07T02:09:37.000000001Z mail postfix/smtp[10]: 4F00000001: to=<x@163.com>, "
            "relay=mx[203.0.113.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)\n"
            "Mar  7 02:09:38 mail postfix/local[11]: 4F00000002: to=<me@here.example>, relay=local, "
            "delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=deliverable (delivers to mailbox)\n"
            "this is not a postfix line \x1b[31m\n"
            "\n"
            "Mar  7 02:09:39 mail postfix/postscreen[5]: PASS NEW [172.17.0.1]:4000\n"
            "Mar  7 02:09:40 mail postfix/postscreen[5]: CONNECT from [2001:db8::7]:4001 to [172.17.0.2]:25\n"
        )
    return [generated, odd]


def test_compiled_and_pure_give_byte_identical_reports(tmp_path: Path) -> None:
    _compiled_or_skip()
    for log in _logs(tmp_path):
        for fmt in ("--json", "--html"):
            args = ("report", "--log", str(log), "--year", "2026", fmt)
            if fmt == "--html":  # the text on stdout, and the HTML beside it
                args = (*args, str(tmp_path / "r.html"))
            compiled, pure = run_cli(*args), run_cli(*args, env=PURE)
            assert compiled.returncode == pure.returncode == 0, compiled.stderr + pure.stderr
            assert compiled.stdout == pure.stdout, (log.name, fmt)
            assert compiled.stderr == pure.stderr, (log.name, fmt)
            assert compiled.stdout.strip()


def test_the_parser_tests_pass_uncompiled() -> None:
    _compiled_or_skip()  # uncompiled, this suite already ran them in process
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_mail_parser.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **PURE},
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout
