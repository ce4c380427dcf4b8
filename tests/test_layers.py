"""The layers of docs/architecture.md, enforced: every import of a lockdown module looks down.

An AST scan of every module under ``lockdown/`` (imports inside functions and
``TYPE_CHECKING`` blocks included: a lazy import is still a dependency). Each
module belongs to one unit of :data:`LAYERS` (a package such as ``engine/`` or
a top-level module such as ``guard``). An import is allowed inside its own unit
or into a unit of a strictly lower layer; two units of one layer (``actions/``
and ``evidence/``) never import each other. The table is compared with the
diagram in docs/architecture.md, so the doc and the rule cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockdown.actions import REGISTRY, get_action
from lockdown.record.steps import HELD_UNDO

REPO = Path(__file__).resolve().parent.parent

#: Bottom first. ``x/`` is the package lockdown/x/, ``x`` the module lockdown/x.py,
#: ``__init__`` the package lockdown/__init__.py (the version). Same as docs/architecture.md.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors", "jsonsafe", "layout", "nlmsg"),
    ("paths",),
    ("dockerapi", "netlink", "hostfacts", "nft", "sysctl"),
    ("stacks",),
    ("record/",),
    ("mail/",),
    ("actions/", "audit/", "evidence/"),
    ("engine/",),
    ("guard",),
    ("triggers/",),
    ("cli/",),
    ("__main__",),
]

#: The one home of each third-party dependency (a unit of LAYERS, or a module).
HOMES = {
    "docker": "lockdown.dockerapi",
    "pyroute2": "lockdown.netlink",
    "psutil": "lockdown.hostfacts",
    "typer": "lockdown.cli",
}


def unit_module(unit: str) -> str:
    """``cli/`` -> ``lockdown.cli``, ``guard`` -> ``lockdown.guard``, ``__init__`` -> ``lockdown``."""
    return "lockdown" if unit == "__init__" else "lockdown." + unit.rstrip("/")


def all_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module under lockdown/."""
    found = {}
    for path in sorted((REPO / "lockdown").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = all_modules()


def unit_of(module: str) -> tuple[str, int] | None:
    """The unit a lockdown module belongs to, and its layer; None for a module the table misses."""
    for layer, units in enumerate(LAYERS):
        for unit in units:
            home = unit_module(unit)
            if module == home or (unit.endswith("/") and module.startswith(home + ".")):
                return unit, layer
    return None


def imports(module: str, source: str) -> Iterator[tuple[int, str]]:
    """(line, dotted target) for every import in ``source``, relative ones resolved.
    ``from lockdown.x import y`` names ``lockdown.x.y`` when that is a module."""
    package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base


def offences(module: str, source: str) -> list[str]:
    """Every import in ``module`` that breaks the layers or a dependency's home."""
    where = f"{MODULES[module].relative_to(REPO)}" if module in MODULES else module
    own = unit_of(module)
    assert own is not None, f"{module} is in no layer of LAYERS (docs/architecture.md)"
    found = []
    for line, target in imports(module, source):
        top = target.partition(".")[0]
        if top in HOMES and not (module == HOMES[top] or module.startswith(HOMES[top] + ".")):
            found.append(f"{where}:{line}: imports {target}, whose only home is {HOMES[top]}")
        if top != "lockdown":
            continue
        theirs = unit_of(target)
        if theirs is None:
            found.append(f"{where}:{line}: imports {target}, which is in no layer")
        elif theirs[0] != own[0] and theirs[1] >= own[1]:
            way = "sideways" if theirs[1] == own[1] else "upward"
            found.append(f"{where}:{line}: {own[0]} (layer {own[1]}) imports {target} "
                         f"({theirs[0]}, layer {theirs[1]}): {way}")  # fmt: skip
    return found


def test_every_import_looks_down_and_each_dependency_has_one_home() -> None:
    found = [o for module, path in MODULES.items() for o in offences(module, path.read_text())]
    assert found == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("lockdown.mail.report", "from lockdown.engine.runner import Run",
         "lockdown/mail/report.py:1: mail/ (layer 5) imports lockdown.engine.runner (engine/, layer 7): upward"),
        ("lockdown.actions.base", "def f():\n    from lockdown.evidence import export",
         "lockdown/actions/base.py:2: actions/ (layer 6) imports lockdown.evidence.export (evidence/, layer 6): "
         "sideways"),
        ("lockdown.record.steps", "from ..actions import REGISTRY",
         "lockdown/record/steps.py:1: record/ (layer 4) imports lockdown.actions (actions/, layer 6): upward"),
        ("lockdown.nft", "import lockdown.sysctl",
         "lockdown/nft.py:1: nft (layer 2) imports lockdown.sysctl (sysctl, layer 2): sideways"),
        ("lockdown.audit.facts", "import psutil",
         "lockdown/audit/facts.py:1: imports psutil, whose only home is lockdown.hostfacts"),
        ("lockdown.engine.runner", "from docker.errors import NotFound",
         "lockdown/engine/runner.py:1: imports docker.errors, whose only home is lockdown.dockerapi"),
        ("lockdown.guard", "import typer",
         "lockdown/guard.py:1: imports typer, whose only home is lockdown.cli"),
    ],
)  # fmt: skip
def test_the_scan_names_an_upward_or_sideways_import(module: str, source: str, expected: str) -> None:
    assert offences(module, source) == [expected]


