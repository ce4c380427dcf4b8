"""The core: playbook -> runner, which writes the record (``lockdown.record``). Never prints, never exits."""
