"""The reaper: one long-lived helper process that runs ``runc run --detach`` for every build.

Executed as a script (``python -I -S reaper.py CONTROL_FD PERSONALITY``; stdlib only) by
``reaper_client``, once per client process. ``runc run`` without a terminal pumps the build's
stdio through pipes of its own; detached, runc hands the container the fds 0-2 we give it as
they are, but then exits while the container runs. This process therefore is a child subreaper
(``PR_SET_CHILD_SUBREAPER``): when runc exits, the orphaned container init is reparented here
and ``waitpid`` gives its exit code or signal. Being long-lived, it saves every build an
interpreter start.

Protocol: ``CONTROL_FD`` is an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket. Each message on it is one
job: JSON ``{"argv": [runc, "--root", R, "--log", "/proc/self/fd/3", ..., "run", "--detach",
..., ID], "env": {...}, "state": R/ID, "delete": [runc, ..., "delete", "--force", ID]}`` (runc
runs with the client's environment of the moment) with four fds
(SCM_RIGHTS): the job's own channel (a SEQPACKET socket), the combined log, the stdout file and
the stderr file (all appended to). runc's fd 3 is an anonymous memory file of the reaper's (no
file to create and remove, and runc's ``O_SYNC`` costs nothing there); what runc logs to it
comes back in the first answer. The container's init pid is read from runc's
``R/ID/state.json`` (``init_process_pid``, what ``runc state`` reports) rather than written by
runc to a ``--pid-file`` (created ``O_SYNC``: a journal commit per build); only a runtime that
is not runc is given ``--pid-file P`` and the job ``"pid_file": P``.

On the channel the client may send ``kill`` (SIGKILL runc and the container's init). The
reaper answers twice: ``{"code": N, "runc_log": TEXT}`` once the container's init is reaped and
both output pipes are at EOF (the log is complete), then ``{"deleted": bool}`` once the
container is deleted. A job whose client is gone (its channel closed, e.g. the client was
killed) goes on as it would have, and is reaped and deleted when it ends; a ``purge`` (see
lifecycle) may kill it before that. EOF on ``CONTROL_FD`` (the client process is gone or
exiting) makes the reaper exit once it has no job left.

Deleting: once we have reaped the init of a container with its own PID namespace, the
container is stopped and every process of it is gone; ``runc delete`` would then only remove
its cgroups and its state directory ``R/ID`` (it runs poststop hooks and removes Intel RDT groups
too, which our containers have none of). The reaper does that itself, saving a runc process
per build, when ``R/ID/state.json`` says there is nothing else to do; otherwise (and whenever
runc did not start the container, or a step fails) it runs ``delete``. Either happens after
the exit answer, so the client's own work (ingesting outputs) overlaps the deletion (removing
ten cgroup v1 directories took several milliseconds here).

Output: the build's stdin is /dev/null itself. Its stdout and stderr are one pipe each; every
chunk, as read, goes both to the combined log (in the order the chunks were read) and to the
stdout or stderr file. The pipes reach EOF when every holder of their write ends is gone: the
container's processes (all killed with its init, also on timeout) and runc (whose own errors
thus land in the log too). Chunks written to the two streams within the same instant may
appear in the combined log in either order.

Exit code: runc's own when ``runc run --detach`` fails (the caller reads runc's log to tell
why); otherwise the container's code, 128+N if signal N killed it (as ``runc run`` reports).
``PERSONALITY`` (hex, 0: leave alone) is or-ed into this process's personality at start;
runc 1.1.5 does not reset it, so builds inherit it (``ADDR_NO_RANDOMIZE``, as Nix sets).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import json
import os
import selectors
import signal
import socket
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
_READ = selectors.EVENT_READ
_FDS_PER_JOB = 4
RUNC_LOG_MAX = 32768  # bytes of runc's own log passed back (an answer is one datagram)


def _status(st: int) -> int:
    if os.WIFSIGNALED(st):
        return 128 + os.WTERMSIG(st)
    return os.WEXITSTATUS(st) if os.WIFEXITED(st) else 255


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_stopped(state_dir: str, state: dict) -> bool:
    """Delete a stopped container as ``runc delete`` would: its cgroups, then ``state_dir``.

    ``state``: its ``state.json``. False (leaving whatever is left to ``runc delete``) unless
    that names no hooks, no Intel RDT group and no systemd-managed cgroup, and every step
    works.
    """
    try:
        config = state["config"]
        if any((config.get("Hooks") or {}).values()) or state.get("intel_rdt_path") or \
                (config.get("cgroups") or {}).get("Systemd"):
            return False
        cgroups = set((state.get("cgroup_paths") or {}).values())
        for path in sorted(cgroups, key=len, reverse=True):  # children first
            _remove_cgroup(path)
        with os.scandir(state_dir) as it:
            names = [e.name for e in it]
        for name in names:  # state.json (and exec.fifo if runc left it)
            os.unlink(os.path.join(state_dir, name))
        os.rmdir(state_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _remove_cgroup(path: str) -> None:
    """rmdir a cgroup whose processes are gone (the kernel may need a moment to notice)."""
    if not path.startswith("/sys/fs/cgroup/"):
        raise ValueError(f"not a cgroup: {path}")
    for delay in (0.0, 0.001, 0.005, 0.02, 0.05):
        time.sleep(delay)
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
    os.rmdir(path)


class Job:
    """One build: runc, then the container's init, the output pipes, then ``runc delete``."""

    def __init__(self, reaper: Reaper, spec: dict, fds: list[int]) -> None:
        self.reaper = reaper
        self.chan = socket.socket(fileno=fds[0])
        self.log, out, err = fds[1:]
        self.state_dir: str = spec["state"]
        self.delete_argv: list[str] = spec["delete"]
        self.env: dict[str, str] = spec["env"]
        self.pid_file: str | None = spec.get("pid_file")
        self.state: dict | None = None  # runc's state.json, once read
        self.sinks: dict[int, int] = {}
        self.init: int | None = None
        self.code: int | None = None
        self.deleter: int | None = None
        self.deleted: bool | None = None
        self.abandoned = False
        self.exit_sent = False
        self.stopped = False  # the init is reaped: the container may be removed by hand
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.sinks = {out_r: out, err_r: err}
        self.runc_log = os.memfd_create("runc-log")
        try:
            self.runc: int | None = os.posix_spawn(spec["argv"][0], spec["argv"], spec["env"],
                                                   file_actions=[
                (os.POSIX_SPAWN_DUP2, reaper.devnull, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2), (os.POSIX_SPAWN_DUP2, self.runc_log, 3)])
        except OSError as e:
            self.runc = None
            self._say(f"ocibuild: cannot execute {spec['argv'][0]}: {e.strerror}\n")
            self.code = 127
        finally:
            os.close(out_w)
            os.close(err_w)
        if self.runc is not None:
            reaper.reaped.pop(self.runc, None)  # an old status of a reused pid
        for r in self.sinks:
            reaper.sel.register(r, _READ, (self._pump, r))
        reaper.sel.register(self.chan, _READ, (self._message, None))

    def _say(self, text: str) -> None:
        _write_all(self.log, text.encode())

    def _pump(self, r: int) -> None:
        data = os.read(r, 65536)
        if not data:
            self.reaper.sel.unregister(r)
            os.close(r)
            os.close(self.sinks.pop(r))
            return
        _write_all(self.log, data)
        _write_all(self.sinks[r], data)

    def _message(self, _: None) -> None:
        try:
            data = self.chan.recv(64)
        except OSError:
            data = b""
        if not data:  # the client is gone: nobody to answer (the job goes on)
            self.reaper.sel.unregister(self.chan)
            self.abandoned = True
        elif data == b"kill":
            self.kill()

    def kill(self) -> None:
        """SIGKILL runc (while running) and the container's init (once known, until reaped)."""
        if self.code is None:
            if self.runc is not None and self.runc not in self.reaper.reaped:
                _kill(self.runc)
            if self.init is not None and self.init not in self.reaper.reaped:
                _kill(self.init)

    def advance(self) -> bool:
        """Move on with what has been reaped; True once the job is over and answered."""
        reaped = self.reaper.reaped
        if self.code is None and self.init is None and self.runc in reaped:
            runc_code = _status(reaped.pop(self.runc))
            self.runc = None
            if runc_code != 0:
                self.code = runc_code
            else:
                try:
                    if self.pid_file is not None:
                        with open(self.pid_file, "rb") as f:
                            self.init = int(f.read().strip())
                    else:
                        with open(os.path.join(self.state_dir, "state.json"), "rb") as f:
                            self.state = json.load(f)
                        self.init = int(self.state["init_process_pid"])  # type: ignore[index]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    self._say(f"ocibuild: cannot find the container's init pid: {e!r}\n")
                    self.code = 125
        if self.code is None and self.init is not None and self.init in reaped:
            self.code = _status(reaped.pop(self.init))
            self.stopped = True
        if self.code is None:
            return False
        if not self.sinks and not self.exit_sent:  # answer first: the client goes on
            self.exit_sent = True
            self._answer({"code": self.code, "runc_log": self._runc_log()})
        if self.stopped and self.deleted is None and self.deleter is None:
            self.stopped = False  # one try
            if self.state is not None and remove_stopped(self.state_dir, self.state):
                self.deleted = True
        if self.deleter is None and self.deleted is None:
            self.deleter = self.reaper.spawn_quiet(self.delete_argv, self.env)
            if self.deleter is None:
                self.deleted = False
        if self.deleter is not None and self.deleter in reaped:
            self.deleted = reaped.pop(self.deleter) == 0
            self.deleter = None
        if self.deleted is None or not self.exit_sent:
            return False
        self._answer({"deleted": self.deleted})
        if not self.abandoned:
            self.reaper.sel.unregister(self.chan)
        self.chan.close()
        os.close(self.log)
        return True

    def _runc_log(self) -> str:
        """What runc logged (its last ``RUNC_LOG_MAX`` bytes); the memory file is closed."""
        size = os.fstat(self.runc_log).st_size
        data = os.pread(self.runc_log, RUNC_LOG_MAX, max(0, size - RUNC_LOG_MAX))
        os.close(self.runc_log)
        return data.decode(errors="replace")

    def _answer(self, answer: dict) -> None:
        if not self.abandoned:
            with contextlib.suppress(OSError):
                self.chan.send(json.dumps(answer).encode())


