"""Docs that cannot rot: every action and every command documents itself, and the examples run."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest
import typer

from lockdown.actions import REGISTRY, get_action
from lockdown.cli import app
from lockdown.engine.playbook import parse_playbook

REPO = Path(__file__).resolve().parent.parent


def example_of(doc: str) -> str:
    match = re.search(r"Example::\n\n(.*)", doc, re.S)
    assert match, "docstring has no 'Example::' block"
    return textwrap.dedent(match.group(1)).strip() + "\n"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_action_is_documented_and_its_example_validates(name: str) -> None:
    cls = get_action(name)
    assert cls.name == name
    doc = cls.__doc__ or ""
    lines = doc.strip().splitlines()
    assert lines and lines[0].strip().endswith("."), f"{name}: the first docstring line must be a one-line summary"
    assert "Parameters:" in doc, f"{name}: no Parameters section"
    import dataclasses

    for f in dataclasses.fields(cls.Params):
        assert re.search(rf"^\s+{f.name}:", doc, re.M), f"{name}: parameter {f.name!r} is not documented"
    example = example_of(doc)
    pb = parse_playbook(example, Path(f"{name}-example.toml"), f"{name} example", {})
    assert [s.action_name for s in pb.steps] == [name]


def test_playbooks_actions_json_lists_every_parameter_of_every_action() -> None:
    """`lockdown playbooks actions --json` shows each action's Params fields, in order, none missing."""
    import dataclasses
    import json

    r = subprocess.run(
        [sys.executable, "-m", "lockdown", "playbooks", "actions", "--json"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    listed = {a["action"]: [p["name"] for p in a["params"]] for a in json.loads(r.stdout)["actions"]}
    assert set(listed) == set(REGISTRY)
    for name in REGISTRY:
        assert listed[name] == [f.name for f in dataclasses.fields(get_action(name).Params)], name


def test_the_container_parameters_are_documented_once_and_shown_in_every_docker_action() -> None:
    """ContainerParams.DOC is the one text; each Docker action's __doc__ shows it, no module repeats it."""
    import ast

    from lockdown.actions.containers import PARAMS_DOC, ContainerAction, ContainerParams

    docker = sorted(n for n in REGISTRY if issubclass(get_action(n), ContainerAction))
    assert {"docker.pause", "docker.stop", "docker.inspect", "postfix.hold_queue", "nft.block"} <= set(docker)
    role_words = ContainerParams.DOC["role"].split()
    for name in docker:
        cls = get_action(name)
        doc = cls.__doc__ or ""
        assert PARAMS_DOC not in doc, f"{name}: the placeholder was not expanded"
        for field in ("container", "label", "role", "project"):
            assert len(re.findall(rf"^\s+{field}:", doc, re.M)) == 1, f"{name}: {field} documented != once"
        assert " ".join(doc.split()).count(" ".join(role_words)) == 1, name
        module_docs = [
            ast.get_docstring(n) or ""
            for n in ast.walk(ast.parse(Path(sys.modules[cls.__module__].__file__ or "").read_text()))
            if isinstance(n, ast.ClassDef)
        ]
        assert not any("the containers taking SMTP from outside" in d for d in module_docs), (
            f"{name}: its module writes the shared role text again"
        )
        assert any(d.count(PARAMS_DOC) == 1 for d in module_docs), f"{name}: no {PARAMS_DOC} line in its source"


def test_a_docker_action_without_the_shared_parameters_line_is_refused_at_class_creation() -> None:
    from lockdown.actions.containers import ContainerAction, ContainerParams

    with pytest.raises(TypeError) as info:

        class Bad(ContainerAction[ContainerParams]):
            """Bad.

            Parameters:
              container: written again by hand.
            """

    assert str(info.value) == "Bad: its Parameters: block needs exactly one {ContainerParams} line, found 0"


def _commands(group: typer.Typer, prefix: str = "") -> list[tuple[str, str | None]]:
    out = []
    for info in group.registered_commands:
        cb = info.callback
        assert cb is not None
        out.append((prefix + (info.name or cb.__name__.replace("_", "-")), info.help or cb.__doc__))
    for sub in group.registered_groups:
        assert sub.typer_instance is not None
        out.extend(_commands(sub.typer_instance, prefix + f"{sub.name} "))
    return out


def test_every_cli_command_has_help() -> None:
    commands = _commands(app)
    assert {"run", "restore", "status", "incidents", "playbooks list"} <= {c for c, _ in commands}
    for name, doc in commands:
        assert doc and doc.strip(), f"`lockdown {name}` has no help text"


def test_every_cli_command_has_json() -> None:
    """The brief: every command that prints also has --json (serve and watch: one object per line)."""
    root: Any = typer.main.get_command(app)
    missing = []
    for name, _ in _commands(app):
        cmd = root
        for part in name.split():
            cmd = cmd.commands[part]
        if not any("--json" in getattr(p, "opts", []) for p in cmd.params):
            missing.append(name)
    assert missing == [], f"commands without --json: {missing}"


def test_command_table_names_what_each_module_registers() -> None:
    """``main`` imports only the invoked command's module, found in COMMAND_MODULES."""
    from lockdown.cli import COMMAND_MODULES, build_app

    for module in set(COMMAND_MODULES.values()):
        top = {c.split()[0] for c, _ in _commands(build_app([module]))}
        assert top == {c for c, m in COMMAND_MODULES.items() if m == module}, module
    assert {c.split()[0] for c, _ in _commands(app)} == set(COMMAND_MODULES)


def test_an_app_with_one_command_still_takes_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    """``main`` builds an app of one module's commands; a module with a single command must
    still be called as ``lockdown NAME``."""
    from lockdown.cli import _new_app

    one = _new_app()

    @one.command()
    def hello(json_out: bool = typer.Option(False, "--json")) -> None:
        """Say hello."""
        print("hello", json_out)

    root: Any = typer.main.get_command(one)
    assert set(root.commands) == {"hello"}
    root.main(args=["hello", "--json"], prog_name="lockdown", standalone_mode=False)
    assert capsys.readouterr().out == "hello True\n"


def test_a_command_imports_only_its_own_module() -> None:
    code = (
        "import sys\n"
        "from lockdown.cli import main\n"
        "code = main(['report', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('lockdown.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = out.strip().splitlines()[-1]
    assert "lockdown.cli.audit_cmd" in loaded
    for other in ("run_cmd", "serve_cmd", "evidence_cmd", "queue_cmd", "playbooks_cmd"):
        assert f"lockdown.cli.{other}" not in loaded, loaded


def test_readme_documents_every_exit_code() -> None:
    from lockdown.errors import ExitCode

    readme = (REPO / "README.md").read_text()
    for code in ExitCode:
        assert re.search(rf"^\|\s*{int(code)}\s*\|", readme, re.M), f"exit code {int(code)} ({code.name}) not in README"


def test_shipped_playbooks_validate() -> None:
    for path in sorted((REPO / "playbooks").glob("*.toml")):
        r = subprocess.run(
            [sys.executable, "-m", "lockdown", "playbooks", "validate", str(path)], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr


def test_wheel_ships_the_playbooks_and_finds_them_by_name(tmp_path: Path) -> None:
    """After a normal `pip install .`, playbooks are found by name, not only from a checkout."""
    wheels = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("lockdown-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO / "playbooks").glob("*.toml"))
    assert sorted(Path(n).name for n in names if n.startswith("lockdown/playbooks/")) == shipped
    target = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "lockdown", "playbooks", "list", "--json"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    import json

    found = {p["name"]: p["path"] for p in json.loads(r.stdout)["playbooks"]}
    assert sorted(found) == sorted(Path(n).stem for n in shipped)
    assert all(path.startswith(str(target)) for path in found.values()), found
