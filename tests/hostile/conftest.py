"""Hostile builds run on the same real fixtures as the end-to-end tests (real runc, a real
LocalStore, both input providers)."""

from tests.integration.conftest import busybox, executor, provider, shared_store

__all__ = ["busybox", "executor", "provider", "shared_store"]
