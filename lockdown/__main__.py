import sys

from lockdown.cli import main

sys.exit(main())
