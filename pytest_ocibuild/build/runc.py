"""RuncRuntime: runs a bundle with ``runc run`` and always cleans the container up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pytest_ocibuild.build.logs import runs_path
from pytest_ocibuild.build.reaper_client import Job, ReaperGone, shared_reaper
from pytest_ocibuild.build.runtime import ExitStatus
from pytest_ocibuild.errors import BundleError, RuntimeUnavailable

INSTALL_HINT = "apt-get install runc"
USERNS_LIMIT = "/proc/sys/user/max_user_namespaces"
KILL_GRACE = 10.0  # seconds to wait for runc to exit after `runc kill`
DELETE_WAIT = 60.0  # seconds to wait for the reaper's `runc delete`
# The build's personality: ADDR_NO_RANDOMIZE (no ASLR, for determinism), as Nix sets it. The
# OCI spec's linux.personality has no flags and runc 1.1.5 ignores it, so the reaper helper
# sets it on itself and runc passes it on.
PERSONALITY = 0x0040000
# Messages of runc's own (not the build's) failures that mean "cannot run containers here".
_UNAVAILABLE_MARKERS = (
    "operation not permitted", "permission denied", "newuidmap", "newgidmap",
    "user namespaces", "unshare",
)
# runc reports a build command it cannot exec as its own error; that is the build's failure.
_EXEC_FAILURE = "unable to start container process: exec:"


def default_state_dir() -> Path:
    """The per-user ``locations.runtime_state_dir()``, shared by all processes of one user
    (runc locks per container); container ids are unique (``ocibuild-<pid>-...``) and
    ``purge`` finds every earlier run's containers there."""
    from pytest_ocibuild.build.locations import runtime_state_dir

    return runtime_state_dir()