class Reaper:
    """The event loop: the control socket, SIGCHLD, and every job's pipes and channel."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.sel = selectors.DefaultSelector()
        self.reaped: dict[int, int] = {}
        self.jobs: list[Job] = []
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.wake_r, _READ, (self._drain_wakeups, None))
        self.sel.register(control, _READ, (self._accept, None))
        self.closing = False

    def spawn_quiet(self, argv: list[str], env: dict[str, str]) -> int | None:
        """Start ``argv`` with stdio on /dev/null; None if it cannot be executed."""
        try:
            pid = os.posix_spawn(argv[0], argv, env, file_actions=[
                (os.POSIX_SPAWN_DUP2, self.devnull, 0), (os.POSIX_SPAWN_DUP2, self.devnull, 1),
                (os.POSIX_SPAWN_DUP2, self.devnull, 2)])
        except OSError:
            return None
        self.reaped.pop(pid, None)
        return pid

    def _drain_wakeups(self, _: None) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self, _: None) -> None:
        fds = array.array("i")
        try:
            msg, ancdata, _flags, _addr = self.control.recvmsg(
                65536, socket.CMSG_SPACE(_FDS_PER_JOB * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
        except OSError:
            msg, ancdata = b"", []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if not msg:  # the client is gone: finish the jobs, then exit
            for fd in fds:
                os.close(fd)
            self.sel.unregister(self.control)
            self.closing = True
            return
        if len(fds) != _FDS_PER_JOB:
            for fd in fds:
                os.close(fd)
            return
        self.jobs.append(Job(self, json.loads(msg), list(fds)))

    def _reap(self) -> None:
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.reaped[pid] = st

    def serve(self) -> None:
        while not (self.closing and not self.jobs):
            for key, _ in self.sel.select():
                handler, arg = key.data
                handler(arg)
            self._reap()
            self.jobs = [job for job in self.jobs if not job.advance()]


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[1]))
    personality = int(argv[2], 16)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"ocibuild: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
        return 125
    if personality:
        current = libc.personality(0xFFFFFFFF)
        if current != -1:
            libc.personality(current | personality)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client decides when builds stop
    Reaper(control).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
