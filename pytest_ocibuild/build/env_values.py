"""Environment values of a request: strings (or ``{base64: ...}``) only.

YAML reads an unquoted ``1.50`` as the number 1.5, ``yes`` as true and ``~`` as null, so a
value that is not a string would silently change; it is refused with a line naming the
variable and saying to quote it. For ``request_io.request_from_dict``:
``EnvVar(str(k), env_value(v, str(k)))`` in place of ``bytes_in(v, ...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_ocibuild.errors import InvalidRequest


def env_value(value: Any, key: str, *, field: str = "environment_vars") -> bytes:
    """The bytes of ``field.key``: a str (UTF-8) or ``{"base64": ...}``; anything else is
    an InvalidRequest naming the key and saying to quote the value."""
    from pytest_ocibuild.build.request_io import bytes_in

    if isinstance(value, str) or (isinstance(value, Mapping) and set(value) == {"base64"}):
        return bytes_in(value, f"{field}.{key}")
    if isinstance(value, bool | int | float) or value is None:
        kind = {bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        shown = "" if value is None else str(value).lower() if isinstance(value, bool) \
            else str(value)
        raise InvalidRequest(
            f"{field}.{key}: YAML read {kind} ({shown or '~'}), not a string: quote the "
            f"value as you mean it, e.g. {key}: \"{shown}\"")
    raise InvalidRequest(f"{field}.{key}: expected a string, got {type(value).__name__}")
