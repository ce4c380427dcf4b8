#!/usr/bin/env python3
"""Benchmark: ``lockdown report --log FILE --json`` against ``pflogsumm`` on the same generated log.

    python3 bench/bench_report.py [--lines 1000000 | --quick] [--rounds 3] [--big 5000000] [--keep FILE]

Generates a realistic Postfix 3.7 log (postscreen and smtpd connects, client=,
cleanup, qmgr, smtp sent/deferred to qq.com and others, lmtp local delivery,
SASL submission, 454/554 rejects, anvil statistics), then runs both tools on
it in the same run and prints, side by side, their wall times, CPU times (user +
system) and peak RSS (from wait4). Goals: lockdown at least 2x faster in wall time and
2x less CPU time (ratios of the medians of --rounds rounds, alternating which tool goes
first), peak RSS <= 100 MiB. Then lockdown alone reads a --big log (default 5,000,000
lines, 0 to skip): its peak RSS stays <= 100 MiB too, and is printed next to the first log's
(memory follows the messages still open and the report's own tables, such as by_client, not
the lines read).

lockdown is timed with its bytecode cached, as an installed copy runs (see installed_env), and
with the log reader the set-up built (compiled by scripts/build-native; the first line says which;
LOCKDOWN_MAIL_READER=pure times the source). docs/audit.md ("Performance") has the figures
measured and where the time goes. Last run (2026-12-01, 2-vCPU VM, load average 0.6-1.1):

    lockdown's log reader: compiled
    lockdown report :   5.57 s wall    5.56 s CPU  peak RSS   36 MiB   (median of 5)
    pflogsumm       :  13.00 s wall   12.97 s CPU  peak RSS   60 MiB
    wall 2.33x, CPU 2.33x (goals 2x: met); 5M lines: peak RSS 43 MiB, 29.9 s CPU
    (pure Python, LOCKDOWN_MAIL_READER=pure, medians of 3 in the next run: 9.05 s CPU, 1.51x)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

OUTSIDE = ["qq.com", "qq.com", "qq.com", "163.com", "gmail.com", "yahoo.co.jp", "outlook.com"]
LOCAL = "example.org"


def generate(path: Path, target: int, seed: int = 8) -> dict[str, int]:
    """Write about ``target`` lines; return what the log contains, as counted while writing."""
    rnd = random.Random(seed)
    t = datetime(2026, 11, 20, 0, 0, 0, tzinfo=UTC)
    n = 0
    qn = 0x100000
    pid = 1000
    truth = {"messages": 0, "outside_messages": 0, "signature_messages": 0, "rejects": 0}
    buf: list[str] = []

    def emit(text: str) -> None:
        nonlocal n
        buf.append(f"{t.strftime('%b %d %H:%M:%S')} mail {text}\n")
        n += 1

    with open(path, "w") as fh:
        while n < target:
            t += timedelta(milliseconds=rnd.randint(5, 400))
            pid = 1000 + (pid + 1) % 30000
            kind = rnd.random()
            gw = rnd.random() < 0.4
            addr = "172.17.0.1" if gw else f"198.51.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
            host = "unknown" if gw else f"mx{rnd.randint(1, 99)}.sender{rnd.randint(1, 500)}.example"
            if kind < 0.15:  # a reject
                code, dsn = rnd.choice([("554", "5.7.1"), ("454", "4.7.1")])
                rcpt = f"{rnd.randint(10000, 9999999)}@{rnd.choice(OUTSIDE)}"
                emit(f"postfix/smtpd[{pid}]: connect from {host}[{addr}]")
                emit(
                    f"postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from {host}[{addr}]: {code} {dsn} <{rcpt}>: "
                    f"Relay access denied; from=<spam{rnd.randint(1, 999)}@spam.example> to=<{rcpt}> "
                    f"proto=ESMTP helo=<WIN-{rnd.randint(1000, 9999)}>"
                )
                emit(f"postfix/smtpd[{pid}]: disconnect from {host}[{addr}] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4")
                truth["rejects"] += 1
                continue
            if kind < 0.2:
                emit(
                    f"postfix/anvil[90]: statistics: max connection rate 3/60s for (smtp:{addr}) "
                    f"at {t:%b %d %H:%M:%S}"
                )
                continue
            qn += rnd.randint(1, 50)
            qid = f"{qn:X}"
            sasl = rnd.random() < 0.2
            service = "postfix/submission/smtpd" if sasl else "postfix/smtpd"
            outside = sasl or (gw and rnd.random() < 0.9)
            emit(f"postfix/postscreen[77]: CONNECT from [{addr}]:{rnd.randint(1024, 65535)} to [172.17.0.2]:25")
            emit(f"postfix/postscreen[77]: PASS OLD [{addr}]:{rnd.randint(1024, 65535)}")
            emit(f"{service}[{pid}]: connect from {host}[{addr}]")
            client = f"client={host}[{addr}]"
            if sasl:
                client += f", sasl_method=PLAIN, sasl_username=user{rnd.randint(1, 40)}@{LOCAL}"
            emit(f"{service}[{pid}]: {qid}: {client}")
            emit(f"postfix/cleanup[{pid + 1}]: {qid}: message-id=<{qid}.{rnd.randint(1, 10**9)}@{host}>")
            nr = rnd.randint(1, 3)
            sender = f"{'user' if sasl else 'x'}{rnd.randint(1, 99)}@{LOCAL if sasl else 'spam.example'}"
            emit(f"postfix/qmgr[60]: {qid}: from=<{sender}>, size={rnd.randint(800, 90000)}, nrcpt={nr} (queue active)")
            emit(f"{service}[{pid}]: disconnect from {host}[{addr}] ehlo=1 mail=1 rcpt={nr} data=1 quit=1 commands=5")
            for _ in range(nr):
                if outside:
                    dom = rnd.choice(OUTSIDE)
                    rcpt = f"{rnd.randint(10000, 9999999)}@{dom}"
                    if rnd.random() < 0.6:
                        emit(
                            f"postfix/smtp[{pid + 2}]: {qid}: to=<{rcpt}>, "
                            f"relay=mx3.{dom}[203.0.113.{rnd.randint(1, 254)}]:25, "
                            f"delay=2.1, delays=0.05/0.01/1.2/0.84, dsn=4.7.0, status=deferred (host mx3.{dom}"
                            "[203.0.113.7] said: 451 4.7.0 Temporary rejected (in reply to RCPT TO command))"
                        )
                    else:
                        emit(
                            f"postfix/smtp[{pid + 2}]: {qid}: to=<{rcpt}>, "
                            f"relay=mx3.{dom}[203.0.113.{rnd.randint(1, 254)}]:25, "
                            "delay=1.4, delays=0.05/0.01/0.5/0.84, dsn=2.0.0, status=sent (250 OK)"
                        )
                else:
                    emit(
                        f"postfix/lmtp[{pid + 3}]: {qid}: to=<u{rnd.randint(1, 50)}@{LOCAL}>, "
                        "relay=dovecot[private/dovecot-lmtp], delay=0.3, delays=0.1/0/0/0.2, dsn=2.0.0, "
                        "status=sent (250 2.0.0 <x> Saved)"
                    )
            emit(f"postfix/qmgr[60]: {qid}: removed")
            truth["messages"] += 1
            truth["outside_messages"] += int(outside)
            truth["signature_messages"] += int(outside and gw and not sasl)
            if len(buf) > 5000:
                fh.write("".join(buf))
                buf.clear()
        fh.write("".join(buf))
    truth["lines"] = n
    return truth


def install_pflogsumm() -> str | None:
    """The Debian package, when we are root on a Debian-like system; None otherwise."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "pflogsumm"]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(cmd, env=env, capture_output=True, check=False)
    return shutil.which("pflogsumm")


