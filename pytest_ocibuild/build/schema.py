"""Validate a runtime spec (config.json dict) against the upstream OCI runtime-spec JSON schema.

The schema files (``config-schema.json`` and the ``defs*.json`` / ``config-*.json`` it
refers to) are read from ``$OCIBUILD_OCI_SCHEMA_DIR`` or, by default, from Debian's
``golang-github-opencontainers-runtime-spec-dev`` package location.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from pytest_ocibuild.errors import BundleError

DEFAULT_SCHEMA_DIR = Path(
    "/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema"
)
SCHEMA_DIR_ENV = "OCIBUILD_OCI_SCHEMA_DIR"
ROOT_SCHEMA = "config-schema.json"


class SchemaUnavailable(BundleError):
    """The OCI runtime-spec schema files cannot be found or read."""

    reason = "schema-unavailable"


def schema_dir() -> Path:
    """The directory holding ``config-schema.json``."""
    return Path(os.environ.get(SCHEMA_DIR_ENV) or DEFAULT_SCHEMA_DIR)


def validate_spec(spec: dict[str, Any]) -> None:
    """Raise BundleError (one line: the failing path and why) if ``spec`` is not valid."""
    validator = _validator(schema_dir())
    error = min(validator.iter_errors(spec), key=_error_key, default=None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise BundleError(f"config.json invalid at {where}: {error.message}", reason="bad-spec")


def _error_key(error: Any) -> tuple[int, str]:
    return (len(error.absolute_path), str(list(error.absolute_path)))


@functools.cache
def _validator(directory: Path) -> Any:
    """Compiled draft-04 validator with every ``*.json`` of ``directory`` registered by name."""
    from jsonschema import Draft4Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    if not (directory / ROOT_SCHEMA).is_file():
        raise SchemaUnavailable(
            f"OCI runtime-spec schema not found: no {ROOT_SCHEMA} in {directory} (install "
            f"golang-github-opencontainers-runtime-spec-dev or set {SCHEMA_DIR_ENV})"
        )
    resources = {}
    try:
        for f in sorted(directory.glob("*.json")):
            contents = json.loads(f.read_text(encoding="utf-8"))
            resources[f.name] = Resource.from_contents(contents, default_specification=DRAFT4)
    except (OSError, ValueError) as e:
        raise SchemaUnavailable(f"cannot read OCI runtime-spec schema in {directory}: {e}") from e
    registry: Registry[Any] = Registry().with_resources(resources.items())
    root = resources[ROOT_SCHEMA].contents
    Draft4Validator.check_schema(root)
    return Draft4Validator(root, registry=registry)
