"""Every bad-input path: one precise message naming file, step and key; exit 2; nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockdown.cli import main

GOOD_STEP = '[[steps]]\nid = "fwd"\naction = "sysctl.set"\nvalues = { "net.ipv4.ip_forward" = "0" }\n'


def write(tmp_path: Path, text: str, name: str = "pb.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


CASES = [
    ("name = 'x'\n[[steps]\n", "invalid TOML: Expected ']]' at the end of an array declaration (at line 2, column 8)"),
    ("nmae = 'x'\n" + GOOD_STEP, "nmae: unknown top-level key (expected: description, name, steps, vars)"),
    ("name = 'x'\n", "steps: expected at least one [[steps]] table"),
    ('[[steps]]\nid = "a"\naction = "nope.nope"\n', "step 1 (a): action: unknown action 'nope.nope'"),
    ('[[steps]]\nid = "a"\n', "step 1 (a): action: missing or not a string"),
    (
        '[[steps]]\nid = "fwd"\naction = "sysctl.set"\nvalues = { "a" = "1" }\nvalus = 1\n',
        "step 1 (fwd): valus: unknown parameter (this action takes: values)",
    ),
    ('[[steps]]\nid = "fwd"\naction = "sysctl.set"\n', "step 1 (fwd): values: missing required parameter"),
    (
        '[[steps]]\nid = "fwd"\naction = "sysctl.set"\nvalues = 42\n',
        "step 1 (fwd): values: expected a table of name = value, got 42",
    ),
    (
        '[[steps]]\nid = "fwd"\naction = "sysctl.set"\nvalues = { "net.ipv4.ip_forward" = 0 }\n',
        "step 1 (fwd): values.net.ipv4.ip_forward: expected a string, got 0",
    ),
    (
        GOOD_STEP + '[[steps]]\nid = "w"\naction = "wait"\nseconds = "{delay}"\n',
        "step 2 (w): seconds: undefined var {delay}",
    ),
    (
        GOOD_STEP.replace('id = "fwd"\n', 'id = "fwd"\non_error = "ignore"\n'),
        "step 1 (fwd): on_error: expected \"abort\" or \"continue\", got 'ignore'",
    ),
    (GOOD_STEP + GOOD_STEP, "step 2 (fwd): id: duplicate step id 'fwd'"),
    (
        '[[steps]]\nid = "../x"\naction = "wait"\nseconds = 1\n',
        "step 1 (../x): id: expected letters, digits, '.', '_' or '-', got '../x'",
    ),
    (
        '[vars]\ndelay = "soon"\n[[steps]]\nid = "w"\naction = "wait"\nseconds = "{delay}"\n',
        "step 1 (w): seconds: expected a number, got 'soon'",
    ),
    (
        '[[steps]]\naction = "wait"\nseconds = 1\n[[steps]]\naction = "wait"\nseconds = true\n',
        "step 2 (wait-2): seconds: expected a number, got true",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_bad_playbook_gives_one_precise_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str, command: str
) -> None:
    path = write(tmp_path, text)
    state = tmp_path / "state"
    args = ["run", str(path), "--state-dir", str(state)] if command == "run" else ["playbooks", "validate", str(path)]
    code, _out, err = run_main(capsys, *args)
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith(f"lockdown: error: {path}: {expected}"), first
    assert "Traceback" not in err
    assert not state.exists(), "a bad playbook must change nothing, not even create the state dir"


def test_var_override_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[vars]\ndelay = "1"\n[[steps]]\nid = "w"\naction = "wait"\nseconds = "{delay}"\n')
    code, _, err = run_main(capsys, "run", str(path), "--var", "dleay=2", "--dry-run")
    assert code == 2
    assert err.splitlines()[0] == f"lockdown: error: --var dleay: {path} has no var 'dleay' (it defines: delay)"
    code, _, err = run_main(capsys, "run", str(path), "--var", "delay", "--dry-run")
    assert code == 2
    assert err.splitlines()[0] == "lockdown: error: --var 'delay': expected KEY=VALUE with KEY a var name"


def test_var_override_is_coerced_and_shown_in_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[vars]\ndelay = "1"\n[[steps]]\nid = "w"\naction = "wait"\nseconds = "{delay}"\n')
    code, out, _ = run_main(capsys, "run", str(path), "--var", "delay=2.5", "--dry-run", "--json")
    assert code == 0
    import json

    doc = json.loads(out)
    assert doc["status"] == "dry-run"
    assert doc["incident_id"] is None
    assert doc["plan"][0]["params"] == {"seconds": "2.5"}
    assert doc["plan"][0]["describe"] == "wait 2.5 s"


def test_unknown_playbook_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "playbooks", "validate", "no-such-playbook")
    assert code == 2
    assert err.startswith("lockdown: error: no playbook named 'no-such-playbook' (searched ")
    assert "lockdown playbooks list" in err


def test_bad_flag_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "run", "host-snapshot", "--no-such-flag")
    assert code == 2
    assert "No such option: --no-such-flag" in err


def test_bad_incident_id_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("../../etc", "x/y", "20261122T234500Z-a-zz"):
        code, _, err = run_main(capsys, "restore", bad, "--state-dir", str(tmp_path))
        assert code == 2
        assert err.startswith(f"lockdown: error: invalid incident id {bad!r}")


def test_missing_incident_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "status", "20261122T234500Z-relay-incident-3f2a", "--state-dir", str(tmp_path))
    assert code == 2
    assert err.splitlines()[0] == (
        f"lockdown: error: no incident 20261122T234500Z-relay-incident-3f2a in {tmp_path}/incidents"
    )


def test_json_error_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    path = write(tmp_path, '[[steps]]\nid = "a"\naction = "nope"\n')
    code, out, _ = run_main(capsys, "run", str(path), "--json", "--state-dir", str(tmp_path / "s"))
    assert code == 2
    doc = json.loads(out)
    assert doc["error"]["exit_code"] == 2
    assert doc["error"]["message"].startswith(f"{path}: step 1 (a): action: unknown action 'nope'")
