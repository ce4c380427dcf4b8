#!/usr/bin/env python3
"""Benchmark: ``lockdown verify``'s peak RSS and time on hostile bundles, beside ``tar -xzOf | sha256sum``.

    python3 bench/bench_verify.py [--journal-mib 256] [--quick] [--keep DIR]

Issue 13: a 35 KB bundle whose journal was ``{}`` lines made verify peak at
2.95 GB. The goal is at most 100 MiB of peak RSS for any bundle, including
one whose journal is at the 256 MiB limit. Three bundles are built:

``chained``
    a hash-consistent journal of ``--journal-mib`` MiB of short lines (about
    150 bytes each, so ~1.8 million for 256 MiB): every line chains, so every
    line is parsed and fed to the timeline. The worst case for the journal.
``empty-objects``
    the issue's bundle: ``--journal-mib`` MiB of ``{}`` lines.
``wide-manifest``
    a manifest.json just under verify's 4 MiB cap (about 18,000 entries), the
    largest document verify parses as a whole.

For each, the peer reads the same bytes the simplest way there is,
``tar -xzOf BUNDLE | sha256sum`` (decompress, untar, hash every member; keeps
nothing), and ``lockdown verify`` runs in a child whose peak RSS is read
with ``wait4`` (benchlib: a launcher, so the figure is the command's own).
Exit status 0 when every verify stays within 100 MiB and never exits 70.

Figures on the development VM (2 vCPUs shared with about six other jobs,
Python 3.11.7, GNU tar 1.34), default run (about 4 minutes):

    chained: bundle 72.6 MiB, journal 1761742 line(s)
      chained        tar -xzOf | sha256sum     :    6.30 s   peak RSS    9.3 MiB
      chained        lockdown verify           :  144.15 s   peak RSS   27.6 MiB (exit 1; goal <= 100 MiB): OK
    empty-objects: bundle 0.2 MiB, journal unchained line(s)
      empty-objects  tar -xzOf | sha256sum     :    3.79 s   peak RSS    9.6 MiB
      empty-objects  lockdown verify           :    9.02 s   peak RSS   27.8 MiB (exit 1; goal <= 100 MiB): OK
    wide-manifest: bundle 0.3 MiB, journal 6998 line(s)
      wide-manifest  tar -xzOf | sha256sum     :    0.10 s   peak RSS    9.6 MiB
      wide-manifest  lockdown verify           :    2.49 s   peak RSS   47.9 MiB (exit 1; goal <= 100 MiB): OK

(With an 8 MiB cap the wide manifest peaked at 73.6 MiB, too close to the
goal: hence 4 MiB for manifest.json and case.json.) Memory is flat in the journal's size: the code before
issue 13 passed 13 GB on the empty-objects bundle before it was stopped. Time
is not: verify parses and chains every line in Python (about 17 us of CPU a
line; the wall time above is inflated by the shared CPUs), where the peer only
hashes. The bundles fail verify on purpose (they have no real case.json); what
is measured is that the journal and the manifest were read to the end.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402

sys.path.insert(0, str(REPO))
from lockdown.evidence import manifest as mf  # noqa: E402

MiB = 1 << 20
GOAL_RSS = 100 * MiB
TOP = "20261122T234500Z-bench-0bad"
PLAYBOOK = b'name = "bench"\n'


def _chained_journal(path: Path, size: int) -> tuple[str, int]:
    """Write a hash-consistent journal of about ``size`` bytes; return its head and line count."""
    prev = "0" * 64
    lines = 0
    with open(path, "wb") as fh:
        plan = [{"number": 1, "id": "s", "action": "wait"}]
        start = {"phase": "run-start", "time": "2026-11-22T23:45:00Z", "plan": plan}
        written = 0
        while written < size:
            lines += 1
            entry = start if lines == 1 else {"phase": "note", "step": "s", "time": "2026-11-22T23:45:01.000000Z"}
            raw = json.dumps({**entry, "seq": lines, "prev": prev}, sort_keys=True, separators=(",", ":")).encode()
            fh.write(raw + b"\n")
            written += len(raw) + 1
            prev = hashlib.sha256(raw).hexdigest()
    return prev, lines


def _empty_objects_journal(path: Path, size: int) -> tuple[str, int]:
    with open(path, "wb") as fh:
        block = b"{}\n" * (MiB // 3)
        for _ in range(size // len(block)):
            fh.write(block)
    return "0" * 64, 0


def _wide_manifest() -> bytes:
    entry = '{{"action": "logs.files", "collected_at": "2026-11-22T23:45:01.000000Z", '
    entry += '"path": "evidence/files/f{:06d}.log", '
    entry += '"sha256": "' + "a" * 64 + '", "size": 1234, "step": "logs"}}'
    items = []
    total = 0
    n = 0
    while total < mf.MAX_IN_MEMORY[mf.MANIFEST] - 4096:
        item = entry.format(n)
        items.append(item)
        total += len(item) + 2
        n += 1
    return ('{"files": [' + ", ".join(items[:-1]) + '], "version": 1}').encode()


def _bundle(path: Path, journal: Path, head: str, lines: int, manifest: bytes) -> None:
    small = {"incident.json": b"{}\n", "playbook.toml": PLAYBOOK}
    with gzip.open(path, "wb", compresslevel=6) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo(TOP)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for rel, data in small.items():
            info = tarfile.TarInfo(f"{TOP}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(journal, arcname=f"{TOP}/journal.jsonl")
        for rel, data in (("journal.head", head.encode()), ("manifest.json", manifest)):
            info = tarfile.TarInfo(f"{TOP}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        case = json.dumps({"format": "lockdown-evidence-bundle", "version": 1, "incident_id": TOP,
                           "playbook": {}, "journal": {"head": head, "lines": lines}, "files": []}).encode()
        info = tarfile.TarInfo(f"{TOP}/case.json")
        info.size = len(case)
        tar.addfile(info, io.BytesIO(case))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")


def _row(name: str, label: str, seconds: float, rss: int, extra: str = "") -> None:
    print(f"  {name:<14} {label:<26}: {seconds:7.2f} s   peak RSS {rss / MiB:6.1f} MiB{extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--journal-mib", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="32 MiB journals instead")
    parser.add_argument("--keep", type=Path, help="build the bundles in this directory and keep them")
    args = parser.parse_args()
    size = (32 if args.quick else args.journal_mib) * MiB
    work = args.keep or Path(tempfile.mkdtemp(prefix="lkd-bench-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/local/bin:/usr/bin:/bin"}
    ok = True
    try:
        empty_manifest = b'{"files": [], "version": 1}\n'
        scenarios = {
            "chained": (_chained_journal, empty_manifest),
            "empty-objects": (_empty_objects_journal, empty_manifest),
            "wide-manifest": (_chained_journal, _wide_manifest()),
        }
        print(f"journals of {size // MiB} MiB; goal: lockdown verify peak RSS <= {GOAL_RSS // MiB} MiB, never exit 70")
        for name, (make, manifest) in scenarios.items():
            journal = work / f"{name}.jsonl"
            head, lines = make(journal, size if name != "wide-manifest" else MiB)
            bundle = work / f"{name}.tar.gz"
            _bundle(bundle, journal, head, lines, manifest)
            journal.unlink()
            print(f"{name}: bundle {bundle.stat().st_size / MiB:.1f} MiB, journal {lines or 'unchained'} line(s)")
            t, rss, code = benchlib.measure(["sh", "-c", f"tar -xzOf {bundle} | sha256sum >/dev/null"], env=env)
            _row(name, "tar -xzOf | sha256sum", t, rss)
            t, rss, code = benchlib.measure(
                [sys.executable, "-m", "lockdown", "verify", str(bundle)], env=env, stdout=-3  # DEVNULL
            )
            good = rss <= GOAL_RSS and code in (0, 1)
            ok &= good
            _row(name, "lockdown verify", t, rss, f" (exit {code}; goal <= 100 MiB): {'OK' if good else 'MISSED'}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
