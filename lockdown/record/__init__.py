"""The record of an incident: its journal, the one reader of the journal's meaning, its ids and
directory, drift entries and the hashed evidence store.

Engine, actions, evidence, mail and triggers all read or write incidents, so the record sits
below all of them and imports only helpers (paths, layout, jsonsafe, errors).
"""
