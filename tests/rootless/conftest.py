"""Real executor fixtures (runc, a LocalStore, both input providers), as tests/integration."""

from __future__ import annotations

from tests.integration.conftest import busybox, executor, provider, shared_store

__all__ = ["busybox", "executor", "provider", "shared_store"]
