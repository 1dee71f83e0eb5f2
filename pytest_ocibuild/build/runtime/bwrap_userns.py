"""User namespaces a normal user's bwrap builds run in, one per id mapping (build slot).

Unprivileged bwrap runs the build as its caller's own uid. So that a normal user's builds
run as a subordinate id, as rootless runc's do (one per build slot, so that ``RLIMIT_NPROC``
and file ownership are the build's alone), the job first enters a user namespace with the
spec's mappings (container root = the caller, the build user = a subordinate id, written by
``newuidmap``/``newgidmap``), becomes the build user there (``setpriv``) and runs bwrap, which
nests its own user namespace in it:

    nsenter --user=/proc/<client>/fd/<n> -- [unshare --mount ... alias] setpriv ... -- bwrap

A namespace is made once per mapping and kept alive by an fd this process holds (the holder
process that made it exits at once); the reaper opens it through ``/proc/<pid>/fd``. Making
one costs three process spawns (about 5 ms); a build then pays only for ``nsenter``.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

from pytest_ocibuild.errors import RuntimeUnavailable

_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
Mappings = tuple[tuple[int, int, int], ...]


def spec_mappings(config: dict[str, Any], key: str) -> Mappings:
    """``linux.uidMappings`` / ``gidMappings`` as ``(container, host, size)`` triples."""
    return tuple((int(m["containerID"]), int(m["hostID"]), int(m["size"]))
                 for m in (config.get("linux") or {}).get(key) or ())


class UserNamespaces:
    """User namespaces by mapping, each held open by an fd of this process."""

    def __init__(self) -> None:
        self._fds: dict[tuple[int, Mappings, Mappings], int] = {}
        self._lock = threading.Lock()

    def path(self, config: dict[str, Any]) -> str:
        """A path that opens the user namespace with ``config``'s mappings (made on first use)."""
        uids, gids = spec_mappings(config, "uidMappings"), spec_mappings(config, "gidMappings")
        key = (os.getpid(), uids, gids)  # a forked child holds the fds but is another pid
        with self._lock:
            fd = self._fds.get(key)
            if fd is None:
                fd = self._fds[key] = make_userns(uids, gids)
        return f"/proc/{os.getpid()}/fd/{fd}"

    def close(self) -> None:
        """Let every namespace go (builds running in one keep it)."""
        with self._lock:
            fds = [fd for (pid, *_), fd in self._fds.items() if pid == os.getpid()]
            self._fds.clear()
        for fd in fds:
            os.close(fd)


def make_userns(uids: Mappings, gids: Mappings) -> int:
    """An fd (close-on-exec) of a new user namespace owned by the caller, with these maps."""
    try:
        holder = subprocess.Popen(["unshare", "--user", "--", "sh", "-c", "echo; exec cat"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=_ENV)
    except OSError as e:
        raise RuntimeUnavailable(f"bwrap: cannot run unshare: {e.strerror}") from None
    assert holder.stdin is not None and holder.stdout is not None
    try:
        if not holder.stdout.readline():  # unshare failed: its message is on stderr
            _, err = holder.communicate(timeout=30)
            raise RuntimeUnavailable(f"bwrap: cannot make a user namespace: "
                                     f"{_last_line(err)}")
        for tool, maps in (("newuidmap", uids), ("newgidmap", gids)):
            args = [str(n) for triple in maps for n in triple]
            try:
                done = subprocess.run([tool, str(holder.pid), *args], capture_output=True,
                                      timeout=30, stdin=subprocess.DEVNULL, env=_ENV)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise RuntimeUnavailable(f"bwrap: cannot run {tool} (apt-get install "
                                         f"uidmap): {e}") from None
            if done.returncode != 0:
                raise RuntimeUnavailable(f"bwrap: {tool} {' '.join(args)} failed: "
                                         f"{_last_line(done.stderr)} (see ocibuild doctor)")
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        holder.stdout.close()
        if holder.stderr is not None:
            holder.stderr.close()


def _last_line(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text.splitlines()[-1] if text else "(no output)"
