"""Fuzzing ``lockdown verify`` with hypothesis: crafted bundle structures (issue 13).

Bundles are built from a valid skeleton (every top-level file, a hash-consistent
journal, a case.json listing them) and then mutated: members dropped, replaced
with hostile content (deep nesting, a malformed plan, bytes that are not JSON),
added with hostile names and types, the compressed bytes cut or flipped. For
each, ``lockdown verify`` (its ``main``, the one error boundary) must exit 0, 1
or 2, never 70; print nothing a terminal would act on; and allocate a bounded
amount of memory. The example count is fixed so CI time stays bounded (~1 min).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockdown.cli import main
from tests.test_evidence import write_sidecar
from tests.test_verify_hostile import TOP, chained, deep, run_start, top_files

MIB = 1 << 20

_JOURNAL, _HEAD = chained(
    [run_start([{"number": 1, "id": "s", "action": "wait"}]), {"phase": "applied", "step": "s", "time": "t"}]
)
SKELETON = top_files(_JOURNAL, _HEAD)

HOSTILE_DATA = st.one_of(
    st.sampled_from(
        [
            b"{}",
            b"[]",
            b"null",
            b'{"files": 5}',
            b'{"files": [{"path": "evidence/x", "size": -1, "sha256": "0"}]}',
            deep(3000),
            b'{"a": ' + deep(100) + b"}",
            b"1" * 5000,
            chained([run_start(7)])[0],
            chained([run_start([{"number": "1", "id": 2, "action": None}])])[0],
            chained([{"phase": "run-end", "time": ["x"] * 50}])[0],
            b"{}\n" * 1000,
            b"\xff\xfe\x00",
            b"\x1b[2J\x1b[1;1H\xe2\x9c\x93 verified\n",
        ]
    ),
    st.binary(max_size=300),
)
NAMES = st.one_of(
    st.sampled_from([*SKELETON, "evidence/x.json", "report/report.html", "../x", "/etc/passwd", "", "evidence"]),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40
    ),
)
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.FIFOTYPE])


@st.composite
def bundles(draw: st.DrawFn) -> tuple[list[tuple[str, bytes, bytes]], int | None, int | None]:
    """(members as (name, type, data), a cut position or None, a byte to flip or None)."""
    members = [(f"{TOP}/{rel}", tarfile.REGTYPE, data) for rel, data in SKELETON.items()]
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["drop", "replace", "add", "swap"]))
        if action == "drop" and members:
            members.pop(draw(st.integers(0, len(members) - 1)))
        elif action == "replace" and members:
            i = draw(st.integers(0, len(members) - 1))
            members[i] = (members[i][0], members[i][1], draw(HOSTILE_DATA))
        elif action == "swap" and len(members) > 1:
            i, j = draw(st.integers(0, len(members) - 1)), draw(st.integers(0, len(members) - 1))
            members[i], members[j] = members[j], members[i]
        else:
            name = draw(NAMES)
            prefix = draw(st.sampled_from([f"{TOP}/", "", f"{TOP}/evidence/"]))
            members.insert(draw(st.integers(0, len(members))), (prefix + name, draw(KINDS), draw(HOSTILE_DATA)))
    cut = draw(st.none() | st.integers(0, 400))
    flip = draw(st.none() | st.integers(0, 400))
    return [(TOP, tarfile.DIRTYPE, b""), *members], cut, flip


def _write(path: Path, members: list[tuple[str, bytes, bytes]], cut: int | None, flip: int | None) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as gz, tarfile.open(
        fileobj=gz, mode="w", format=tarfile.PAX_FORMAT
    ) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o644
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/shadow"
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    raw = bytearray(buf.getvalue())
    if flip is not None and flip < len(raw):
        raw[-1 - flip] ^= 0x55
    if cut is not None and cut < len(raw):
        del raw[len(raw) - cut :]
    path.write_bytes(bytes(raw))
    write_sidecar(path)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=bundles())
def test_verify_survives_any_bundle_structure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: tuple[Any, int | None, int | None]
) -> None:
    members, cut, flip = case
    bundle = tmp_path / "fuzz.tar.gz"
    bundle.unlink(missing_ok=True)
    bundle.with_name("fuzz.tar.gz.sha256").unlink(missing_ok=True)
    _write(bundle, members, cut, flip)
    for args in (["verify", str(bundle)], ["verify", "--json", str(bundle)]):
        tracemalloc.start()
        try:
            code = main(args)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        out, err = capsys.readouterr()
        assert code in (0, 1, 2), err
        assert "internal error" not in err
        bad = [ch for ch in out + err if not (ch.isprintable() or ch == "\n")]
        assert not bad, (bad, out, err)
        assert peak < 64 * MIB, f"verify allocated {peak / MIB:.1f} MiB"