def installed_env(tmp: Path, log: Path) -> dict[str, str]:
    """The environment to time lockdown in: with its bytecode cached, as an installed copy runs.

    A test harness may set PYTHONDONTWRITEBYTECODE, and then every lockdown module whose
    source is newer than its .pyc is compiled again on each start (~0.1 s). A private cache
    (PYTHONPYCACHEPREFIX, nothing written into the source tree) is filled by one untimed run
    on the first lines of the log.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    warm = tmp / "warm.log"
    with open(log, "rb") as src, open(warm, "wb") as dst:
        dst.writelines(line for _, line in zip(range(2000), src, strict=False))
    run([sys.executable, "-m", "lockdown", "report", "--log", str(warm), "--json", "--year", "2026"], env)
    return env


def reader(env: dict[str, str]) -> str:
    """``compiled`` or ``pure-python``: the build of lockdown's reader that the timed runs use."""
    code = "from lockdown import mail; print(mail.reader())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, bytes]:
    """Wall seconds, CPU seconds, peak RSS in MiB (benchlib's launcher) and stdout of one command."""
    with tempfile.TemporaryFile() as out:
        elapsed, rss, code, cpu = benchlib.measure_cpu(cmd, env=env, stdout=out)
        out.seek(0)
        data = out.read()
    if code != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {code}")
    return elapsed, cpu, rss >> 20, data


def lockdown_cmd(log: Path) -> list[str]:
    return [sys.executable, "-m", "lockdown", "report", "--log", str(log), "--json", "--year", "2026"]


