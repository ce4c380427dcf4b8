from lockdown.cli import run

run()
