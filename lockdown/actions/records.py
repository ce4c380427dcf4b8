"""Evidence files of many records, written fast: shared by the snapshot actions.

A helper module, not an action: actions import helpers, never each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def write_records(fh: Any, head: dict[str, Any], key: str, records: Iterable[dict[str, Any]]) -> None:
    """Write ``{**head, key: [records]}`` as JSON with one compact record per line.

    json.dump(indent=...) falls back to the pure-Python encoder, which is
    slow for tens of thousands of records; this stays on the C encoder,
    writes in ~1 MiB chunks (``fh`` hashes and writes unbuffered), and the
    file is still valid JSON and greppable line by line.
    """
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode
    text = json.dumps(head, indent=1, sort_keys=True, default=str)
    parts = [text[:-2] + f',\n "{key}": [']
    size = 0
    sep = "\n  "
    for rec in records:
        line = sep + encode(rec)
        sep = ",\n  "
        parts.append(line)
        size += len(line)
        if size > 1 << 20:
            fh.write("".join(parts).encode())
            parts, size = [], 0
    parts.append("\n ]\n}\n")
    fh.write("".join(parts).encode())