def rounds(log: Path, truth: dict[str, int], env: dict[str, str], pflogsumm: str, n: int) -> dict[str, list[Any]]:
    """``n`` rounds of both tools on ``log``: {tool: [(wall, cpu, rss), ...]}; exits on a wrong count."""
    got: dict[str, list[Any]] = {"lockdown": [], "pflogsumm": []}
    for i in range(1, n + 1):
        # Alternate which tool goes first, so that neither always runs on a warmer machine.
        for tool in ("lockdown", "pflogsumm") if i % 2 else ("pflogsumm", "lockdown"):
            wall, cpu, rss, out = run(lockdown_cmd(log) if tool == "lockdown" else [pflogsumm, str(log)], env)
            got[tool].append((wall, cpu, rss))
            if tool == "lockdown" and (problem := check(json.loads(out), truth)) is not None:
                raise SystemExit(f"bench: MISMATCH {problem}")
        lk, pf = got["lockdown"][-1], got["pflogsumm"][-1]
        print(f"round {i}: lockdown {lk[0]:5.2f} s wall {lk[1]:5.2f} s CPU   "
              f"pflogsumm {pf[0]:5.2f} s wall {pf[1]:5.2f} s CPU   "
              f"ratios {pf[0] / lk[0]:.2f}x / {pf[1] / lk[1]:.2f}x")  # fmt: skip
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 lines and no big log: a smoke run")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, each runs both tools (default 3)")
    ap.add_argument("--big", type=int, default=5_000_000, help="lines of the memory log (0: skip it)")
    ap.add_argument("--keep", type=Path, help="keep the generated log here")
    args = ap.parse_args()
    if args.quick:
        args.lines, args.big = 100_000, 0
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    pflogsumm = shutil.which("pflogsumm") or install_pflogsumm()
    if pflogsumm is None:
        print("bench: pflogsumm is not installed (apt-get install pflogsumm)", file=sys.stderr)
        return 5
    with tempfile.TemporaryDirectory(prefix="lkd-bench-") as tmp:
        log = args.keep or Path(tmp) / "mail.log"
        t0 = time.perf_counter()
        truth = generate(log, args.lines)
        print(f"generated {truth['lines']} lines ({log.stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip
        env = installed_env(Path(tmp), log)
        print(f"lockdown's log reader: {reader(env)} (scripts/build-native; LOCKDOWN_MAIL_READER=pure for the source)")
        got = rounds(log, truth, env, pflogsumm, args.rounds)
        (lk_wall, lk_cpu, lk_rss), (pf_wall, pf_cpu, pf_rss) = (_medians(got[t]) for t in ("lockdown", "pflogsumm"))
        print(f"lockdown report : {lk_wall:6.2f} s wall  {lk_cpu:6.2f} s CPU  peak RSS {lk_rss:4d} MiB"
              f"   (median of {args.rounds}; counts match the generator)")
        print(f"pflogsumm       : {pf_wall:6.2f} s wall  {pf_cpu:6.2f} s CPU  peak RSS {pf_rss:4d} MiB")
        ok = [verdict("wall time ratio", pf_wall / lk_wall, ">= 2x", pf_wall / lk_wall >= 2),
              verdict("CPU time ratio ", pf_cpu / lk_cpu, ">= 2x", pf_cpu / lk_cpu >= 2),
              verdict("peak RSS       ", lk_rss, "<= 100 MiB", lk_rss <= 100)]  # fmt: skip
        if args.big:
            ok.append(big_log(Path(tmp) / "big.log", args.big, env, lk_rss))
        return 0 if all(ok) else 1


def _medians(runs: list[Any]) -> tuple[float, float, int]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), max(r[2] for r in runs)


def verdict(what: str, value: float, goal: str, met: bool) -> bool:
    print(f"{what} : {value:.2f} (goal {goal}): {'OK' if met else 'MISSED'}")
    return met


def big_log(path: Path, lines: int, env: dict[str, str], small_rss: int) -> bool:
    """lockdown alone on a ``lines``-line log: its peak RSS against the first log's."""
    truth = generate(path, lines, seed=9)
    wall, cpu, rss, out = run(lockdown_cmd(path), env)
    if (problem := check(json.loads(out), truth)) is not None:
        raise SystemExit(f"bench: MISMATCH on the big log: {problem}")
    doc = json.loads(out)
    print(f"lockdown report on {truth['lines']} lines ({path.stat().st_size / 2**20:.0f} MiB): "
          f"{wall:.2f} s wall {cpu:.2f} s CPU, peak RSS {rss} MiB ({rss / small_rss:.2f}x the first log's "
          f"for {truth['lines'] / 1e6:.0f}M lines; by_client lists {len(doc['by_client'])} clients)")  # fmt: skip
    path.unlink()
    return verdict("peak RSS, big   ", rss, "<= 100 MiB", rss <= 100)


def check(doc: dict[str, Any], truth: dict[str, int]) -> str | None:
    """None when the report counts what the generator wrote; else what differs."""
    for key in ("messages", "outside_messages", "signature_messages"):
        if doc[key] != truth[key]:
            return f"{key}: report {doc[key]} != generated {truth[key]}"
    if doc["rejects"]["total"] != truth["rejects"]:
        return f"rejects: {doc['rejects']['total']} != {truth['rejects']}"
    return None


if __name__ == "__main__":
    sys.exit(main())
