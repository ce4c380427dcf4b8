"""What the bench scripts share: timing a command and its peak memory the same way.

``os.wait4`` on a child started straight from the bench reports the bench's own
resident size when that is larger: the child's ``ru_maxrss`` counts the pages it
shared with its parent between fork and exec. A small launcher (``python -S``, about
9 MiB) starts the command instead, so the figure is the command's own, with a 9 MiB floor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import IO, Any

LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump([time.perf_counter() - t0, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status),
               usage.ru_utime + usage.ru_stime], fh)
"""


def measure(
    cmd: list[str], *, env: dict[str, str] | None = None, stdout: IO[Any] | int | None = None
) -> tuple[float, int, int]:
    """Wall seconds, peak RSS in bytes (the command and the children it waited for) and exit code."""
    elapsed, rss, code, _cpu = measure_cpu(cmd, env=env, stdout=stdout)
    return elapsed, rss, code


def measure_cpu(
    cmd: list[str], *, env: dict[str, str] | None = None, stdout: IO[Any] | int | None = None
) -> tuple[float, int, int, float]:
    """``measure`` and the CPU seconds (user + system) of the command and the children it waited for."""
    with tempfile.NamedTemporaryFile("r") as result:
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, result.name, *cmd], stdout=stdout, env=env, check=False)
        elapsed, rss, code, cpu = json.loads(result.read() or "[0, 0, -1, 0]")
    return float(elapsed), int(rss), int(code), float(cpu)