def test_imports_inside_a_unit_and_downward_pass() -> None:
    source = "from lockdown.engine import gate\nfrom lockdown.record.journal import Journal\nfrom lockdown import paths"
    assert offences("lockdown.engine.runner", source) == []
    assert offences("lockdown.cli.run_cmd", "import typer\nfrom lockdown.engine import runner") == []


def test_every_module_is_in_a_layer_and_every_unit_exists() -> None:
    assert [m for m in MODULES if unit_of(m) is None] == []
    units = [u for layer in LAYERS for u in layer]
    assert [u for u in units if unit_module(u) not in MODULES] == []
    assert len(units) == len(set(units))


def test_no_action_imports_another_action() -> None:
    """Shared code lives in helper modules of actions/ (base.py, containers.py, records.py),
    never in a sibling action, and no action reaches the others through the registry."""
    action_modules = {target.partition(":")[0] for target in REGISTRY.values()}
    assert action_modules <= set(MODULES)
    offenders = [
        f"{module} imports {target}"
        for module in sorted(action_modules)
        for _, target in imports(module, MODULES[module].read_text())
        if target != module and (target in action_modules or target == "lockdown.actions")
    ]
    assert offenders == []


def test_the_scan_catches_an_action_importing_a_sibling() -> None:
    names = [t for _, t in imports("lockdown.actions.docker_stop", "from . import docker_pause")]
    assert names == ["lockdown.actions.docker_pause"]
    names = [t for _, t in imports("lockdown.actions.docker_stop", "from lockdown.actions import docker_pause")]
    assert names == ["lockdown.actions.docker_pause"]


def test_the_readers_held_decisions_are_the_actions_own() -> None:
    """record/steps.py knows which undo waits for a decision without importing the actions
    above it; each action declares the same as ``held_undo``."""
    declared = {name: get_action(name).held_undo for name in REGISTRY if get_action(name).held_undo}
    assert declared == HELD_UNDO


def doc_layers() -> list[tuple[str, ...]]:
    """The diagram under "## Layers" in docs/architecture.md, bottom first: each line is
    ``unit  unit ... | what it is``."""
    text = (REPO / "docs" / "architecture.md").read_text()
    match = re.search(r"^## Layers\n+```\n(.*?)```", text, re.S | re.M)
    assert match, "docs/architecture.md has no ## Layers diagram"
    rows = [line.partition("|")[0].split() for line in match.group(1).splitlines() if "|" in line]
    return [tuple(row) for row in reversed(rows)]


def test_the_layers_are_the_ones_docs_architecture_shows() -> None:
    assert doc_layers() == LAYERS


def test_docs_architecture_lists_every_module_and_no_other() -> None:
    """The module list at the top of docs/architecture.md names each file (``store.py``) or
    package (``record/``) that exists, and names no file that does not."""
    text = (REPO / "docs" / "architecture.md").read_text()
    match = re.search(r"```\nlockdown/\n(.*?)```", text, re.S)
    assert match, "docs/architecture.md has no lockdown/ module list"
    listed = set(re.findall(r"\b(\w+\.py)\b", match.group(1))) | set(re.findall(r"^\s+(\w+/)", match.group(1), re.M))
    existing = {p.name for p in MODULES.values()} | {p.parent.name + "/" for p in MODULES.values()} - {"lockdown/"}
    assert sorted(existing - listed) == []
    assert sorted(n for n in listed - existing if n.endswith(".py")) == []
