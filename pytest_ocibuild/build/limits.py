"""Resource limits of a build: processes, memory, disk, silence.

A request may set any of them (``limits:`` in its file); what it leaves unset comes from the
executor (CLI options, pytest ini keys), and what that leaves unset from ``DEFAULTS``. Limits
are not part of the request digest: they decide whether a build may finish, not what it
produces, and a build stopped by one is never recorded as a result.

How each is enforced (see ``spec.make_spec`` and ``collect.collect_outputs``):

- ``pids``: the cgroup pids controller (``linux.resources.pids``) as root; without cgroups
  (a normal user on cgroup v1) ``RLIMIT_NPROC``. Reason ``too-many-processes`` when a
  failed build had a fork refused by it.
- ``memory``: the cgroup memory controller, swap included; an OOM kill is reported as
  ``out-of-memory``. Default: ``DEFAULT_MEMORY``, or ``constraints.min_memory`` when larger.
  Not enforceable without cgroups (said by ``ocibuild doctor``).
- ``disk`` / ``entries``: bytes and entries the build leaves in its scratch paths, caches
  and ``/tmp`` together, counted after it ends (reason ``output-too-large``, before anything
  is ingested); ``RLIMIT_FSIZE`` stops any single file growing past ``disk`` while it runs.
- ``max_silent_time``: seconds without output on stdout or stderr before the build is killed
  (reason ``silent-timeout``), as Nix's ``max-silent-time``. Default: none.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from pytest_ocibuild.errors import InvalidRequest

if TYPE_CHECKING:
    from pytest_ocibuild.build.runtime import ExitStatus

GIB = 1 << 30
DEFAULT_PIDS = 4096
DEFAULT_MEMORY = 8 * GIB
DEFAULT_DISK = 10 * GIB
DEFAULT_ENTRIES = 1_000_000
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: Any, what: str, *, minimum: int = 1) -> int:
    """Bytes from an int or a string such as ``512M``, ``2G``, ``1.5GiB`` (binary units),
    at least ``minimum``."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{what}: {value!r} is not a size")
    if isinstance(value, int):
        number = value
    else:
        m = _SIZE.match(str(value))
        if m is None:
            raise InvalidRequest(f"{what}: {value!r} is not a size (e.g. 4096, 512M, 2G)")
        number = math.floor(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if number < minimum:
        raise InvalidRequest(f"{what}: {value!r} must be at least {minimum}" if minimum != 1
                             else f"{what}: {value!r} must be more than 0")
    return number


def parse_count(value: Any, what: str) -> int:
    """A positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequest(f"{what}: {value!r} must be a whole number more than 0")
    return value


def parse_seconds(value: Any, what: str) -> float:
    """A positive number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not math.isfinite(value):
        raise InvalidRequest(f"{what}: {value!r} must be a number of seconds more than 0")
    return float(value)


_PARSERS = {"pids": parse_count, "memory": parse_size, "disk": parse_size,
            "entries": parse_count, "max_silent_time": parse_seconds}


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Limits for one build; None: not set here (taken from the next level)."""

    pids: int | None = None
    memory: int | None = None  # bytes, swap included
    disk: int | None = None  # bytes left in scratch, caches and /tmp
    entries: int | None = None  # files, directories and symlinks left there
    max_silent_time: float | None = None  # seconds without output

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                object.__setattr__(self, f.name, _PARSERS[f.name](value, f"limits.{f.name}"))

    @classmethod
    def from_dict(cls, data: Any, what: str = "limits") -> Limits:
        """From the file format: a mapping of the fields above (sizes may carry units)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidRequest(f"{what}: expected a mapping")
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise InvalidRequest(f"{what}: unknown field(s): {', '.join(unknown)}")
        return cls(**{str(k): v for k, v in data.items() if v is not None})

    @classmethod
    def from_options(cls, options: Any) -> Limits:
        """From parsed command-line options (attributes ``limit_pids``, ``limit_memory``,
        ``limit_disk``, ``limit_entries``, ``max_silent_time``; missing ones: unset)."""
        return cls(**{name: value for name, value in (
            (f.name, getattr(options, "max_silent_time" if f.name == "max_silent_time"
                             else f"limit_{f.name}", None)) for f in fields(cls))
            if value is not None})

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    def over(self, base: Limits) -> Limits:
        """These limits, with what they leave unset taken from ``base``."""
        return replace(base, **self.to_dict())

    def resolved(self, min_memory: int = 0) -> Limits:
        """Every field set: unset ones get their default (memory: at least ``min_memory``)."""
        return Limits(
            pids=self.pids or DEFAULT_PIDS,
            memory=self.memory or max(DEFAULT_MEMORY, min_memory),
            disk=self.disk or DEFAULT_DISK,
            entries=self.entries or DEFAULT_ENTRIES,
            max_silent_time=self.max_silent_time,
        )


def describe_size(n: int) -> str:
    """``n`` bytes for a message: ``10 GiB``, ``512 MiB``, ``1.5 KiB``, ``7 bytes``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


def limit_failure(
    status: ExitStatus, timeout: float | None, limits: Limits
) -> tuple[str, str] | None:
    """``(message, reason)`` when the runtime stopped the build at a limit, else None."""
    if status.limit == "silent-timeout":
        return (f"build printed nothing for {limits.max_silent_time:g}s and was killed "
                "(limits.max_silent_time)", "silent-timeout")
    if status.timed_out:
        return f"build timed out after {timeout:g}s and was killed", "timeout"
    if status.limit == "out-of-memory" and limits.memory:
        return (f"build ran out of memory: it was killed at {describe_size(limits.memory)} "
                "(raise limits.memory if it needs more)", "out-of-memory")
    if status.limit == "too-many-processes" and status.code != 0 and limits.pids:
        return (f"builder failed with exit code {status.code} after reaching its limit of "
                f"{limits.pids} processes (limits.pids)", "too-many-processes")
    return None
