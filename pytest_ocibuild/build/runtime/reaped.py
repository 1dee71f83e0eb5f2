"""ReapedRuntime: what every backend shares: it runs its command under the reaper helper.

The reaper (docs/reaper.md) starts the runtime's command, pumps the build's output into the
log, reports the exit status and deletes the container, and kills and deletes it should this
process die. A backend says which command to run (``_job``), how to stop a container
(``_kill``) and how to tell its own failures from the build's (``_check_error``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.logs import runs_path
from pytest_ocibuild.build.reaper_client import Job, ReaperGone, shared_reaper
from pytest_ocibuild.build.runtime.base import ExitStatus, OnOutput
from pytest_ocibuild.errors import RuntimeUnavailable

KILL_GRACE = 10.0  # seconds to wait for the container to exit after asking it to
DELETE_WAIT = 60.0  # seconds to wait for the reaper's delete
# The build's personality: ADDR_NO_RANDOMIZE (no ASLR, for determinism), as Nix sets it. The
# OCI spec's linux.personality has no flags and runc 1.1.5 ignores it, so the reaper helper
# sets it on itself and the runtime passes it on.
PERSONALITY = 0x0040000


class _Silent(Exception):
    """The build printed nothing for ``max_silent`` seconds."""


class ReapedRuntime:
    """Base of the backends: ``run`` through the reaper, ``deferring_deletes``."""

    name = "?"

    def __init__(self) -> None:
        self._local = threading.local()  # .pending: deletions deferred (deferring_deletes)

    # -- what a backend provides ---------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        raise NotImplementedError

    def _prepare(self, bundle: Path, container_id: str) -> dict[str, Any]:
        """The reaper job for this build (see docs/reaper.md); raises BundleError if the
        bundle cannot be run."""
        raise NotImplementedError

    def _kill(self, container_id: str) -> None:
        """Ask the container to die (SIGKILL); it may not have started yet."""

    def _check_error(self, runtime_log: str, code: int) -> int:
        """``code``, or 127 if the command could not be executed; raises RuntimeUnavailable or
        BundleError if the runtime itself failed (``runtime_log``: what it logged)."""
        return code

    def _done(self, container_id: str) -> None:
        """After the run, however it ended (remove what ``_prepare`` made)."""

    def _delete(self, container_id: str) -> None:
        """Delete the container here: the reaper could not."""

    # -- shared --------------------------------------------------------------------------

    def run(
        self, bundle: Path, container_id: str, *, log: Path, timeout: float | None,
        max_silent: float | None = None, on_output: OnOutput | None = None,
    ) -> ExitStatus:
        """Run the job under the reaper; output appended to ``log``; the container is always
        deleted (or, inside ``deferring_deletes``, by the time that block ends).

        A build's non-zero exit (or a command that cannot be executed: code 127) is an
        ExitStatus; the runtime failing to create the container raises RuntimeUnavailable
        (kernel/permission problems) or BundleError (anything else, e.g. a bad mount).
        """
        reason = self.unavailable_reason()  # remembered once it passed
        if reason:
            raise RuntimeUnavailable(reason)
        job_spec = self._prepare(bundle, container_id)
        if on_output is not None:
            job_spec["stream"] = True  # each chunk to on_output too (reaper_io)
        job: Job | None = None
        exited = False  # the container is gone: what is left is deleting it
        start = time.monotonic()
        try:
            job = self._submit(job_spec, log, on_output)
            timed_out = False
            limit: str | None = None
            runtime_log, hit = "", ()
            try:
                code, runtime_log, hit = _wait(job, start, timeout, max_silent, log)
            except TimeoutError:
                timed_out = True
                code = self._stop(job, container_id)
            except _Silent:
                limit = "silent-timeout"
                code = self._stop(job, container_id)
            except BaseException:
                self._stop(job, container_id)
                raise
            exited = True
            duration = time.monotonic() - start
            if code != 0 and not timed_out:
                code = self._check_error(runtime_log, code)
            pending = getattr(self._local, "pending", None)
            if pending is not None:
                pending.append((job, container_id))
                job = None  # deleted when the deferring block ends
            if limit is None and code != 0:
                limit = "out-of-memory" if "memory" in hit else \
                    "too-many-processes" if "pids" in hit else None
            return ExitStatus(code=code, timed_out=timed_out, duration=duration, limit=limit)
        finally:
            self._done(container_id)
            if job is not None:
                self._finish(job, container_id, wait=exited)

    @contextlib.contextmanager
    def deferring_deletes(self) -> Iterator[None]:
        """Within the block, ``run`` (in this thread) returns as soon as the container has
        exited and its output is complete, while the reaper deletes it; leaving the block
        (however) waits until all of them are deleted. Callers overlap their own work with
        the deletion this way, and still never leave a container behind."""
        outer = getattr(self._local, "pending", None)
        pending: list[tuple[Job, str]] = []
        self._local.pending = pending
        try:
            yield
        finally:
            self._local.pending = outer
            with contextlib.ExitStack() as finish:  # every one, even if one is interrupted
                for job, container_id in pending:
                    finish.callback(self._finish, job, container_id, wait=True)

    def _start_reaper(self) -> None:
        """Start this process's reaper, so that whatever this process begins (bundles,
        mounts, containers) is cleaned up by it should this process die (see reaper)."""
        with contextlib.suppress(ReaperGone):  # run() reports it if it persists
            shared_reaper(PERSONALITY)

    def _submit(self, job_spec: dict[str, Any], log: Path,
                on_output: OnOutput | None = None) -> Job:
        """Hand the job to this process's reaper (restarted once if it died meanwhile)."""
        fds: list[int] = []
        try:
            for f in (log, runs_path(log), runs_path(log)):  # the log, its runs (build.logs)
                fds.append(os.open(f, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o644))
            for attempt in (1, 2):
                try:
                    return shared_reaper(PERSONALITY).submit(job_spec, fds, on_output)
                except ReaperGone as e:
                    if attempt == 2:
                        raise RuntimeUnavailable(f"cannot run {self.name}: {e}") from None
            raise AssertionError("unreachable")
        finally:
            for fd in fds:
                os.close(fd)

    def _stop(self, job: Job, container_id: str) -> int:
        """SIGKILL the container (retrying while it is still being created); its exit code.

        Past ``KILL_GRACE`` the reaper kills the runtime and the container's init itself.
        """
        deadline = time.monotonic() + KILL_GRACE
        try:
            while time.monotonic() < deadline:
                self._kill(container_id)
                try:
                    return job.wait_exit(0.5)[0]
                except TimeoutError:
                    continue
            job.kill()
            return job.wait_exit(KILL_GRACE)[0]
        except (TimeoutError, ReaperGone):
            job.close()  # the reaper still kills, reaps and deletes it if it can
            return 128 + signal.SIGKILL

    def _finish(self, job: Job, container_id: str, *, wait: bool) -> None:
        """Wait (if ``wait``: the container has exited) for the reaper to delete it; delete it
        here if the reaper could not."""
        deleted = False
        try:
            if wait:
                deleted = job.wait_deleted(DELETE_WAIT)
            else:
                job.kill()
        except (TimeoutError, ReaperGone):
            pass
        finally:
            job.close()
            if not deleted:
                self._delete(container_id)


def _wait(
    job: Job, start: float, timeout: float | None, max_silent: float | None, log: Path
) -> tuple[int, str, tuple[str, ...]]:
    """``job.wait_exit`` within ``timeout`` (TimeoutError), watching ``log`` grow: _Silent
    once it has not for ``max_silent`` seconds (checked every quarter of it, at most 1 s)."""
    if max_silent is None:
        return job.wait_exit(timeout)
    deadline = None if timeout is None else start + timeout
    step = min(max(max_silent / 4, 0.05), 1.0)
    size, since = -1, time.monotonic()
    while True:
        now = time.monotonic()
        with contextlib.suppress(OSError):
            if (grown := os.stat(log).st_size) != size:
                size, since = grown, now
        if now - since >= max_silent:
            raise _Silent
        wait = min(step, since + max_silent - now)
        if deadline is not None:
            if deadline <= now:
                raise TimeoutError
            wait = min(wait, deadline - now)
        try:
            return job.wait_exit(wait)
        except TimeoutError:
            continue
