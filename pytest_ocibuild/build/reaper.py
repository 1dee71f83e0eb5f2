"""The reaper: one long-lived helper process that runs ``runc run --detach`` for every build.

Executed as a script (``python -I -S reaper.py CONTROL_FD PERSONALITY [CLIENT_PID [ROOT...]]``;
stdlib only) by ``reaper_client``, once per client process. It is a child subreaper, so a
detached container's init is reparented here and ``waitpid`` gives its exit status; it pumps
the build's stdout and stderr into the log (and the stream records into ``<log>.runs``),
answers each job twice (``{"code", "runc_log", "limits"}`` once the init is reaped and the
output complete, ``{"deleted"}`` once the container is deleted, by hand when runc's state
allows it, else by ``runc delete``), and watches its client through a pidfd: when the client
dies by any signal, every job is killed and deleted and what the client left in its bundle
roots (mounts, bundles, pools) is removed, then the reaper exits.

The protocol, the cleanup rules and why each step is done this way: docs/reaper.md.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import importlib.util
import json
import math
import os
import selectors
import signal
import socket
import sys
import time
import types


def _sibling(name: str) -> types.ModuleType:
    """A stdlib-only module beside this file (run with ``-I -S``, the package is not on the
    path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"ocibuild_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cleanup = _sibling("reaper_cleanup")
cgroups = _sibling("reaper_cgroups")
rio = _sibling("reaper_io")
_status, _write_all, _kill = rio.status, rio.write_all, rio.kill
PR_SET_CHILD_SUBREAPER = 36
_READ = selectors.EVENT_READ
_FDS_PER_JOB = 4
RUNC_LOG_MAX = 32768  # bytes of runc's own log passed back (an answer is one datagram)
CLEANUP_WAIT = 10.0  # seconds the reaper of a dead client waits for its jobs to end


class Job:
    """One build: runc, then the container's init, the output pipes, then ``runc delete``."""

    def __init__(self, reaper: Reaper, spec: dict, fds: list[int]) -> None:
        self.reaper = reaper
        self.chan = socket.socket(fileno=fds[0])
        self.log, out, err = fds[1:]
        self.state_dir: str = spec["state"]
        self.delete_argv: list[str] | None = spec["delete"]  # None: nothing to delete
        self.foreground: bool = spec.get("foreground", False)  # argv's own status is the code
        self.env: dict[str, str] = spec["env"]
        self.pid_file: str | None = spec.get("pid_file")
        self.stream: bool = bool(spec.get("stream"))  # forward output chunks (reaper_io)
        bundle = spec.get("bundle")
        if isinstance(bundle, str) and reaper.client is not None:
            found = cleanup.owned_root(bundle, reaper.client)
            if found is not None:
                reaper.roots.add(found[0])
                reaper.owned.add(os.path.realpath(found[1]))
        # runc's state.json, once read; else the cgroups a runtime named (limits_reached)
        self.state: dict | None = {"cgroup_paths": spec["cgroup_paths"]} \
            if spec.get("cgroup_paths") else None
        self.limits: list[str] = []  # cgroup limits a failed container reached
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
        self.out_r = out_r
        self.sinks = {out_r: out, err_r: err}
        self.runc_log = os.memfd_create("runc-log")
        try:
            self.runc: int | None = rio.spawn(spec, reaper.devnull, out_w, err_w, self.runc_log)
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
        data = os.read(r, rio.STREAM_READ if self.stream else 65536)
        if not data:
            self.reaper.sel.unregister(r)
            os.close(r)
            os.close(self.sinks.pop(r))
            return
        _write_all(self.log, data)
        # the chunk's record (build.logs): stream 1 stdout / 2 stderr, length u32 LE
        stream = 1 if r == self.out_r else 2
        _write_all(self.sinks[r], bytes((stream,)) + len(data).to_bytes(4, "little"))
        if self.stream and not self.abandoned:
            self.stream = rio.forward(self.chan, stream, data)

    def _message(self, _: None) -> None:
        if self.abandoned:  # unregistered while this event was pending
            return
        try:
            data = self.chan.recv(64)
        except OSError:
            data = b""
        if not data:  # the client closed it: nobody to answer (the job goes on)
            self.reaper.sel.unregister(self.chan)
            self.abandoned = True
        elif data == b"kill":
            self.kill()

    def abandon(self) -> None:
        """The client is gone or exiting: nobody will answer or use the job; kill it."""
        if not self.abandoned:
            self.abandoned = True
            with contextlib.suppress(KeyError, ValueError):
                self.reaper.sel.unregister(self.chan)
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
            if runc_code != 0 or self.foreground:
                self.code = runc_code
                self.stopped = self.foreground
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
            if self.code != 0 and self.state is not None:  # read before they are removed
                self.limits = cgroups.limits_reached(self.state)
        if self.code is None:
            return False
        if not self.sinks and not self.exit_sent:  # answer first: the client goes on
            self.exit_sent = True
            log = rio.runc_log(self.runc_log, RUNC_LOG_MAX)  # closed now
            self._answer({"code": self.code, "runc_log": log, "limits": self.limits})
        if self.stopped and self.deleted is None and self.deleter is None:
            self.stopped = False  # one try
            if self.state is not None and cgroups.remove_stopped(self.state_dir, self.state):
                self.deleted = True
        if self.delete_argv is None and self.deleted is None:
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

    def _answer(self, answer: dict) -> None:
        if not self.abandoned:
            with contextlib.suppress(OSError):
                self.chan.send(json.dumps(answer).encode())


class Reaper:
    """The event loop: the control socket, SIGCHLD, the client's pidfd, every job's fds.

    ``client``: the client's pid (None: not watched); ``roots``: bundle roots to clean up in
    when it dies (see the module docstring).
    """

    def __init__(self, control: socket.socket, client: int | None = None,
                 roots: list[str] | None = None) -> None:
        self.control = control
        self.client = client
        self.roots: set[str] = set(roots or ())
        self.owned: set[str] = set()  # job bundles' directories named for the client
        self.sel = selectors.DefaultSelector()
        self.reaped: dict[int, int] = {}
        self.jobs: list[Job] = []
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.wake_r, _READ, (self._drain_wakeups, None))
        self.sel.register(control, _READ, (self._accept, None))
        self.closing = False  # no more jobs will come
        self.bye = False  # the client said it exits
        self.dead = False  # the client died: kill everything, clean up, exit
        self.deadline = math.inf
        self.pidfd: int | None = None
        if client is not None:
            try:
                self.pidfd = os.pidfd_open(client)
            except OSError:
                self.pidfd = None
            if os.getppid() != client:  # gone already (or never our parent): nothing to watch
                self._client_died(None)
            elif self.pidfd is not None:
                self.sel.register(self.pidfd, _READ, (self._client_died, None))

    def _client_died(self, _: None) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.pidfd)
        if self.dead:
            return
        self.dead = True
        self.deadline = time.monotonic() + CLEANUP_WAIT
        self._stop_accepting()
        for job in self.jobs:
            job.abandon()

    def _stop_accepting(self) -> None:
        if not self.closing:
            self.closing = True
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.control)

    def client_gone(self) -> bool:
        """Whether the client process has exited (we were reparented)."""
        return self.client is not None and os.getppid() != self.client

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
        if not msg:  # EOF: the client exits (after a bye) or died
            for fd in fds:
                os.close(fd)
            self._stop_accepting()
            if self.bye:
                for job in self.jobs:
                    job.abandon()
            else:
                self._client_died(None)
            return
        if len(fds) != _FDS_PER_JOB:
            for fd in fds:
                os.close(fd)
            self._control_message(msg)
            return
        self.jobs.append(Job(self, json.loads(msg), list(fds)))

    def _control_message(self, msg: bytes) -> None:
        try:
            message = json.loads(msg)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("bye"):
            self.bye = True
        if isinstance(message.get("watch"), str):
            self.roots.add(message["watch"])

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
        """Run until no job is left once the client is gone or exiting (or, if it died, until
        ``CLEANUP_WAIT`` has passed)."""
        while not (self.closing and not self.jobs):
            if self.dead and time.monotonic() > self.deadline:
                break
            wait = None if not self.dead else max(0.0, min(0.1, self.deadline - time.monotonic()))
            for key, _ in self.sel.select(wait):
                handler, arg = key.data
                handler(arg)
            self._reap()
            self.jobs = [job for job in self.jobs if not job.advance()]
            if self.dead:
                for job in self.jobs:  # e.g. an init pid learnt after runc exited
                    job.kill()

    def clean_up(self) -> None:
        """If the client died (or is gone), remove what it left (see the module docstring)."""
        if self.client is None or not (self.dead or self.client_gone()):
            return
        self._wait_client_gone()
        if self.client_gone():
            dirs = self.owned | cleanup.owned_dirs(self.roots, self.client)
            cleanup.clean_up(dirs, dict(os.environ))

    def _wait_client_gone(self, wait: float = 2.0) -> None:
        deadline = time.monotonic() + wait
        while not self.client_gone() and time.monotonic() < deadline:
            time.sleep(0.01)


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[1]))
    control.set_inheritable(False)  # never a runtime's or a build's (bwrap passes fds on)
    personality = int(argv[2], 16)
    client = int(argv[3]) if len(argv) > 3 else None
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
    reaper = Reaper(control, client, argv[4:])
    try:
        reaper.serve()
    finally:  # also if the loop failed: kill what is left, clean up after a dead client
        for job in reaper.jobs:
            job.kill()
        reaper.clean_up()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
