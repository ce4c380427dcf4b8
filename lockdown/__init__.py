"""lockdown: emergency containment for mail servers that run in Docker."""

__version__ = "0.1.0"
