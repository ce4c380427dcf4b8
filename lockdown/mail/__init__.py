"""Mail: the Postfix log parser and the incident report (read by audit/, evidence/ and triggers/).

``parser`` and ``analysis`` may run compiled: ``scripts/build-native`` compiles these same
sources with mypyc into ``_native/`` (not committed), beside ``SOURCES``, the sha256 of each
source it compiled. That directory comes first on this package's ``__path__`` only while
``SOURCES`` matches the sources here, so an edited source is never shadowed by an old build;
otherwise, or when nothing was built, the ``.py`` modules run. ``reader()`` says which.

``LOCKDOWN_MAIL_READER=pure`` in the environment runs the ``.py`` modules even when a fresh build
exists: the same reports, more CPU time; for a suspected fault of the build, and for the test
that compares the two (tests/test_native.py).
"""

from __future__ import annotations

import hashlib
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join(_HERE, "_native")
"""Where ``scripts/build-native`` puts the compiled modules."""
COMPILED = ("parser", "analysis")
"""The modules compiled, in this package."""
COMPILED_PATHS = tuple(f"lockdown/mail/{name}.py" for name in COMPILED)
"""Their sources, from the root of the checkout."""


def sources_digest() -> str:
    """What ``_native/SOURCES`` holds for a build of the sources as they are now."""
    out = []
    for name in COMPILED:
        with open(os.path.join(_HERE, f"{name}.py"), "rb") as fh:
            out.append(f"{hashlib.sha256(fh.read()).hexdigest()}  {name}.py\n")
    return "".join(out)


def native_is_fresh() -> bool:
    """True when ``_native/`` holds a build of the sources as they are now."""
    try:
        with open(os.path.join(NATIVE, "SOURCES")) as fh:
            built = fh.read()
    except OSError:
        return False
    return built == sources_digest()


def reader() -> str:
    """``compiled`` when the log reader in use is the mypyc build, else ``pure-python``.

    Imports ``parser``: the answer is the module that runs, not the one that could."""
    from lockdown.mail import parser

    return "compiled" if not parser.__file__.endswith(".py") else "pure-python"


if os.environ.get("LOCKDOWN_MAIL_READER") != "pure" and native_is_fresh():
    __path__.insert(0, NATIVE)
