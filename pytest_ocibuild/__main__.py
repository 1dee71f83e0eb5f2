"""``python -m pytest_ocibuild`` runs the CLI."""

from __future__ import annotations

import sys

from pytest_ocibuild.cli import main

sys.exit(main())
