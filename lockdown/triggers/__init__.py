"""Triggers: the alert webhook server (``lockdown serve``) and the log watch (``lockdown watch``).

Both call the engine (``lockdown.engine.runner.Run``), never the CLI, and
share one durable de-duplication store under the state dir.
"""
