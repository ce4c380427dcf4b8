"""Fuzzing ``lockdown serve`` with hypothesis: webhook bodies and request heads, against a real serve.

Every request must get an HTTP answer from the documented set, never a
closed connection; a 400 or 413 must leave no incident behind; serve must log
no internal error and still answer /healthz at the end. The number of
examples is fixed (and the seed derandomised under CI=true) so the time in CI
is bounded: about 20 s on the 2-core test machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockdown.record.incident import list_incident_ids
from tests.test_serve import TOKEN, Server
from tests.test_serve_hostile import idle, quick_config, raw_request, server_log

pytestmark = pytest.mark.netns

FUZZ = settings(
    max_examples=int(os.environ.get("LOCKDOWN_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
ANSWERS = {200, 202, 400, 404, 405, 411, 413, 414, 431, 503}

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["\x1b[2J\x1b[1;32m✓ verified", "\x00\r\n", "\u202e"])
)  # fmt: skip
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)  # fmt: skip
names = st.sampled_from(["QuickAlert", "Unrouted", ""]) | st.text(max_size=10)
statuses = st.sampled_from(["firing", "resolved"]) | scalars
alert_items = st.fixed_dictionaries(
    {},
    optional={
        "labels": st.dictionaries(st.sampled_from(["alertname", "severity", "x"]), names | scalars, max_size=3),
        "status": statuses,
        "fingerprint": st.text(max_size=12) | scalars,
        "startsAt": st.sampled_from(["2026-11-30T19:52:14.180831842Z", "2026-11-30T19:52:14Z", "soon"]) | scalars,
        "annotations": json_values,
    },
)
alertmanager = st.fixed_dictionaries(
    {"version": st.sampled_from(["4", "3"]) | scalars},
    optional={"alerts": st.lists(alert_items, max_size=3) | json_values},
)
generic = st.fixed_dictionaries(
    {},
    optional={"alert": names | scalars, "status": statuses, "fingerprint": st.text(max_size=8) | scalars,
              "detail": json_values},
)  # fmt: skip
bodies = st.one_of(
    st.tuples(st.just("/v1/alerts/alertmanager"), alertmanager.map(lambda d: json.dumps(d).encode())),
    st.tuples(st.just("/v1/alerts/grafana"), alertmanager.map(lambda d: json.dumps(d).encode())),
    st.tuples(st.just("/v1/alerts/generic"), generic.map(lambda d: json.dumps(d).encode())),
    st.tuples(st.sampled_from(["/v1/alerts/generic", "/v1/alerts/alertmanager"]), st.binary(max_size=300)),
    st.tuples(st.just("/v1/alerts/generic"), json_values.map(lambda d: json.dumps(d).encode())),
    st.tuples(st.just("/v1/alerts/generic"), st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)),
    st.tuples(
        st.just("/v1/alerts/generic"),
        st.integers(4000, 6000).map(lambda n: b'{"alert": "QuickAlert", "n": ' + b"9" * n + b"}"),
    ),
)


def check_answer(answer: bytes) -> int:
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.0 "), answer[:300]
    code = int(head.split(b" ", 2)[1])
    assert code in ANSWERS, answer[:300]
    assert isinstance(json.loads(body), dict)
    return code


@pytest.fixture
def fuzzed(tmp_path: Path, netns: str) -> Iterator[Server]:
    """One serve for all the examples of a test; at the end, its log must hold no internal error."""
    config, state = quick_config(tmp_path)
    srv = Server(config, state, netns).start()
    try:
        yield srv
        assert [x for x in server_log(srv) if x["event"] == "http-error"] == []
        assert srv.request("GET", "/healthz").status == 200
    finally:
        code, err = srv.stop()
    assert code == 0, err
    # whatever the bodies held, nothing raw reaches a terminal or the log
    assert "\x1b" not in err and "\x1b" not in "".join(srv.stdout)
    assert b"\x1b" not in (state / "triggers" / "server.log").read_bytes()


@FUZZ
@given(case=bodies)
def test_fuzzed_webhook_bodies_are_always_answered(fuzzed: Server, case: tuple[str, bytes]) -> None:
    path, body = case
    before = len(list_incident_ids(fuzzed.state))
    head = f"POST {path} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    code = check_answer(raw_request(fuzzed, head.encode() + body))
    if code != 202:
        assert len(list_incident_ids(fuzzed.state)) == before, code
    else:
        idle(fuzzed)


header_names = st.sampled_from(["Content-Length", "Transfer-Encoding", "Authorization", "Host", "X"]) | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=12
)
header_values = st.sampled_from(["0", "2", "-1", "²", "chunked", f"Bearer {TOKEN}", ""]) | st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=255, blacklist_characters="\r\n"), max_size=20
)
heads = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "HEAD", "G T", ""]) | st.text(max_size=6),
    st.sampled_from(["/healthz", "/metrics", "/v1/alerts/generic", "/../x", "*", ""]) | st.text(max_size=12),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""]),
    st.lists(st.tuples(header_names, header_values), max_size=5),
)


@FUZZ
@given(head=heads)
def test_fuzzed_request_heads_are_always_answered(fuzzed: Server, head: tuple[str, str, str, list[Any]]) -> None:
    method, path, version, headers = head
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in headers]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    if lengths and lengths[-1].isascii() and lengths[-1].isdigit():
        raw += b"{}".ljust(int(lengths[-1]), b" ")[: int(lengths[-1])] if int(lengths[-1]) < 4096 else b""
        if int(lengths[-1]) >= 4096:
            return  # a body promised and not sent: serve waits for it (request_timeout), as it should
    check_answer(raw_request(fuzzed, raw))
    assert list_incident_ids(fuzzed.state) == []
