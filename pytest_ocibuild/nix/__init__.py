"""Nix compatibility: nixbase32, hashes, store paths, .drv files and derivation hashing.

Sits above ``castore`` and ``build``; imports neither pytest nor the plugin.
"""

from __future__ import annotations
