"""Error hierarchy: every expected failure is an OcibuildError with a stable reason code.

Users read ``str(err)`` (one line naming the file/path and the problem); tests assert on
``err.reason`` (kebab-case). Anything that is not an OcibuildError is a bug.
"""

from __future__ import annotations


class OcibuildError(Exception):
    """Base class: a one-line message plus a machine-readable ``reason``."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.detail = detail  # optional multi-line context (e.g. a log tail)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class StoreError(OcibuildError):
    """The content-addressed store refused or failed an operation (corruption, bad object)."""

    reason = "store"


class NotFound(StoreError):
    """An object that must exist is missing from the store."""

    reason = "not-found"


class InvalidRequest(OcibuildError):
    """A BuildRequest (or the file it came from) is malformed."""

    reason = "invalid-request"


class BundleError(OcibuildError):
    """The OCI bundle could not be prepared."""

    reason = "bundle"


class RuntimeUnavailable(OcibuildError):
    """The OCI runtime (runc) or the kernel features it needs are not available."""

    reason = "runtime-unavailable"


# The stable ``reason`` of each way a build can fail (BuildFailed.reason).
BUILD_FAILURE_REASONS: tuple[str, ...] = (
    "exit-code",  # the builder exited non-zero (or was killed by a signal: 128+N)
    "missing-output",  # an output path does not exist after the build
    "timeout",  # the wall-clock timeout killed it
    "silent-timeout",  # limits.max_silent_time without output killed it
    "out-of-memory",  # the kernel killed a process at limits.memory
    "too-many-processes",  # it failed after a fork was refused at limits.pids
    "output-too-large",  # it left more than limits.disk bytes / limits.entries entries
    "output-rejected",  # an output holds a fifo, socket or device (or a cache a special bit)
    "output-path-escapes",  # an output path goes through a symlink the build made
    "suspicious-output",  # an output root is writable by group or others (Nix refuses it)
)


class BuildFailed(OcibuildError):
    """A build ran but failed; ``reason`` is one of BUILD_FAILURE_REASONS.

    ``detail`` holds the log tail.
    """

    reason = "build-failed"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        detail: str = "",
        exit_code: int | None = None,
        log_path: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason, detail=detail)
        self.exit_code = exit_code
        self.log_path = log_path
        self.path = path  # the container path a failure is about (relative), if any


class NixError(OcibuildError):
    """A Nix file, derivation or store path is malformed or cannot be handled."""

    reason = "nix"


class CaseError(OcibuildError):
    """A YAML build case is malformed (message cites file:line)."""

    reason = "bad-case"
