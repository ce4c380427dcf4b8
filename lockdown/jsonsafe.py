"""JSON from untrusted sources (webhook bodies, bundles, state dirs), with bounded nesting.

Why a wrapper: ``json.loads`` accepts nesting up to the interpreter's recursion
limit, so a document ~970 levels deep parses, and then every later recursive
walk of it (``json.dumps`` to hash a journal entry, a validator, a renderer)
raises ``RecursionError`` far away from the input that caused it. Huge
integers (``int`` > 4300 digits) raise a bare ``ValueError`` inside the
decoder. Both become one :class:`JSONError` here, at the door, so that no
caller ever sees them as an internal error.
"""

from __future__ import annotations

import json
from typing import Any

#: Deep enough for every document lockdown writes (journal entries, manifests,
#: Alertmanager payloads are < 10 levels); far below the recursion limit.
MAX_DEPTH = 64


class JSONError(ValueError):
    """The text is not JSON lockdown accepts: malformed, too deep, or a number too large."""


def depth_exceeds(value: Any, max_depth: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests lists/dicts deeper than ``max_depth`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, what: str = "JSON") -> Any:
    """Parse ``text``; raise :class:`JSONError` (never RecursionError) naming ``what``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONError(f"{what}: nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, int digit limit
        raise JSONError(f"{what}: not valid JSON ({exc})") from None
    if depth_exceeds(value, max_depth):
        raise JSONError(f"{what}: nested deeper than {max_depth} levels")
    return value
