"""STYLE.md's size rule, checked so it stays true: no function under lockdown/ has a body over 80 lines.

The body is counted from its first statement after the docstring to its last
line, so a typer signature (one ``Annotated`` option per line) or a long
docstring does not count; nested functions count towards the function that
holds them, since a reader has to read them there.
"""

from __future__ import annotations

import ast
import textwrap

from tests.conftest import REPO

MAX_BODY_LINES = 80


def long_functions(source: str, name: str, limit: int = MAX_BODY_LINES) -> list[str]:
    """``name:LINE function (N lines)`` for each function in ``source`` whose body is over ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body
        if ast.get_docstring(node) is not None:
            body = body[1:]
        if not body:
            continue
        lines = (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1
        if lines > limit:
            found.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_under_lockdown_has_a_body_over_80_lines() -> None:
    offenders = [
        hit
        for path in sorted((REPO / "lockdown").rglob("*.py"))
        for hit in long_functions(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert offenders == [], "split these into named steps (STYLE.md): " + ", ".join(offenders)


def test_the_count_skips_the_signature_and_docstring_but_not_the_body() -> None:
    signature = "".join(f"    a{i}: int = {i},\n" for i in range(30))
    docstring = '    """Doc.\n\n' + "    more\n" * 30 + '    """\n'
    short = f"def f(\n{signature}) -> None:\n{docstring}" + "    x = 1\n" * 80
    long = short + "    x = 2\n"
    nested = "def g() -> None:\n    def h() -> None:\n" + "        y = 1\n" * 80 + "    h()\n"
    assert long_functions(short, "m.py") == []
    assert long_functions(long, "m.py") == ["m.py:1 f (81 lines)"]
    assert long_functions(textwrap.dedent(nested), "n.py") == ["n.py:1 g (82 lines)"]