class RuncRuntime:
    """The ``runc`` CLI with a private ``--root`` state directory."""

    name = "runc"

    def __init__(self, binary: str = "runc", *, state_dir: Path | None = None) -> None:
        self.binary = binary
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self._usable: str | None = None  # the runc path once a check passed
        self._which: tuple[str | None, str] | None = None  # (PATH, path) of the last lookup
        self._runc_state = False  # the binary is runc (state.json has the init's pid)
        self._local = threading.local()  # .pending: deletions deferred (deferring_deletes)

    def __repr__(self) -> str:
        return f"RuncRuntime({self.binary!r}, state_dir={str(self.state_dir)!r})"

    def _path(self) -> str | None:
        """``binary`` looked up on PATH (the last hit is reused while PATH is the same and
        the file is still executable: a PATH search costs a stat per directory)."""
        search = os.environ.get("PATH")
        if self._which is not None and self._which[0] == search \
                and os.access(self._which[1], os.X_OK):
            return self._which[1]
        path = shutil.which(self.binary)
        self._which = (search, path) if path is not None else None
        return path

    def unavailable_reason(self) -> str | None:
        """None if runc is usable; otherwise one line naming what is missing.

        A passing check is remembered (per runc path), so builds do not pay for it again.
        """
        path = self._path()
        if path is not None and path == self._usable:
            return None
        if path is None:
            return _with_doctor(f"OCI runtime {self.binary!r} not found on PATH (install it: "
                                f"{INSTALL_HINT})")
        try:
            out = subprocess.run([path, "--version"], capture_output=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"OCI runtime {path} does not run: {e}"
        if out.returncode != 0:
            return f"OCI runtime {path} --version failed: {_first_line(out.stderr)}"
        # runc itself keeps <root>/<id>/state.json (see reaper); other runtimes get --pid-file
        self._runc_state = out.stdout.startswith(b"runc version")
        if _read_int(USERNS_LIMIT) == 0:
            return f"user namespaces are disabled ({USERNS_LIMIT} is 0)"
        try:
            self._ensure_state_dir()
        except RuntimeUnavailable as e:
            return e.message
        self._usable = path
        return None

    def run(
        self, bundle: Path, container_id: str, *, log: Path, timeout: float | None,
        max_silent: float | None = None,
    ) -> ExitStatus:
        """``runc run`` the bundle; output appended to ``log``; the container is always deleted.

        The container runs detached under this process's reaper helper (see ``reaper``), so
        the build's stdin is /dev/null itself, not a pipe pumped by runc. Its stdout and stderr
        are two pipes the reaper drains: each chunk goes to ``log`` (both streams, in the
        order read), and its stream and length to ``<log>.runs`` (see build.logs). The reaper
        reports the exit status of the container's init, then deletes the container; this
        returns once it is deleted, or at once inside ``deferring_deletes``.

        A build's non-zero exit (or a command runc cannot exec: code 127) is an ExitStatus;
        runc failing to create the container raises RuntimeUnavailable (kernel/permission
        problems) or BundleError (anything else, e.g. a bad mount), with runc's message.
        """
        path = self._path()
        if path is None or path != self._usable:
            reason = self.unavailable_reason()  # once per runc path
            if reason:
                raise RuntimeUnavailable(reason)
            path = self._path() or self.binary
        state = self._ensure_state_dir()
        if (state / container_id).exists():
            # Never run (and then delete) over someone else's container.
            raise BundleError(f"container id {container_id!r} is already in use in {state}")
        root = [path, "--root", str(state)]
        pid_file = None if self._runc_state else state / f"{container_id}.pid"
        job_spec = {  # fd 3 of runc: the reaper's memory file for runc's log (see reaper)
            "argv": [*root, "--log", "/proc/self/fd/3", "--log-format", "json", "run",
                     "--detach", *([] if pid_file is None else ["--pid-file", str(pid_file)]),
                     "--bundle", str(bundle), container_id],
            "env": dict(os.environ),
            "state": str(state / container_id),
            "pid_file": None if pid_file is None else str(pid_file),
            "delete": [*root, "delete", "--force", container_id],
        }
        job: Job | None = None
        exited = False  # the container is gone: what is left is deleting it
        start = time.monotonic()
        try:
            job = self._submit(job_spec, log)
            timed_out = False
            runc_log = ""
            limit: str | None = None
            hit: tuple[str, ...] = ()
            try:
                code, runc_log, hit = _wait(job, start, timeout, max_silent, log)
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
                code = self._check_runc_error(runc_log, code)
            pending = getattr(self._local, "pending", None)
            if pending is not None:
                pending.append((job, container_id))
                job = None  # deleted when the deferring block ends
            if limit is None and code != 0:
                limit = "out-of-memory" if "memory" in hit else \
                    "too-many-processes" if "pids" in hit else None
            return ExitStatus(code=code, timed_out=timed_out, duration=duration, limit=limit)
        finally:
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
            if job is not None:
                self._finish(job, container_id, wait=exited)

    @contextlib.contextmanager
    def deferring_deletes(self) -> Iterator[None]:
        """Within the block, ``run`` (in this thread) returns as soon as the container has
        exited and its output is complete, while the reaper deletes it; leaving the block
        (however) waits until all of them are deleted. Callers overlap their own work with
        ``runc delete`` this way, and still never leave a container behind."""
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

    def purge(self, prefix: str) -> list[str]:
        """Kill and delete every container in the state dir whose id starts with ``prefix``.

        One that disappears meanwhile (deleted by its own reaper) counts as gone; a state
        directory runc cannot delete because it never got a ``state.json`` is removed.
        """
        gone = []
        for cid in self.list():
            if cid.startswith(prefix):
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    self._runc("kill", cid, "KILL")
                self._delete(cid)
                left = self.state_dir / cid
                if left.is_dir() and not (left / "state.json").exists():
                    shutil.rmtree(left, ignore_errors=True)
                gone.append(cid)
        return gone

    def list(self) -> list[str]:
        """Ids of the containers in this state dir: its subdirectories holding ``state.json``.

        Read here rather than by ``runc list``, which fails (ENOENT) when another process
        deletes a container while it lists them.
        """
        try:
            with os.scandir(self.state_dir) as it:
                names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise RuntimeUnavailable(f"cannot list runc state dir {self.state_dir}: "
                                     f"{e.strerror}") from None
        return sorted(n for n in names if os.path.exists(self.state_dir / n / "state.json"))

    # -- helpers ---------------------------------------------------------------------------

    def _ensure_state_dir(self) -> Path:
        """The state dir, created if missing; this process's reaper is started too, so that
        whatever this process begins (bundles, mounts, containers) is cleaned up by it
        should this process die (see reaper)."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise RuntimeUnavailable(f"cannot create runc state dir {self.state_dir}: {e}") from e
        with contextlib.suppress(ReaperGone):  # run() reports it if it persists
            shared_reaper(PERSONALITY)
        return self.state_dir

    def _runc(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self._path() or self.binary, "--root", str(self.state_dir), *args],
            capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
        )

    def _submit(self, job_spec: dict, log: Path) -> Job:
        """Hand the job to this process's reaper (restarted once if it died meanwhile)."""
        fds: list[int] = []
        try:
            for f in (log, runs_path(log), runs_path(log)):  # the log, its runs (build.logs)
                fds.append(os.open(f, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o644))
            for attempt in (1, 2):
                try:
                    return shared_reaper(PERSONALITY).submit(job_spec, fds)
                except ReaperGone as e:
                    if attempt == 2:
                        raise RuntimeUnavailable(f"cannot run {self.binary}: {e}") from None
            raise AssertionError("unreachable")
        finally:
            for fd in fds:
                os.close(fd)

    def _stop(self, job: Job, container_id: str) -> int:
        """SIGKILL the container (retrying while runc is still creating it); its exit code.

        Past ``KILL_GRACE`` the reaper kills runc and the container's init itself.
        """
        deadline = time.monotonic() + KILL_GRACE
        try:
            while time.monotonic() < deadline:
                self._runc("kill", container_id, "KILL")
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

    def _delete(self, container_id: str) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self._runc("delete", "--force", container_id)

    def _check_runc_error(self, runc_log: str, code: int) -> int:
        """Turn runc's own failure (if that is what ``code`` is) into an exception or 127."""
        errors = _runc_errors(runc_log)
        if not errors:
            return code
        msg = errors[-1]  # runc also printed it to stderr, i.e. into the build log
        if _EXEC_FAILURE in msg:
            return 127
        if any(m in msg.lower() for m in _UNAVAILABLE_MARKERS):
            raise RuntimeUnavailable(_with_doctor(f"runc cannot create the container: {msg}"))
        raise BundleError(f"runc rejected the bundle: {msg}")


def _with_doctor(reason: str) -> str:
    """``reason``, and what ``ocibuild doctor``'s first failing check says (and its fix)."""
    try:
        from pytest_ocibuild.build.doctor import first_failure

        check = first_failure()
    except Exception:  # the reason stands on its own
        check = None
    if check is None:
        return reason
    fix = f" (fix: {check.fix})" if check.fix else ""
    return f"{reason}; ocibuild doctor: {check.name}: {check.detail}{fix}"


class _Silent(Exception):
    """The build printed nothing for ``max_silent`` seconds."""


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


def _runc_errors(runc_log: str) -> list[str]:
    """Messages of error/fatal entries in runc's JSON log."""
    msgs = []
    for line in runc_log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            msgs.append(" ".join(str(entry.get("msg", "")).split()))
    return msgs


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _first_line(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text.splitlines()[0] if text else "(no output)"
