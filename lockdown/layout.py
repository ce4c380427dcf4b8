"""The names of the files in a state directory and in an incident directory: one place.

The engine writes these, ``status`` and ``restore`` read them, ``export``
copies them into a bundle under the same names and ``verify`` checks them
there. A name changed here changes for all of them.
"""

from __future__ import annotations

#: Under the state dir: one directory per incident, named by its id.
INCIDENTS_DIR = "incidents"
#: Under the state dir: the flock that allows one run or restore at a time.
LOCK = "lock"

#: In an incident directory.
INCIDENT_JSON = "incident.json"  # run metadata (playbook, vars, trigger, operator)
PLAYBOOK_COPY = "playbook.toml"  # the playbook as it ran
JOURNAL = "journal.jsonl"  # the write-ahead, hash-chained journal
HEAD = "journal.head"  # SHA-256 of the journal's last durable line
TRIGGERS = "triggers.jsonl"  # webhook repeats attached to the incident
MANIFEST = "manifest.json"  # every evidence file: size, SHA-256, time, step
EVIDENCE_DIR = "evidence"

#: Prefix of an incident directory still being created (see ``record.incident``):
#: never an incident id, so listings ignore it; the next run removes it.
STAGING_PREFIX = ".new-"
