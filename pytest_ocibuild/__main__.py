"""``python -m pytest_ocibuild`` runs the CLI.

Once the command has returned, the exit handlers run (the reaper helper is shut down, ...) and
the process ends without the interpreter's teardown of every imported module, which costs a
build command tens of milliseconds and does nothing a process exit does not (files are closed,
threads joined, output flushed first).
"""

from __future__ import annotations

import atexit
import os
import sys

from pytest_ocibuild.cli import main

code = main()
atexit._run_exitfuncs()
try:
    sys.stdout.flush()
    sys.stderr.flush()
except OSError:  # e.g. a closed pipe: what the interpreter's own exit reports as 120
    code = code or 120
os._exit(code)
