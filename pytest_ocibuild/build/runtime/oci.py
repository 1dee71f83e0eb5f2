"""OciRuntime: an OCI runtime CLI (runc's commands: run, kill, delete) with a private state dir.

The runc, crun and runsc backends are this with their own flags. The container runs
detached under the reaper (docs/reaper.md) and its init's pid comes from the state dir
(runc's ``state.json``) or a ``--pid-file``; a runtime that cannot detach (``detach =
False``) is run in the foreground and its own exit status is the build's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.runtime.reaped import ReapedRuntime
from pytest_ocibuild.errors import BundleError, RuntimeUnavailable

USERNS_LIMIT = "/proc/sys/user/max_user_namespaces"
# Messages of the runtime's own (not the build's) failures that mean "cannot run containers
# here".
_UNAVAILABLE_MARKERS = (
    "operation not permitted", "permission denied", "newuidmap", "newgidmap",
    "user namespaces", "unshare",
)


def default_state_dir(name: str) -> Path:
    """The per-user ``<user dir>/<name>`` (locations), shared by all processes of one user
    (the runtime locks per container); container ids are unique (``ocibuild-<pid>-...``)
    and ``purge`` finds every earlier run's containers there."""
    from pytest_ocibuild.build.locations import runtime_state_dir

    return runtime_state_dir(name)


class OciRuntime(ReapedRuntime):
    """The ``binary`` CLI with ``--root STATE_DIR``."""

    name = "oci"
    install_hint = "apt-get install runc"
    detach = True  # `run --detach`, the init reparented to the reaper
    # its message for a build command it cannot exec: the build's failure (code 127)
    exec_failures: tuple[str, ...] = ("unable to start container process: exec:",)

    def __init__(self, binary: str | None = None, *, state_dir: Path | None = None) -> None:
        super().__init__()
        self.binary = binary or self.name
        self.state_dir = Path(state_dir) if state_dir is not None \
            else default_state_dir(self.name)
        self._usable: str | None = None  # the binary's path once a check passed
        self._which: tuple[str | None, str] | None = None  # (PATH, path) of the last lookup
        self._state_json = False  # runc's state.json has the init's pid

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.binary!r}, state_dir={str(self.state_dir)!r})"

    # -- what a backend may change -------------------------------------------------------

    def global_args(self) -> list[str]:
        """Flags before the command, after ``--root``."""
        return []

    def wrap(self, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` (the runtime's command)."""
        return argv

    def check_version(self, version: str) -> str | None:
        """None if ``--version``'s output names a usable runtime, else why not."""
        return None

    # -- ReapedRuntime -------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        """None if the runtime is usable; otherwise one line naming what is missing.

        A passing check is remembered (per binary path), so builds do not pay for it again.
        """
        path = self._path()
        if path is not None and path == self._usable:
            return None
        if path is None:
            return _with_doctor(f"OCI runtime {self.binary!r} not found on PATH (install it: "
                                f"{self.install_hint})")
        try:
            out = subprocess.run([path, "--version"], capture_output=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"OCI runtime {path} does not run: {e}"
        if out.returncode != 0:
            return f"OCI runtime {path} --version failed: {_first_line(out.stderr)}"
        if (why := self.check_version(out.stdout.decode(errors="replace"))) is not None:
            return why
        # runc itself keeps <root>/<id>/state.json (see reaper); other runtimes get --pid-file
        self._state_json = out.stdout.startswith(b"runc version")
        if _read_int(USERNS_LIMIT) == 0:
            return f"user namespaces are disabled ({USERNS_LIMIT} is 0)"
        try:
            self._ensure_state_dir()
        except RuntimeUnavailable as e:
            return e.message
        self._usable = path
        return None

    def _prepare(self, bundle: Path, container_id: str) -> dict[str, Any]:
        state = self._ensure_state_dir()
        if (state / container_id).exists():
            # Never run (and then delete) over someone else's container.
            raise BundleError(f"container id {container_id!r} is already in use in {state}")
        root = [self._path() or self.binary, "--root", str(state), *self.global_args()]
        pid_file = None if self._state_json or not self.detach \
            else state / f"{container_id}.pid"
        run = ["run", "--detach"] if self.detach else ["run"]
        # fd 3 of the runtime: the reaper's memory file for its log (see reaper)
        return {
            "argv": self.wrap([*root, "--log", "/proc/self/fd/3", "--log-format", "json",
                               *run, *([] if pid_file is None else ["--pid-file", str(pid_file)]),
                               "--bundle", str(bundle), container_id]),
            "env": dict(os.environ),
            "state": str(state / container_id),
            "pid_file": None if pid_file is None else str(pid_file),
            "foreground": not self.detach,
            "delete": self.wrap([*root, "delete", "--force", container_id]),
            "bundle": str(bundle),
        }

    def _kill(self, container_id: str) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self._cli("kill", container_id, "KILL")

    def _done(self, container_id: str) -> None:
        (self.state_dir / f"{container_id}.pid").unlink(missing_ok=True)

    def _delete(self, container_id: str) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self._cli("delete", "--force", container_id)

    def _check_error(self, runtime_log: str, code: int) -> int:
        """Turn the runtime's own failure (if that is what ``code`` is) into an exception or
        127 (the build's command cannot be executed)."""
        errors = _log_errors(runtime_log)
        if not errors:
            return code
        msg = errors[-1]  # the runtime also printed it to stderr, i.e. into the build log
        if any(m in msg for m in self.exec_failures):
            return 127
        if any(m in msg.lower() for m in _UNAVAILABLE_MARKERS):
            raise RuntimeUnavailable(_with_doctor(
                f"{self.name} cannot create the container: {msg}"))
        raise BundleError(f"{self.name} rejected the bundle: {msg}")

    # -- Purgeable -----------------------------------------------------------------------

    def purge(self, prefix: str) -> list[str]:
        """Kill and delete every container in the state dir whose id starts with ``prefix``.

        One that disappears meanwhile (deleted by its own reaper) counts as gone; a state
        directory the runtime cannot delete because it never got a ``state.json`` is removed.
        """
        gone = []
        for cid in self.list():
            if cid.startswith(prefix):
                self._kill(cid)
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
            raise RuntimeUnavailable(f"cannot list {self.name} state dir {self.state_dir}: "
                                     f"{e.strerror}") from None
        return sorted(n for n in names if os.path.exists(self.state_dir / n / "state.json"))

    # -- helpers ---------------------------------------------------------------------------

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

    def _ensure_state_dir(self) -> Path:
        """The state dir, created if missing; this process's reaper is started too."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise RuntimeUnavailable(f"cannot create {self.name} state dir {self.state_dir}: "
                                     f"{e}") from e
        self._start_reaper()
        return self.state_dir

    def _cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.wrap([self._path() or self.binary, "--root", str(self.state_dir),
                       *self.global_args(), *args]),
            capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
        )


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


def _log_errors(runtime_log: str) -> list[str]:
    """Messages of error/fatal entries in the runtime's JSON log (runc's and crun's format)."""
    msgs = []
    for line in runtime_log.splitlines():
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
