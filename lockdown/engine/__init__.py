"""The core: playbook -> runner -> journal. Never prints, never exits."""
