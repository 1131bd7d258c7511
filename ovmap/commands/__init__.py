"""Implementations of the ``ovmap`` sub-commands, one module per command family.

Each command is a function ``run_<name>(cfg)`` taking the resolved Hydra config of
``ovmap/configs/<name>.yaml``; ``ovmap/cli.py`` lists them and dispatches. Commands print what they wrote;
the work itself lives in library functions that tests call directly.
"""

import time

#: When the ``ovmap`` command started (``ovmap/cli.py`` imports this package first, before any heavy import), for
#: the time-to-first-frame reports.
LAUNCHED = time.perf_counter()
