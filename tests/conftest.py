"""Suite-wide configuration: pytester for the plugin tests (only a top-level conftest may
declare plugins)."""

from __future__ import annotations

pytest_plugins = ["pytester"]
